package meter

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/pkg/usage"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

// keyState is one key as a test compares it: its value and its TTL.
type keyState struct {
	Value string
	TTL   time.Duration
}

// snapshot reads every key of rdb whose name has prefix (scratch keys
// of a dry run included, so a test sees one left behind).
func snapshot(t *testing.T, rdb redis.UniversalClient, prefix string) map[string]keyState {
	t.Helper()
	ctx := t.Context()
	out := map[string]keyState{}
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		if bookkeeping(k, prefix) {
			continue
		}
		var v string
		switch rdb.Type(ctx, k).Val() {
		case "hash":
			h := rdb.HGetAll(ctx, k).Val()
			fields := make([]string, 0, len(h))
			for f := range h {
				fields = append(fields, f)
			}
			sort.Strings(fields)
			for _, f := range fields {
				v += fmt.Sprintf("%s=%s;", f, h[f])
			}
		case "set":
			members := rdb.SMembers(ctx, k).Val()
			sort.Strings(members)
			v = strings.Join(members, ",")
		default:
			v = rdb.Get(ctx, k).Val()
		}
		out[k] = keyState{v, rdb.PTTL(ctx, k).Val()}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// uidSnapshot is snapshot of uid's keys, and of its members of the dedup
// SETs every uid shares on a single Redis (under their SETs' names).
func uidSnapshot(t *testing.T, e *env, uid string) map[string]keyState {
	t.Helper()
	out := snapshot(t, e.rdb, e.keys().Prefix()+"{"+keys.UserTag(uid)+"}")
	for key, st := range snapshot(t, e.rdb, e.keys().Prefix()+"{"+keys.DedupTag+"}") {
		var mine []string
		for _, m := range strings.Split(st.Value, ",") {
			if strings.HasPrefix(m, keys.UserTag(uid)+" ") {
				mine = append(mine, m)
			}
		}
		if len(mine) > 0 {
			out[key] = keyState{strings.Join(mine, ","), st.TTL}
		}
	}
	return out
}

// forgetDedup removes id's record under tag from the dedup SETs.
func forgetDedup(t *testing.T, e *env, tag, id string) {
	t.Helper()
	for _, pattern := range []string{"{" + keys.DedupTag + "}:ids:*", "{" + tag + "}:ids:*"} {
		for _, set := range e.rdb.Keys(t.Context(), e.keys().Prefix()+pattern).Val() {
			e.rdb.SRem(t.Context(), set, tag+" "+id, id)
		}
	}
}

// wipe deletes the meter's whole key space, as a Redis restarted empty.
func (e *env) wipe() {
	e.t.Helper()
	testenv.DeleteKeys(e.rdb, e.cfg.Redis.KeyPrefix)
}

func (e *env) keys() keys.Keys { return keys.New(e.cfg.Redis.KeyPrefix) }

// sameState compares snapshots; TTLs set from Redis's clock may differ by
// the time between the two writes.
// ttlClose compares TTLs read at two moments of a test.
var ttlClose = cmp.Comparer(func(a, b time.Duration) bool { return (a - b).Abs() < 5*time.Second })

func sameState(t *testing.T, want, got map[string]keyState) {
	t.Helper()
	if d := cmp.Diff(want, got, ttlClose); d != "" {
		t.Errorf("state after rebuild differs (-before +rebuilt):\n%s", d)
	}
}

// rebuildEnv is a meter that has applied a mix of events: three uids,
// duplicates the stream keeps (another Nats-Msg-Id), a bad event, a
// threshold crossing (notices sent), rolling and calendar grants,
// labelled global counters and an instance gauge.
func rebuildEnv(t *testing.T) *env {
	t.Helper()
	return publishRebuildMix(startEnv(t, testConfig()))
}

func publishRebuildMix(e *env) *env {
	t := e.t
	t.Helper()
	for i := range 3 {
		e.publish(ev("u-1", "photo_daily_total", 1, fmt.Sprint("p", i)))
		e.publish(ev("u-2", "photo_daily_total", 2.5, fmt.Sprint("q", i)))
	}
	e.publishRaw("usage.u-1", mustEvent(t, "u-1", "photo_daily_total", 1, "p1"), "again-p1") // the meter drops it
	for i := range 3 {
		e.publish(ev("u-3", "tiny_daily_total", 1, fmt.Sprint("t", i))) // limit 4: 50% at 2
	}
	e.publishRaw("usage.u-3", mustEvent(t, "u-3", "tiny_daily_total", 1, "t0"), "again-t0")
	jobs := ev("u-1", "jobs_total", 3, "j1")
	jobs.Data.Labels = map[string]string{"kind": "resize"}
	e.publish(jobs)
	e.publish(ev("u-2", "jobs_total", 1, "j2"))
	e.publish(ev("u-2", "api_calls_total", 7, "a1"))
	for i, v := range []float64{5, 2, 9} {
		g := ev("u-1", "queue_depth", v, fmt.Sprint("g", i))
		g.Source = "worker-1"
		e.publish(g)
	}
	e.publishRaw("usage.u-2", []byte("not json"), "bad-1")
	e.waitIdle()
	return e
}

func (e *env) notices() uint64 {
	e.t.Helper()
	st, err := e.js.Stream(e.t.Context(), e.cfg.Streams.Notify)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := st.Info(e.t.Context())
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Msgs
}

func (e *env) stopMeter() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.meter.Stop(ctx); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) rebuild(opts RebuildOptions) (RebuildReport, error) {
	e.t.Helper()
	return Rebuild(e.t.Context(), e.cfg, Deps{NATS: e.nc, Redis: e.rdb}, opts)
}

func TestRebuildRestoresEveryKey(t *testing.T) { testRebuildRestoresEveryKey(t, rebuildEnv(t)) }

func testRebuildRestoresEveryKey(t *testing.T, e *env) {
	if n := e.notices(); n != 1 {
		t.Fatalf("NOTIFY holds %d notices before, want 1", n)
	}
	before := snapshot(t, e.rdb, e.keys().Prefix())
	e.stopMeter()
	e.wipe()

	var progress []RebuildProgress
	rep, err := e.rebuild(RebuildOptions{Force: true, Progress: func(p RebuildProgress) { progress = append(progress, p) }})
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, before, snapshot(t, e.rdb, e.keys().Prefix()))
	if seq := e.rdb.HGet(t.Context(), e.keys().MeterEpoch(), "seq").Val(); seq != "18" {
		t.Errorf("epoch marker at %q after the rebuild, want 18", seq)
	}
	want := RebuildReport{Stream: "USAGE", FirstSeq: 1, LastSeq: 18, Events: 18, Applied: 15, Duplicates: 2, Refused: 1, NoticesSent: 1}
	got := rep
	got.Elapsed, got.Cleared = 0, 0 // Cleared: nothing, FlushAll went first
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("report (-want +got):\n%s", d)
	}
	if n := e.notices(); n != 1 {
		t.Errorf("NOTIFY holds %d notices after the rebuild, want 1: a sent notice went out again", n)
	}
	if len(progress) == 0 || progress[len(progress)-1].Seq != 18 || progress[len(progress)-1].Percent() != 100 {
		t.Errorf("progress = %+v", progress)
	}

	// Rebuilding again over the rebuilt state replaces it: still equal.
	if _, err := e.rebuild(RebuildOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	sameState(t, before, snapshot(t, e.rdb, e.keys().Prefix()))
}

func TestRebuildPublishesOnlyNoticesNeverSent(t *testing.T) {
	testRebuildPublishesOnlyNoticesNeverSent(t, rebuildEnv(t))
}

func testRebuildPublishesOnlyNoticesNeverSent(t *testing.T, e *env) {
	e.stopMeter()
	// The notice never reached the stream (as if Redis was lost between
	// the crossing and the publish).
	st, _ := e.js.Stream(t.Context(), e.cfg.Streams.Notify)
	if err := st.Purge(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.wipe()
	// The stream's duplicate window still knows the id, so watch the
	// subject itself.
	sub, err := e.nc.SubscribeSync("notify.usage.u-3")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := e.rebuild(RebuildOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := sub.NextMsg(time.Second); err != nil || msg.Header.Get(events.MsgIDHeader) == "" {
		t.Errorf("no notice published: %v", err)
	}
	if rep.NoticesPublished != 1 || rep.NoticesSent != 0 || rep.NoticesPending != 0 {
		t.Errorf("notices: %d published, %d sent before, %d pending; want 1, 0, 0", rep.NoticesPublished, rep.NoticesSent, rep.NoticesPending)
	}
	if q := e.rdb.HGet(t.Context(), e.keys().Grant("u-3", "tiny_daily_total"), "q").Val(); q != "" {
		t.Errorf("published notice still pending: %q", q)
	}
}

func TestRebuildOneUID(t *testing.T) { testRebuildOneUID(t, rebuildEnv(t)) }

func testRebuildOneUID(t *testing.T, e *env) {
	before := uidSnapshot(t, e, "u-1")
	e.stopMeter()
	e.wipe()
	rep, err := e.rebuild(RebuildOptions{UID: "u-1", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, before, uidSnapshot(t, e, "u-1"))
	if rest := snapshot(t, e.rdb, e.keys().Prefix()); !cmp.Equal(rest, uidSnapshot(t, e, "u-1"), ttlClose) {
		t.Errorf("rebuilt beyond u-1: %v", rest)
	}
	// u-1's jobs_total (global) and queue_depth (instance) events are
	// skipped: they add to state shared with other uids.
	if rep.Events != 8 || rep.Applied != 3 || rep.Duplicates != 1 || rep.Skipped != 4 {
		t.Errorf("report = %+v", rep)
	}
	if _, err := e.rebuild(RebuildOptions{UID: "nobody", Force: true}); err != nil {
		t.Errorf("uid without events: %v", err)
	}
}

func TestRebuildOneUIDOverLiveState(t *testing.T) {
	testRebuildOneUIDOverLiveState(t, rebuildEnv(t))
}

// testRebuildOneUIDOverLiveState: rebuilding one uid while every other
// uid's state stays takes only that uid's records out of the dedup SETs
// the uids share, so its events apply again, and the others' state and
// records are as they were.
func testRebuildOneUIDOverLiveState(t *testing.T, e *env) {
	before := snapshot(t, e.rdb, e.keys().Prefix())
	e.stopMeter()
	e.rdb.HSet(t.Context(), e.keys().Grant("u-1", "photo_daily_total"), "u", "99") // damage u-1 only
	rep, err := e.rebuild(RebuildOptions{UID: "u-1", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, before, snapshot(t, e.rdb, e.keys().Prefix()))
	if rep.Applied != 3 || rep.Cleared == 0 {
		t.Errorf("report = %+v", rep)
	}
}

// A rebuild of one uid cut short (here: its context ends at its first
// chunk) leaves the live state as it was, its damage included, and no
// scratch keys; run again, it puts the uid right.
func TestRebuildOneUIDCutShortChangesNothing(t *testing.T) {
	e := rebuildEnv(t)
	want := snapshot(t, e.rdb, e.keys().Prefix())
	e.stopMeter()
	e.rdb.HSet(t.Context(), e.keys().Grant("u-1", "photo_daily_total"), "u", "99") // damage u-1 only
	damaged := snapshot(t, e.rdb, e.keys().Prefix())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cfg := e.cfg
	cfg.Meter.Batch = 2 // several chunks: the end comes in the middle of the replay
	_, err := Rebuild(ctx, cfg, Deps{NATS: e.nc, Redis: e.rdb}, RebuildOptions{UID: "u-1", Force: true,
		ProgressEvery: time.Nanosecond, Progress: func(RebuildProgress) { cancel() }})
	if err == nil {
		t.Fatal("a rebuild whose context ended at its first chunk succeeded")
	}
	sameState(t, damaged, snapshot(t, e.rdb, e.keys().Prefix()))
	if left, _ := testenv.Keys(t.Context(), e.rdb, e.cfg.Redis.KeyPrefix+"rebuild-*"); len(left) > 0 {
		t.Errorf("scratch keys left: %v", left)
	}
	if _, err := e.rebuild(RebuildOptions{UID: "u-1", Force: true}); err != nil {
		t.Fatal(err)
	}
	sameState(t, want, snapshot(t, e.rdb, e.keys().Prefix()))
}

func TestRebuildDryRunAudits(t *testing.T) { testRebuildDryRunAudits(t, rebuildEnv(t)) }

func testRebuildDryRunAudits(t *testing.T, e *env) {
	// A dry run needs no stopped meter and changes nothing.
	before := snapshot(t, e.rdb, e.keys().Prefix())
	rep, err := e.rebuild(RebuildOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Diffs) != 0 {
		t.Errorf("diffs on an exact state: %+v", rep.Diffs)
	}
	sameState(t, before, snapshot(t, e.rdb, e.keys().Prefix()))

	k, ctx := e.keys(), t.Context()
	e.rdb.HSet(ctx, k.Grant("u-1", "photo_daily_total"), "u", "2")
	e.rdb.HDel(ctx, k.Values("global", "jobs_total"), "kind=resize")
	e.rdb.HSet(ctx, k.Values("u-9", "api_calls_total"), "", "4")
	rep, err = e.rebuild(RebuildOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []RebuildDiff{
		{Tag: "global", Kind: "counter", Metric: "jobs_total", Field: "kind=resize", Held: "", Rebuilt: "3"},
		{Tag: "u-1", Kind: "grant", Metric: "photo_daily_total", Field: "used", Held: "2", Rebuilt: "3"},
		{Tag: "u-9", Kind: "counter", Metric: "api_calls_total", Field: "", Held: "4", Rebuilt: ""},
	}
	if d := cmp.Diff(want, rep.Diffs); d != "" {
		t.Errorf("diffs (-want +got):\n%s", d)
	}
	// -uid audits one uid.
	rep, err = e.rebuild(RebuildOptions{DryRun: true, UID: "u-2"})
	if err != nil || len(rep.Diffs) != 0 {
		t.Errorf("u-2: %+v, %v", rep.Diffs, err)
	}
	// No scratch key stays.
	if left := snapshot(t, e.rdb, k.Prefix()+"rebuild-"); len(left) > 0 {
		t.Errorf("scratch keys left: %v", left)
	}
}

func TestRebuildRefusals(t *testing.T) {
	e := rebuildEnv(t)
	// The meter is running: replacing its state under it could lose or
	// double events.
	if _, err := e.rebuild(RebuildOptions{}); !errors.Is(err, ErrMetersRunning) {
		t.Errorf("running meter: %v", err)
	}
	for _, tc := range []struct {
		name string
		opts RebuildOptions
		want string
	}{
		{"future from", RebuildOptions{From: time.Now().Add(time.Hour)}, "in the future"},
		{"bad uid", RebuildOptions{UID: "u 1"}, "uid"},
		{"reserved uid", RebuildOptions{UID: "dead"}, "reserved"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.rebuild(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Rebuild(t.Context(), e.cfg, Deps{NATS: e.nc}, RebuildOptions{}); err == nil {
		t.Error("no Redis: no error")
	}
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer down.Close()
	if _, err := Rebuild(t.Context(), e.cfg, Deps{NATS: e.nc, Redis: down}, RebuildOptions{DryRun: true}); err == nil || !strings.Contains(err.Error(), "redis") {
		t.Errorf("unreachable Redis: %v", err)
	}
}

func TestRebuildFromAStartTime(t *testing.T) {
	e := rebuildEnv(t)
	e.stopMeter()
	e.wipe()
	rep, err := e.rebuild(RebuildOptions{From: time.Now().Add(-time.Nanosecond), Force: true})
	if left := snapshot(t, e.rdb, e.keys().Prefix()); err != nil || rep.Events != 0 || len(left) != 0 {
		t.Errorf("from now: %+v, %v, keys %v", rep, err, left)
	}
}

func TestDefaultRebuildFrom(t *testing.T) {
	now := time.Date(2030, 5, 15, 13, 30, 0, 0, time.UTC)
	calendar := usage.Catalog{Metrics: map[string]usage.MetricConfig{
		"a": {Style: usage.StyleGrant, Period: usage.PeriodDay, Align: usage.AlignCalendar},
		"b": {Style: usage.StyleGrant, Period: usage.PeriodMonth, Align: usage.AlignCalendar},
	}}
	if got, want := DefaultRebuildFrom(calendar, now), time.Date(2030, 5, 1, 0, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("calendar: %v, want %v", got, want)
	}
	if got := DefaultRebuildFrom(usage.Default(), now); !got.IsZero() {
		t.Errorf("rolling grants and counters: %v, want the whole stream", got)
	}
}

func TestRebuildSkipsEventsTheMeterGaveUpOn(t *testing.T) {
	e := rebuildEnv(t)
	e.stopMeter()
	// As WatchMaxDeliveries stores an event handed out max_deliver times:
	// seq 1 is u-1's first photo_daily_total event.
	msg := nats.NewMsg("usage.dead.u-1")
	msg.Data = []byte("{}")
	msg.Header.Set(events.MsgIDHeader, "dead.USAGE.meter.1")
	if _, err := e.js.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	e.wipe()
	rep, err := e.rebuild(RebuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.GivenUp != 1 || rep.Applied != 14 {
		t.Errorf("report = %+v", rep)
	}
	if used := e.rdb.HGet(t.Context(), e.keys().Grant("u-1", "photo_daily_total"), "u").Val(); used != "2" {
		t.Errorf("u-1 used %q, want 2: the event given up on was counted", used)
	}
}

// A notice NOTIFY no longer holds and that was crossed before what it
// keeps (streams.notify_max_age) was sent: a meter publishes within
// moments of the crossing. It is not sent again.
func TestRebuildPresumesOldNoticesSent(t *testing.T) {
	e := rebuildEnv(t)
	e.stopMeter()
	st, _ := e.js.Stream(t.Context(), e.cfg.Streams.Notify)
	if err := st.Purge(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.wipe()
	sub, err := e.nc.SubscribeSync("notify.usage.>")
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(e.cfg.Streams.NotifyMaxAge + time.Hour)
	rep, err := e.rebuild(RebuildOptions{Now: func() time.Time { return later }})
	if err != nil {
		t.Fatal(err)
	}
	if rep.NoticesSent != 1 || rep.NoticesPublished != 0 {
		t.Errorf("notices: %d sent before, %d published; want 1, 0", rep.NoticesSent, rep.NoticesPublished)
	}
	if msg, err := sub.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("notice published again: %s", msg.Data)
	}
}

func TestRebuildInStreamDedupMode(t *testing.T) {
	cfg := testConfig()
	cfg.Meter.DedupIDs = false
	testRebuildInStreamDedupMode(t, publishRebuildMix(startEnv(t, cfg)))
}

// testRebuildInStreamDedupMode: with dedup by stream position
// (meter.dedup_ids false), a rebuild of everything and a rebuild of one
// uid over the live state both end where the live meter was, stream
// records included (the repeats the stream kept under other ids count
// again in this mode, live and rebuilt alike).
func testRebuildInStreamDedupMode(t *testing.T, e *env) {
	e.waitIdle()
	before := snapshot(t, e.rdb, e.keys().Prefix())
	if _, ok := before[e.keys().DedupSeqs(keys.DedupTag)]; !ok {
		t.Fatalf("no stream-position records: %v", before)
	}
	rebuildRestores(t, e, before, func(rep RebuildReport) {
		if rep.Applied != 17 || rep.Duplicates != 0 {
			t.Errorf("report = %+v", rep)
		}
	})
}

// rebuildRestores stops e's meter, wipes its Redis and rebuilds it all
// (check reads the report), then one uid over a key changed since: each
// time the state must be before, what the live meter left.
func rebuildRestores(t *testing.T, e *env, before map[string]keyState, check func(RebuildReport)) {
	t.Helper()
	e.stopMeter()
	e.wipe()
	rep, err := e.rebuild(RebuildOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	check(rep)
	sameState(t, before, snapshot(t, e.rdb, e.keys().Prefix()))
	e.rdb.HSet(t.Context(), e.keys().Grant("u-1", "photo_daily_total"), "u", "99")
	if _, err := e.rebuild(RebuildOptions{UID: "u-1", Force: true}); err != nil {
		t.Fatal(err)
	}
	sameState(t, before, snapshot(t, e.rdb, e.keys().Prefix()))
}
