package meter

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

	"github.com/alicebob/miniredis/v2/server"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/mutex"
	"github.com/allot/allot/pkg/testenv"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("not within 15s: %s", what)
}

// Redis loses everything under two running replicas: both stop answering
// credit and authorize with stale zeros (503 rebuilding) and stop
// applying; one rebuilds, the other waits; events published meanwhile
// count once; the state ends as it was.
func TestLossIsDetectedAndRebuiltByOneReplica(t *testing.T) {
	testLossIsDetectedAndRebuilt(t, startEnv(t, lossConfig()))
}

// lossConfig checks for a loss every 100ms.
func lossConfig() Config {
	cfg := testConfig()
	cfg.Meter.LossCheck = 100 * time.Millisecond
	return cfg
}

func testLossIsDetectedAndRebuilt(t *testing.T, e *env) {
	cfg := e.cfg
	// Applied by one replica, so in stream order: two replicas may set a
	// gauge out of it, where a rebuild takes the stream's last value.
	publishRebuildMix(e)
	var logs lockedBuffer
	second, err := Start(t.Context(), cfg, Deps{NATS: e.nc, Redis: e.rdb, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = second.Stop(context.Background()) })
	before := snapshot(t, e.rdb, e.keys().Prefix())

	// Hold the rebuild lock, so the loss lasts until the test lets go. A
	// replica leads with that lock all along; the wipe takes it away, and
	// the test takes it right after. A replica trying again meanwhile (every
	// 100ms) may win on a loaded machine: it then rebuilds at once, and
	// the test waits for that and tries again.
	locker, err := mutex.New(e.rdb, mutex.Options{Prefix: cfg.Redis.KeyPrefix})
	if err != nil {
		t.Fatal(err)
	}
	var lock *mutex.Lock
	for attempt := 1; ; attempt++ {
		e.wipe()
		if lock, err = locker.TryAcquire(t.Context(), rebuildLock, mutex.LockOptions{TTL: time.Minute}); err == nil {
			break
		}
		if attempt == 10 {
			t.Fatalf("the rebuild lock, after the wipe: %v (a replica was faster %d times)", err, attempt)
		}
		eventually(t, "a replica's rebuild", func() bool {
			return e.rdb.Exists(t.Context(), e.keys().MeterEpoch()).Val() == 1 && !e.meter.lost.Load() && !second.lost.Load()
		})
	}
	earlier := logs.count("rebuilt the meter's state") // in the attempts a replica won
	eventually(t, "both replicas see the loss", func() bool {
		return e.meter.lost.Load() && second.lost.Load()
	})
	if got := testutil.ToFloat64(e.meter.metrics.rebuilding); got != 1 {
		t.Errorf("allot_meter_rebuilding = %v, want 1", got)
	}
	_, err = e.client.Credit(t.Context(), "u-1", "photo_daily_total")
	if !errors.Is(err, events.ErrUnavailable) || !strings.Contains(err.Error(), "rebuilding") {
		t.Errorf("credit while rebuilding: %v, want 503 rebuilding", err)
	}
	_, err = e.client.Authorize(t.Context(), "u-1", events.AuthorizeRequest{ID: "a-1", Metric: "photo_daily_total", Amount: 1})
	if !errors.Is(err, events.ErrUnavailable) || !strings.Contains(err.Error(), "rebuilding") {
		t.Errorf("authorize while rebuilding: %v, want 503 rebuilding", err)
	}
	// Published meanwhile (one a repeat the stream keeps): waits, then
	// counts once.
	e.publish(ev("u-1", "photo_daily_total", 1, "late"))
	e.publishRaw("usage.u-1", mustEvent(t, "u-1", "photo_daily_total", 1, "late"), "late-again")
	time.Sleep(300 * time.Millisecond)
	if n := len(snapshot(t, e.rdb, e.keys().Prefix())); n != 0 {
		t.Errorf("%d keys written while Redis had no marker", n)
	}

	if err := lock.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the state is rebuilt and the late events applied", func() bool {
		c, err := e.client.Credit(t.Context(), "u-1", "photo_daily_total")
		return err == nil && c.Used == 4
	})
	e.waitIdle()
	if e.meter.lost.Load() || second.lost.Load() || testutil.ToFloat64(e.meter.metrics.rebuilding) != 0 {
		t.Error("a replica still waits for a rebuild")
	}
	forgetDedup(t, e, "u-1", "late")
	after := snapshot(t, e.rdb, e.keys().Prefix())
	after[e.keys().Grant("u-1", "photo_daily_total")] = before[e.keys().Grant("u-1", "photo_daily_total")]
	sameState(t, before, after)
	if got := e.rdb.HGet(t.Context(), e.keys().Grant("u-1", "photo_daily_total"), "u").Val(); got != "4" {
		t.Errorf("u-1 used %s, want 4", got)
	}
	// One replica rebuilt: the first took the lock when it was let go,
	// or the second did; never both.
	rebuilt := logs.count("rebuilt the meter's state") - earlier
	if rebuilt > 1 {
		t.Errorf("the second replica rebuilt %d times", rebuilt)
	}
	if n := e.notices(); n != 1 {
		t.Errorf("NOTIFY holds %d notices, want 1", n)
	}
}

// A new deployment (no events yet) writes the marker and runs; so does a
// meter whose check is off, which writes none.
func TestEpochMarkerOnANewDeployment(t *testing.T) {
	e := startEnv(t, testConfig())
	if seq := e.rdb.HGet(t.Context(), e.keys().MeterEpoch(), "seq").Val(); seq != "0" {
		t.Errorf("marker seq %q on a new deployment, want 0", seq)
	}
	e.publish(ev("u-1", "photo_daily_total", 1, "p"))
	e.waitIdle()
	if seq := e.rdb.HGet(t.Context(), e.keys().MeterEpoch(), "seq").Val(); seq != "1" {
		t.Errorf("marker seq %q after one event, want 1", seq)
	}

	cfg := testConfig()
	cfg.Meter.LossCheck = 0
	off := startEnv(t, cfg)
	off.publish(ev("u-1", "photo_daily_total", 1, "p"))
	off.waitIdle()
	if n := off.rdb.Exists(t.Context(), off.keys().MeterEpoch()).Val(); n != 0 {
		t.Error("a marker with meter.loss_check 0")
	}
	bad := testConfig()
	bad.Meter.LossCheck = time.Millisecond
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "meter.loss_check") {
		t.Errorf("loss_check 1ms: %v", err)
	}
}

// A meter from before the epoch marker left state in Redis: the first
// start with the check keeps it (authorize's charges are in no event)
// and writes the marker, instead of rebuilding over it.
func TestUpgradeKeepsTheStateWithoutAMarker(t *testing.T) {
	cfg := testConfig()
	cfg.Meter.LossCheck = 0 // the meter of before: no marker
	e := startEnv(t, cfg)
	ctx := t.Context()
	e.publish(ev("u-1", "tiny_daily_total", 1, "p1"))
	e.waitIdle()
	if _, err := e.client.Authorize(ctx, "u-1", events.AuthorizeRequest{ID: "a1", Metric: "tiny_daily_total", Amount: 2}); err != nil {
		t.Fatal(err)
	}
	if n := e.rdb.Exists(ctx, e.keys().MeterEpoch()).Val(); n != 0 {
		t.Fatal("a marker without the check")
	}
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.meter.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}

	e.cfg = testConfig() // the check on
	e.reg = prometheus.NewRegistry()
	e.start()
	if seq := e.rdb.HGet(ctx, e.keys().MeterEpoch(), "seq").Val(); seq != "1" {
		t.Errorf("marker seq %q after the upgrade, want 1, the consumer's ack floor (written, the state kept)", seq)
	}
	c, err := e.client.Credit(ctx, "u-1", "tiny_daily_total")
	if err != nil || c.Used != 3 {
		t.Errorf("credit after the upgrade: %+v, %v; want 3 used (1 event, 2 authorized): the state kept, not rebuilt", c, err)
	}
	if v := testutil.ToFloat64(e.meter.metrics.rebuilding); v != 0 {
		t.Errorf("allot_meter_rebuilding %v after the upgrade", v)
	}
	// Checks later still find the marker at or above the ack floor.
	time.Sleep(3 * e.cfg.Meter.LossCheck)
	if v := testutil.ToFloat64(e.meter.metrics.rollbacks); v != 0 || e.meter.lost.Load() {
		t.Errorf("the adopted state taken for an older one (%v rollbacks)", v)
	}
}

// Redis restored from an older snapshot (here: every key of the meter's
// prefix put back, in one transaction, as it was two events ago): the
// marker is below the consumer's ack floor, so the meter drops it and
// rebuilds; the two events the snapshot lacks count again, once.
func TestOlderStateIsRebuilt(t *testing.T) {
	testOlderStateIsRebuilt(t, startEnv(t, lossConfig()))
}

func testOlderStateIsRebuilt(t *testing.T, e *env) {
	ctx := t.Context()
	e.publish(ev("u-1", "photo_daily_total", 1, "p1"))
	e.publish(ev("u-1", "photo_daily_total", 1, "p2"))
	e.waitIdle()
	older := copyKeys(t, e)
	e.publish(ev("u-1", "photo_daily_total", 1, "p3"))
	e.publish(ev("u-1", "photo_daily_total", 1, "p4"))
	e.publishRaw("usage.u-1", []byte("not json"), "") // refused, acked: the marker rises over it
	e.waitIdle()

	tx := e.rdb.TxPipeline()
	for _, k := range testenvKeys(t, e) {
		tx.Del(ctx, k)
	}
	for _, k := range older {
		tx.Copy(ctx, "older:"+k, k, 0, true)
	}
	if _, err := tx.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the older state is noticed and rebuilt", func() bool {
		c, err := e.client.Credit(ctx, "u-1", "photo_daily_total")
		return err == nil && c.Used == 4 && testutil.ToFloat64(e.meter.metrics.rollbacks) == 1
	})
	e.waitIdle()
	if e.meter.lost.Load() {
		t.Error("the meter still waits for a rebuild")
	}
	if got := e.rdb.HGet(ctx, e.keys().Grant("u-1", "photo_daily_total"), "u").Val(); got != "4" {
		t.Errorf("u-1 used %s, want 4", got)
	}
}

// Events refused before the apply script are acked without it: the
// marker rises over them, so the ack floor never passes it and no check
// takes the state for an older one.
func TestRefusedEventsRaiseTheMarker(t *testing.T) {
	e := startEnv(t, lossConfig())
	e.publish(ev("u-1", "photo_daily_total", 1, "p1"))
	e.publishRaw("usage.u-1", []byte("not json"), "")
	e.publishRaw("usage.u-1", []byte(`{"specversion":"9"}`), "")
	e.waitIdle()
	st, err := e.js.Stream(t.Context(), e.cfg.Streams.Usage)
	if err != nil {
		t.Fatal(err)
	}
	last := st.CachedInfo().State.LastSeq
	if seq := e.rdb.HGet(t.Context(), e.keys().MeterEpoch(), "seq").Val(); seq != fmt.Sprint(last) {
		t.Errorf("marker seq %s, want the last refused event's %d", seq, last)
	}
	time.Sleep(5 * e.cfg.Meter.LossCheck)
	if v := testutil.ToFloat64(e.meter.metrics.rollbacks); v != 0 || e.meter.lost.Load() {
		t.Errorf("refused events made the state look older (%v rollbacks)", v)
	}
}

// copyKeys copies every key of e's prefix under "older:" (the copies
// outside it, so the meter never reads them) and returns the names: a
// snapshot to restore later. DUMP would do, but miniredis dumps strings
// only.
func copyKeys(t *testing.T, e *env) []string {
	t.Helper()
	ks := testenvKeys(t, e)
	for _, k := range ks {
		if err := e.rdb.Copy(t.Context(), k, "older:"+k, 0, true).Err(); err != nil {
			t.Fatalf("copy %s: %v", k, err)
		}
		t.Cleanup(func() { e.rdb.Del(context.Background(), "older:"+k) })
	}
	return ks
}

func testenvKeys(t *testing.T, e *env) []string {
	t.Helper()
	ks, err := testenv.Keys(t.Context(), e.rdb, e.cfg.Redis.KeyPrefix+"*")
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// A rebuild that fails is counted, and the replica tries again until one
// is done: allot_meter_rebuilds_total{result} and
// allot_meter_rebuild_progress_ratio, which the alerts and the dashboard
// read. Redis refuses the rebuild's deletes (as a replica that a failover
// left read-only does) until the test lets them through.
func TestRebuildFailuresAreCounted(t *testing.T) {
	e := startEnv(t, lossConfig())
	publishRebuildMix(e)
	e.waitIdle()
	rebuilds := func(result string) float64 {
		return testutil.ToFloat64(e.meter.metrics.rebuilds.WithLabelValues(result))
	}
	if rebuilds("done") != 0 || rebuilds("failed") != 0 {
		t.Fatalf("rebuilds before any loss: done %v, failed %v", rebuilds("done"), rebuilds("failed"))
	}
	e.mr.Server().SetPreHook(func(c *server.Peer, cmd string, _ ...string) bool {
		if cmd != "UNLINK" {
			return false
		}
		c.WriteError("READONLY You can't write against a read only replica.")
		return true
	})
	e.wipe()
	eventually(t, "a failed rebuild", func() bool { return rebuilds("failed") >= 1 })
	if got := testutil.ToFloat64(e.meter.metrics.rebuilding); got != 1 {
		t.Errorf("allot_meter_rebuilding = %v after a failed rebuild, want 1", got)
	}
	if got := rebuilds("done"); got != 0 {
		t.Errorf("allot_meter_rebuilds_total{result=done} = %v while Redis refuses, want 0", got)
	}
	if got := testutil.ToFloat64(e.meter.metrics.rebuildDone); got != 0 {
		t.Errorf("allot_meter_rebuild_progress_ratio = %v after a rebuild that failed before replaying, want 0", got)
	}

	e.mr.Server().SetPreHook(nil)
	eventually(t, "a rebuild done", func() bool { return rebuilds("done") == 1 })
	eventually(t, "the state back", func() bool { return testutil.ToFloat64(e.meter.metrics.rebuilding) == 0 })
	if got := testutil.ToFloat64(e.meter.metrics.rebuildDone); got != 1 {
		t.Errorf("allot_meter_rebuild_progress_ratio = %v after a rebuild, want 1", got)
	}
	c, err := e.client.Credit(t.Context(), "u-1", "photo_daily_total")
	if err != nil || c.Used != 3 {
		t.Errorf("credit after the rebuild: %+v, %v; want 3 used", c, err)
	}
	// The series are exported, with both results from the start.
	n, err := testutil.GatherAndCount(e.reg, "allot_meter_rebuilds_total", "allot_meter_rebuild_progress_ratio")
	if err != nil || n != 3 {
		t.Errorf("gathered %d series of the rebuild metrics (%v), want 3", n, err)
	}
}

// A rebuild whose process stops half way (kill -9, a node lost) leaves
// part of the state and no marker. That is not the state of a meter
// from before the marker: the next meter to start must rebuild again,
// not keep the half (which lost every event the rebuild had not reached
// yet). The load test's fault suite found it: Redis restarted empty, the
// rebuilding meter killed -9, and half the events gone for good.
func TestARebuildCutShortIsRebuiltAgain(t *testing.T) {
	t.Run("after a loss", func(t *testing.T) { testARebuildCutShortIsRebuiltAgain(t, true) })
	// An operator's allot rebuild over a whole state, cut short: the
	// marker's seq went with the first step, so the meters rebuild it
	// rather than apply into half of it.
	t.Run("by hand over a whole state", func(t *testing.T) { testARebuildCutShortIsRebuiltAgain(t, false) })
}

func testARebuildCutShortIsRebuiltAgain(t *testing.T, lost bool) {
	cfg := lossConfig()
	cfg.Meter.Batch = 2 // a rebuild in many chunks, so it can be cut between two
	e := startEnv(t, cfg)
	ctx := t.Context()
	for i := range 10 {
		e.publish(ev("u-1", "photo_daily_total", 1, fmt.Sprint("p", i)))
	}
	e.waitIdle()
	e.stopMeter()
	if lost {
		e.wipe()
	}

	// The rebuild, cut short after its first chunk.
	rctx, cancel := context.WithCancel(ctx)
	_, err := Rebuild(rctx, e.cfg, Deps{NATS: e.nc, Redis: e.rdb}, RebuildOptions{Force: true, ProgressEvery: time.Nanosecond,
		Progress: func(RebuildProgress) { cancel() }})
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("the rebuild cut short returned %v", err)
	}
	if n := e.rdb.HExists(ctx, e.keys().MeterEpoch(), "seq").Val(); n {
		t.Fatal("a marker after a rebuild cut short")
	}
	if used, _ := e.rdb.HGet(ctx, e.keys().Grant("u-1", "photo_daily_total"), "u").Float64(); used <= 0 || used >= 10 {
		t.Fatalf("the rebuild cut short left used %v, want part of 10", used)
	}

	e.reg = prometheus.NewRegistry()
	e.start()
	eventually(t, "the state rebuilt whole", func() bool {
		c, err := e.client.Credit(ctx, "u-1", "photo_daily_total")
		return err == nil && c.Used == 10
	})
}
