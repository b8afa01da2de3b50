package ratelimit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/mutex"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// lockedBuffer is a log sink two replicas write to at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("not within 20s: %s", what)
}

// lossBackend is where a loss test keeps the windows: live, the rate
// limiters' under test, which the test wipes; ref, those of a rate
// limiter that never loses anything and counts the same stream on a
// consumer of its own.
type lossBackend struct {
	live, ref             redis.UniversalClient
	livePrefix, refPrefix string
	// wipe deletes everything the live rate limiters keep.
	wipe func(t *testing.T)
}

// miniLossBackend keeps both on miniredis servers of their own, on the
// real clock: hits land by the stream's clock, the embedded NATS
// server's, which testenv's clock shift does not move.
func miniLossBackend(t *testing.T) lossBackend {
	live, ref := miniredis.RunT(t), miniredis.RunT(t)
	return lossBackend{live: miniClient(t, live), ref: miniClient(t, ref), livePrefix: "allot:", refPrefix: "allot:",
		wipe: func(*testing.T) { live.FlushAll() }}
}

func miniClient(t *testing.T, mr *miniredis.Miniredis) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// lossConfig: services api (fixed) and web (sliding, fail_open) count
// api_calls_total events as hits, in windows of an hour; plain counts
// none. The loss is checked for every 100ms.
func lossConfig(prefix string) Config {
	cfg := DefaultConfig()
	cfg.Instance = "test"
	cfg.Redis.KeyPrefix = prefix
	cfg.Streams.Memory = true
	cfg.Streams.MaxBytes, cfg.Streams.DeadMaxBytes, cfg.Streams.NotifyMaxBytes = 64<<20, 16<<20, 16<<20
	cfg.RateLimit.Hits.RetryDelay = 100 * time.Millisecond
	cfg.RateLimit.LossCheck = 100 * time.Millisecond
	cfg.RateLimit.Timeout = time.Second
	cfg.RateLimit.Services = map[string]Service{
		"api":   {Limit: ptr(1000), Interval: time.Hour, Metric: "api_calls_total"},
		"web":   {Limit: ptr(1000), Interval: time.Hour, Metric: "api_calls_total", Mode: ModeSliding, FailOpen: true},
		"plain": {Limit: ptr(5), Interval: time.Hour},
	}
	return cfg
}

// startLimiter starts a rate limiter on Redis's and the stream's real
// clocks (no Deps.Now): hits land in the windows of their stream times.
func startLimiter(t *testing.T, cfg Config, nc *nats.Conn, rdb redis.UniversalClient, log *lockedBuffer) *Limiter {
	t.Helper()
	var w interface{ Write([]byte) (int, error) } = &lockedBuffer{}
	if log != nil {
		w = log
	}
	l, err := Start(t.Context(), cfg, Deps{NATS: nc, Redis: rdb, Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(w, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Stop(context.Background()) })
	return l
}

// startReference starts only the hit consumer of a rate limiter that
// never loses anything, on a consumer of its own.
func startReference(t *testing.T, cfg Config, nc *nats.Conn, rdb redis.UniversalClient, prefix string) {
	t.Helper()
	cfg.Redis.KeyPrefix = prefix
	cfg.RateLimit.Consumer = "ratelimit-ref"
	cfg.RateLimit.LossCheck = 0
	l, err := New(t.Context(), cfg, Deps{NATS: nc, Redis: rdb, Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.startHits(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Stop(context.Background()) })
}

// hitWindows reads every window of the services that count hits under
// prefix, by key without the prefix.
func hitWindows(t *testing.T, rdb redis.UniversalClient, prefix string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, svc := range []string{"api", "web"} {
		iter := rdb.Scan(t.Context(), 0, prefix+"{*}:rl:"+svc+":*", 1000).Iterator()
		for iter.Next(t.Context()) {
			if h := rdb.HGetAll(t.Context(), iter.Val()).Val(); len(h) > 0 {
				out[strings.TrimPrefix(iter.Val(), prefix)] = h
			}
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// sameWindows waits until the live windows equal the reference's, and
// fails with the difference if they never do.
func sameWindows(t *testing.T, b lossBackend, what string) map[string]map[string]string {
	t.Helper()
	var live, ref map[string]map[string]string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		live, ref = hitWindows(t, b.live, b.livePrefix), hitWindows(t, b.ref, b.refPrefix)
		if len(ref) > 0 && cmp.Equal(ref, live) {
			return live
		}
	}
	t.Fatalf("%s: the windows differ from a rate limiter's that lost nothing (-ref +live):\n%s", what, cmp.Diff(ref, live))
	return nil
}

// publishHits publishes n api_calls_total events of values 1 to 3 over
// five uids, and returns their ids.
func publishHits(t *testing.T, pub *events.Publisher, tag string, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		ev := events.NewUsage(fmt.Sprintf("u-%d", i%5), "api_calls_total", float64(1+i%3))
		ev.ID = fmt.Sprintf("%s-%d", tag, i)
		if _, err := pub.Publish(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, ev.ID)
	}
	return ids
}

// consumed waits until each named consumer of the usage stream has acked
// everything the stream holds.
func consumed(t *testing.T, nc *nats.Conn, cfg Config, names ...string) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := js.Stream(ctx, cfg.Streams.Usage)
		if err != nil {
			t.Fatal(err)
		}
		last, done := st.CachedInfo().State.LastSeq, true
		for _, name := range names {
			c, err := js.Consumer(ctx, cfg.Streams.Usage, name)
			if err != nil || c.CachedInfo().AckFloor.Stream < last {
				done = false
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumers %v did not ack up to seq %d within 20s", names, last)
		}
	}
}

// publishRepeat publishes event id again under another Nats-Msg-Id, so
// the stream keeps it and only the rate limiter's record can catch it.
func publishRepeat(t *testing.T, nc *nats.Conn, uid, id string) {
	t.Helper()
	ev := events.NewUsage(uid, "api_calls_total", 7)
	ev.ID = id
	msg, err := events.Prepare(&ev, events.PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	msg.Header.Set(events.MsgIDHeader, id+"-again")
	js, _ := jetstream.New(nc)
	if _, err := js.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
}

func TestHitWindowsLostAreRebuiltByOneReplica(t *testing.T) {
	testHitWindowsRebuilt(t, miniLossBackend(t))
}

// testHitWindowsRebuilt: Redis loses the windows under two running
// replicas; both see it, hits wait, checks of the services that count
// hits answer by their fail mode (others as ever); one replica replays
// the stream; the windows end equal to a rate limiter's that lost
// nothing, with the events published meanwhile counted once.
func testHitWindowsRebuilt(t *testing.T, b lossBackend) {
	nc, err := nats.Connect(testenv.EmbeddedNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cfg := lossConfig(b.livePrefix)
	var logs lockedBuffer
	first := startLimiter(t, cfg, nc, b.live, &logs)
	second := startLimiter(t, cfg, nc, b.live, &logs)
	startReference(t, cfg, nc, b.ref, b.refPrefix)
	pub, err := events.NewPublisher(nc, events.PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ids := publishHits(t, pub, "before", 60)
	publishRepeat(t, nc, "u-0", ids[0])
	before := sameWindows(t, b, "before the loss")
	if len(before) < 5 {
		t.Fatalf("only %d windows of hits: %v", len(before), before)
	}

	// Hold the rebuild lock, so the loss lasts until the test lets go. A
	// replica trying for it meanwhile (every 100ms) may win on a loaded
	// machine: it then rebuilds at once, and the test waits for that and
	// tries again.
	locker, err := mutex.New(b.live, mutex.Options{Prefix: b.livePrefix})
	if err != nil {
		t.Fatal(err)
	}
	epoch := keys.New(b.livePrefix).RateLimitEpoch()
	var lock *mutex.Lock
	for attempt := 1; ; attempt++ {
		b.wipe(t)
		if lock, err = locker.TryAcquire(t.Context(), rebuildLock, mutex.LockOptions{TTL: time.Minute}); err == nil {
			break
		}
		if attempt == 10 {
			t.Fatalf("the rebuild lock, after the wipe: %v (a replica was faster %d times)", err, attempt)
		}
		eventually(t, "a replica's rebuild", func() bool {
			return b.live.Exists(t.Context(), epoch).Val() == 1 && !first.lost.Load() && !second.lost.Load()
		})
	}
	earlier := logs.count("rebuilt the windows of hits")
	eventually(t, "both replicas see the loss", func() bool { return first.lost.Load() && second.lost.Load() })
	if got := testutil.ToFloat64(first.metrics.rebuilding); got != 1 {
		t.Errorf("allot_ratelimit_rebuilding = %v, want 1", got)
	}
	// api fails closed, web open; plain counts no hits and decides.
	_, err = first.Check(t.Context(), "u-1", events.CheckRequest{Service: "api"})
	if !errors.Is(err, events.ErrUnavailable) || !strings.Contains(err.Error(), "rebuilding") {
		t.Errorf("api while rebuilding: %v, want 503 rebuilding", err)
	}
	if r, err := second.Check(t.Context(), "u-1", events.CheckRequest{Service: "web"}); err != nil || !r.Allowed {
		t.Errorf("web (fail_open) while rebuilding: %+v, %v; want allowed", r, err)
	}
	if got := testutil.ToFloat64(second.metrics.decisions.WithLabelValues("web", "failed_open")); got != 1 {
		t.Errorf("web failed_open %v, want 1", got)
	}
	if r, err := first.Check(t.Context(), "u-1", events.CheckRequest{Service: "plain"}); err != nil || !r.Allowed || r.Remaining != 4 {
		t.Errorf("plain while rebuilding: %+v, %v; want decided as ever", r, err)
	}
	// Published meanwhile, one of them a repeat the stream keeps: they
	// wait, then count once.
	publishHits(t, pub, "during", 20)
	publishRepeat(t, nc, "u-1", ids[1])
	time.Sleep(300 * time.Millisecond)
	if got := hitWindows(t, b.live, b.livePrefix); len(got) != 0 {
		t.Errorf("windows written while Redis had no marker: %v", got)
	}

	if err := lock.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the windows are rebuilt", func() bool {
		return b.live.HExists(t.Context(), epoch, "seq").Val() && !first.lost.Load() && !second.lost.Load()
	})
	sameWindows(t, b, "after the rebuild")
	if testutil.ToFloat64(first.metrics.rebuilding) != 0 || testutil.ToFloat64(second.metrics.rebuilding) != 0 {
		t.Error("allot_ratelimit_rebuilding still 1")
	}
	if rebuilt := logs.count("rebuilt the windows of hits") - earlier; rebuilt != 1 {
		t.Errorf("%d rebuilds after the lock was let go, want 1", rebuilt)
	}
	if r, err := first.Check(t.Context(), "u-1", events.CheckRequest{Service: "api"}); err != nil || !r.Allowed {
		t.Errorf("api after the rebuild: %+v, %v", r, err)
	}
}

func TestRebuildCutShortIsRedone(t *testing.T) {
	testRebuildCutShortIsRedone(t, miniLossBackend(t))
}

// testRebuildCutShortIsRedone: a rebuild killed half way leaves windows
// without a marker but with its mark; a rate limiter starting then does
// not take them for whole (as it would windows from before the marker)
// and rebuilds, ending equal to the reference.
func testRebuildCutShortIsRedone(t *testing.T, b lossBackend) {
	nc, err := nats.Connect(testenv.EmbeddedNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cfg := lossConfig(b.livePrefix)
	cfg.RateLimit.Hits.Batch = 10 // chunks of 10, so the rebuild can be cut after one
	first := startLimiter(t, cfg, nc, b.live, nil)
	startReference(t, cfg, nc, b.ref, b.refPrefix)
	pub, err := events.NewPublisher(nc, events.PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	publishHits(t, pub, "e", 100)
	sameWindows(t, b, "before the loss")
	if err := first.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	b.wipe(t)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	_, err = Rebuild(ctx, cfg, Deps{NATS: nc, Redis: b.live}, RebuildOptions{ProgressEvery: time.Nanosecond,
		Progress: func(p service.ReplayProgress) {
			if p.Events >= 10 {
				cancel() // killed after a chunk
			}
		}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("the cut rebuild: %v, want context.Canceled", err)
	}
	ep := keys.New(b.livePrefix).RateLimitEpoch()
	if b.live.HExists(t.Context(), ep, "seq").Val() || !b.live.HExists(t.Context(), ep, "rebuilding").Val() {
		t.Fatalf("after a cut rebuild the marker is %v, want its rebuilding mark alone", b.live.HGetAll(t.Context(), ep).Val())
	}
	if got, ref := hitWindows(t, b.live, b.livePrefix), hitWindows(t, b.ref, b.refPrefix); len(got) == 0 || cmp.Equal(got, ref) {
		t.Fatalf("the cut rebuild wrote %d windows, equal to the reference: %v; the test cuts nothing", len(got), cmp.Equal(got, ref))
	}
	var logs lockedBuffer
	startLimiter(t, cfg, nc, b.live, &logs)
	sameWindows(t, b, "after the rebuild was run again")
	if logs.count("rebuild that did not finish") != 1 {
		t.Errorf("the start did not say it found a cut rebuild:\n%s", logs.b.String())
	}
}

// A rate limiter from before the marker left windows and records of
// hits: the first start with the check keeps them and writes the marker
// at 0, rather than rebuilding (which would count again the hits whose
// records have expired while their windows have not).
func TestUpgradeKeepsTheWindowsWithoutAMarker(t *testing.T) {
	b := miniLossBackend(t)
	nc, err := nats.Connect(testenv.EmbeddedNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cfg := lossConfig(b.livePrefix)
	cfg.RateLimit.LossCheck = 0 // the rate limiter of before: no marker
	old := startLimiter(t, cfg, nc, b.live, nil)
	startReference(t, cfg, nc, b.ref, b.refPrefix)
	pub, err := events.NewPublisher(nc, events.PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	publishHits(t, pub, "e", 10)
	// Both counted every hit: equal windows alone may be equally behind,
	// and the upgraded one would count the rest after "before".
	consumed(t, nc, cfg, cfg.RateLimit.Consumer, "ratelimit-ref")
	before := sameWindows(t, b, "before the upgrade")
	if err := old.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	ep := keys.New(b.livePrefix).RateLimitEpoch()
	if b.live.Exists(t.Context(), ep).Val() != 0 {
		t.Fatal("a marker without the check")
	}
	cfg.RateLimit.LossCheck = 100 * time.Millisecond
	var logs lockedBuffer
	l := startLimiter(t, cfg, nc, b.live, &logs)
	if l.lost.Load() {
		t.Error("the upgraded rate limiter took the old windows for lost")
	}
	if seq := b.live.HGet(t.Context(), ep, "seq").Val(); seq != "0" {
		t.Errorf("marker seq %q, want 0", seq)
	}
	if logs.count("keeping them") != 1 {
		t.Errorf("the start did not say it kept the windows:\n%s", logs.b.String())
	}
	if diff := cmp.Diff(before, hitWindows(t, b.live, b.livePrefix)); diff != "" {
		t.Errorf("windows after the upgrade (-before +after):\n%s", diff)
	}
}

// A rate limiter whose services count no hits keeps no marker; one whose
// stream is empty writes it at once.
func TestEpochMarkerOnlyWithHits(t *testing.T) {
	b := miniLossBackend(t)
	nc, err := nats.Connect(testenv.EmbeddedNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ep := keys.New(b.livePrefix).RateLimitEpoch()
	cfg := lossConfig(b.livePrefix)
	cfg.RateLimit.Services = map[string]Service{"plain": {Limit: ptr(5)}}
	startLimiter(t, cfg, nc, b.live, nil)
	if b.live.Exists(t.Context(), ep).Val() != 0 {
		t.Error("a marker without services counting hits")
	}
	startLimiter(t, lossConfig(b.livePrefix), nc, b.live, nil)
	if seq := b.live.HGet(t.Context(), ep, "seq").Val(); seq != "0" {
		t.Errorf("marker seq %q on a new deployment, want 0", seq)
	}
}

func TestDefaultRebuildFrom(t *testing.T) {
	now := time.Date(2026, 3, 4, 10, 25, 30, 0, time.UTC) // no server clock involved
	s := DefaultSettings()
	s.Services = map[string]Service{
		"api":   {Interval: time.Hour, Metric: "api_calls_total"},
		"plain": {Interval: 24 * time.Hour},
	}
	if got, want := DefaultRebuildFrom(s, now), time.Date(2026, 3, 4, 9, 59, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("fixed hour: %v, want %v (the window's start, a minute earlier)", got, want)
	}
	s.Services["web"] = Service{Interval: 10 * time.Minute, Mode: ModeSliding, Metric: "api_calls_total"}
	if got, want := DefaultRebuildFrom(s, now), time.Date(2026, 3, 4, 9, 59, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("with a sliding 10m: %v, want %v (the hour still bounds it)", got, want)
	}
	s.Services["web"] = Service{Interval: time.Hour, Mode: ModeSliding, Metric: "api_calls_total"}
	if got, want := DefaultRebuildFrom(s, now), time.Date(2026, 3, 4, 8, 59, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("with a sliding hour: %v, want %v (the previous window too)", got, want)
	}
	if got := DefaultRebuildFrom(Settings{}, now); !got.IsZero() {
		t.Errorf("no hits: %v, want zero", got)
	}
}
