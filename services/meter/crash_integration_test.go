//go:build integration

package meter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// realServers connects to the real NATS and Redis, skipping when they do
// not answer unless ALLOT_REQUIRE_INTEGRATION=1.
func realServers(t *testing.T) (*nats.Conn, *redis.Client, string, string) {
	t.Helper()
	natsURL := envOr("ALLOT_TEST_NATS_URL", "nats://127.0.0.1:4222")
	redisURL := envOr("ALLOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
	skip := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("ALLOT_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	nc, err := nats.Connect(natsURL, nats.Timeout(2*time.Second))
	if err != nil {
		skip("real NATS at %s: %v", natsURL, err)
	}
	t.Cleanup(nc.Close)
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	if err := rdb.Ping(t.Context()).Err(); err != nil {
		skip("real Redis at %s: %v", redisURL, err)
	}
	return nc, rdb, natsURL, redisURL
}

// TestIntegrationCrashSafety publishes a known stream of events, about 10%
// of them repeated past the stream's duplicate window (without a
// Nats-Msg-Id, so only the meter's dedup can catch them), SIGKILLs the
// meter process several times mid-stream, and then compares every
// counter and grant in Redis with the expected totals. Nothing may be
// lost or double-counted. TwoReplicasAndARedisRestart runs two meter
// processes on the shared consumer, kills them in turn, and midway kills
// a Redis of the test's own and starts it again empty: the meters see the
// loss, one rebuilds from the stream, and the totals are still exact.
// The meters are ordered (one pulls at a time; a killed one's pin passes
// on after meter.pin_ttl, 4s here) but in the last run, where both pull at
// once.
func TestIntegrationCrashSafety(t *testing.T) {
	t.Run("OneReplica", func(t *testing.T) { testCrashSafety(t, 1, false, true, true, 0) })
	t.Run("TwoReplicasAndARedisRestart", func(t *testing.T) { testCrashSafety(t, 2, true, true, true, 0) })
	// With dedup by stream position (meter.dedup_ids: false) a repeat
	// the stream keeps is counted, by design: only redeliveries, which the
	// kills make, are sent.
	t.Run("StreamDedupTwoUnorderedReplicasAndARedisRestart", func(t *testing.T) { testCrashSafety(t, 2, true, false, false, 0) })
	// Four partitions, each pinned to one of the two meters, shared out
	// between them as they are killed and come back; stream positions are
	// recorded per partition, as runs of consecutive deliveries.
	t.Run("PartitionedStreamDedupTwoReplicasAndARedisRestart", func(t *testing.T) { testCrashSafety(t, 2, true, false, true, 4) })
}

// ownRedis starts a redis-server of the test's own on a free port, with
// nothing on disk, and returns its URL and a function that kills it
// (SIGKILL) and starts it again, empty, on the same port.
func ownRedis(t *testing.T) (string, func()) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("ALLOT_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("redis-server: %v", err)
		}
		t.Skipf("redis-server: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	var cmd *exec.Cmd
	start := func() {
		cmd = exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for range 100 {
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
				_ = c.Close()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("redis-server did not start on port %d", port)
	}
	start()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	restart := func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		start()
	}
	return fmt.Sprintf("redis://127.0.0.1:%d/0", port), restart
}

func testCrashSafety(t *testing.T, replicas int, redisRestart, dedupIDs, ordered bool, partitions int) {
	nc, rdb, natsURL, redisURL := realServers(t)
	var restartRedis func()
	if redisRestart {
		redisURL, restartRedis = ownRedis(t)
		opts, err := redis.ParseURL(redisURL)
		if err != nil {
			t.Fatal(err)
		}
		rdb = redis.NewClient(opts)
		t.Cleanup(func() { _ = rdb.Close() })
	}
	ctx := t.Context()
	var r [4]byte
	_, _ = rand.Read(r[:])
	tag := hex.EncodeToString(r[:])
	prefix := "crash" + tag + ":"
	js, _ := jetstream.New(nc)
	t.Cleanup(func() {
		ctx := context.Background()
		for _, s := range []string{"CRASH_USAGE_" + tag, "CRASH_DEAD_" + tag, "CRASH_NOTIFY_" + tag} {
			_ = js.DeleteStream(ctx, s)
		}
		iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})
	dir := t.TempDir()
	config := filepath.Join(dir, "allot.yaml")
	yaml := fmt.Sprintf(`http: {addr: "127.0.0.1:0"}
redis: {key_prefix: %q}
subjects: {usage: crash%s.usage, dead: crash%s.dead, notify: crash%s.notify}
streams: {usage: CRASH_USAGE_%s, dead: CRASH_DEAD_%s, notify: CRASH_NOTIFY_%s, max_age: 1h, dead_max_age: 1h, notify_max_age: 1h, partitions: %d}
meter: {consumer: crash, batch: 200, ack_wait: 2s, fetch_wait: 2s, pin_ttl: 4s, dedup_ttl: 1h, retry_delay: 200ms, dedup_ids: %v, ordered: %v}
grants: {photo_daily_total: 1000000000}
`, prefix, tag, tag, tag, tag, tag, tag, partitions, dedupIDs, ordered)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "meter")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/meter").CombinedOutput(); err != nil {
		t.Fatalf("building the meter: %v\n%s", err, out)
	}
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "-config", config)
		cmd.Env = append(os.Environ(), "NATS_URL="+natsURL, "REDIS_URL="+redisURL, "ALLOT_LOG_LEVEL=warn")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}

	subj := events.DefaultSubjects()
	subj.Usage, subj.Dead, subj.Notify = "crash"+tag+".usage", "crash"+tag+".dead", "crash"+tag+".notify"
	pub, err := events.NewAsyncPublisher(nc, events.AsyncOptions{PublisherOptions: events.PublisherOptions{Subjects: subj, Source: "crash-test"}, Window: 512})
	if err != nil {
		t.Fatal(err)
	}

	const n, uids = 20000, 40
	wantCalls := map[string]float64{}
	wantPhotos := map[string]float64{}
	meters := make([]*exec.Cmd, replicas)
	for i := range meters {
		meters[i] = start()
	}
	// The meter creates the streams; wait for them before publishing.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := js.Stream(ctx, "CRASH_USAGE_"+tag); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the meter did not create its streams")
		}
		time.Sleep(50 * time.Millisecond)
	}
	kills, restarted := 0, false
	nextKill := time.Now().Add(300 * time.Millisecond)
	for i := range n {
		uid := "u-" + strconv.Itoa(i%uids)
		metric := "api_calls_total"
		if i%3 == 0 {
			metric = "photo_daily_total"
		}
		ev := events.NewUsage(uid, metric, float64(1+i%5))
		ev.ID = fmt.Sprintf("crash-%d", i)
		if err := pub.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
		if metric == "api_calls_total" {
			wantCalls[uid] += ev.Data.Value
		} else {
			wantPhotos[uid] += ev.Data.Value
		}
		if i%10 == 9 && dedupIDs {
			// A repeat of an earlier event, without Nats-Msg-Id: the stream
			// keeps it, the meter must drop it.
			j := i - 5
			dup := events.NewUsage("u-"+strconv.Itoa(j%uids), "api_calls_total", float64(1+j%5))
			if j%3 == 0 {
				dup.Data.Metric = "photo_daily_total"
			}
			dup.ID = fmt.Sprintf("crash-%d", j)
			msg, err := events.Prepare(&dup, events.PublisherOptions{Subjects: subj, Source: "crash-test"})
			if err != nil {
				t.Fatal(err)
			}
			msg.Header.Del(events.MsgIDHeader)
			if _, err := js.PublishMsg(ctx, msg); err != nil {
				t.Fatal(err)
			}
		}
		if time.Now().After(nextKill) && kills < 5 {
			m := kills % replicas
			_ = meters[m].Process.Signal(syscall.SIGKILL)
			_ = meters[m].Wait()
			kills++
			meters[m] = start()
			nextKill = time.Now().Add(400 * time.Millisecond)
		}
		if restartRedis != nil && i == n/2 {
			restartRedis() // empty: every meter must see the loss, one rebuilds
			restarted = true
		}
	}
	if failed, err := pub.Close(ctx); err != nil || len(failed) > 0 {
		t.Fatalf("publishing: %d failed, %v", len(failed), err)
	}
	for kills < 3 { // the publisher may outrun the clock on a fast machine
		time.Sleep(300 * time.Millisecond)
		m := kills % replicas
		_ = meters[m].Process.Signal(syscall.SIGKILL)
		_ = meters[m].Wait()
		kills++
		meters[m] = start()
	}
	t.Cleanup(func() {
		for _, m := range meters {
			_ = m.Process.Signal(syscall.SIGTERM)
			_ = m.Wait()
		}
	})

	// Wait for the last meter to catch up.
	deadline = time.Now().Add(90 * time.Second)
	for {
		st, _ := js.Stream(ctx, "CRASH_USAGE_"+tag)
		sinfo, _ := st.Info(ctx)
		names := []string{"crash"}
		if partitions > 0 {
			names = names[:0]
			for p := range partitions {
				names = append(names, fmt.Sprintf("crash-%d", p))
			}
		}
		caughtUp := true
		for _, name := range names {
			c, err := js.Consumer(ctx, "CRASH_USAGE_"+tag, name)
			if err != nil {
				caughtUp = false
				break
			}
			info, err := c.Info(ctx)
			// A partition's floor is its own last event: nothing pending
			// and nothing unacked says it is done.
			if err != nil || info.NumAckPending != 0 || info.AckFloor.Stream < sinfo.State.LastSeq && (partitions == 0 || info.NumPending != 0) {
				caughtUp = false
				break
			}
		}
		if caughtUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the meter did not catch up within 90s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	repeats := 0
	if dedupIDs {
		repeats = n / 10
	}
	t.Logf("published %d events plus %d repeats; %d meters (ordered: %v, partitions: %d), killed %d times; Redis restarted empty: %v", n, repeats, replicas, ordered, partitions, kills, restarted)

	k := keys.New(prefix)
	mismatches := 0
	for i := range uids {
		uid := "u-" + strconv.Itoa(i)
		calls, _ := rdb.HGet(ctx, k.Values(uid, "api_calls_total"), "").Float64()
		photos, _ := rdb.HGet(ctx, k.Grant(uid, "photo_daily_total"), "u").Float64()
		if math.Abs(calls-wantCalls[uid]) > 1e-9 || math.Abs(photos-wantPhotos[uid]) > 1e-9 {
			mismatches++
			if mismatches <= 10 {
				t.Errorf("%s: api_calls_total %v (want %v), photo_daily_total %v (want %v)", uid, calls, wantCalls[uid], photos, wantPhotos[uid])
			}
		}
	}
	if dead, _ := js.Stream(ctx, "CRASH_DEAD_"+tag); dead != nil {
		if info, _ := dead.Info(ctx); info != nil && info.State.Msgs != 0 {
			t.Errorf("%d events were dead-lettered; none should be", info.State.Msgs)
		}
	}
}
