package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/pkg/usage"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
)

// randomOps are n usage events over 12 uids, in stream order, with times
// spread over three hours from start, or an hour for every thousand events
// (so hour-long grant periods roll, inside chunks too), values that cross notice thresholds often, ids repeated (nearby,
// so inside one chunk too, and far), and values that would take a counter
// or a grant past 1e15 (refused, changing nothing).
func randomOps(rng *rand.Rand, n int, start time.Time) []Op {
	hourly := grantCfg(usage.PeriodHour, usage.AlignRolling, 50, 80, 100)
	daily := grantCfg(usage.PeriodDay, usage.AlignCalendar, 25, 90)
	counter := counterCfg(usage.StyleCounter, usage.ScopeUser)
	global := counterCfg(usage.StyleCounter, usage.ScopeGlobal)
	gauge := counterCfg(usage.StyleGauge, usage.ScopeInstance)
	ops := make([]Op, 0, n)
	at := start
	span := max(3*time.Hour, time.Duration(n)*3600*time.Millisecond) // an hour for every thousand
	step := 2 * int64(span) / int64(n)
	for i := range n {
		at = at.Add(time.Duration(rng.Int64N(step)))
		uid := fmt.Sprintf("u-%d", rng.IntN(12))
		op := Op{ID: fmt.Sprintf("e%d", i), UID: uid, At: at, Seq: uint64(i + 1), Value: float64(1 + rng.IntN(5))}
		switch k := rng.IntN(10); {
		case k < 4:
			op.Metric, op.Config, op.Limit = "hourly", hourly, 40
		case k < 6:
			op.Metric, op.Config, op.Limit = "daily", daily, 2000
		case k < 8:
			op.Metric, op.Config, op.Field = "c", counter, []string{"", "kind=a", "kind=b"}[rng.IntN(3)]
		case k < 9:
			op.Metric, op.Config = "jobs", global
		default:
			op.Metric, op.Config, op.Source, op.Value = "depth", gauge, fmt.Sprintf("w%d", rng.IntN(3)), float64(rng.IntN(100))-50
		}
		switch r := rng.IntN(100); {
		case r < 5 && i > 0:
			op.ID = fmt.Sprintf("e%d", i-1-rng.IntN(min(i, 20))) // nearby: often the same chunk
		case r < 8 && i > 0:
			op.ID = fmt.Sprintf("e%d", rng.IntN(i))
		case r < 9 && op.Config.Style != usage.StyleGauge:
			op.Value = 1e15 // refused: past the largest number kept
		case r < 14 && op.Config.Style != usage.StyleGauge:
			op.Value = 0.25 // a fraction: a counter's chunk takes the one-by-one way
		}
		ops = append(ops, op)
	}
	return ops
}

// outcome is what Apply said of one op, comparably.
func outcome(r Result) string {
	var b strings.Builder
	switch {
	case r.Err != nil:
		b.WriteString("err")
		if strings.Contains(r.Err.Error(), "WRONGTYPE") {
			b.WriteString(" wrongtype")
		}
	case r.Applied:
		b.WriteString("applied")
	default:
		b.WriteString("duplicate")
	}
	for _, n := range r.Crossed {
		b.WriteString(" crossed=" + n.Raw)
	}
	return b.String()
}

// stateWithout is snapshot under prefix with the prefix taken off the
// keys, so two prefixes compare.
func stateWithout(t *testing.T, rdb redis.UniversalClient, prefix string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for k, v := range snapshot(t, rdb, prefix) {
		out[strings.TrimPrefix(k, prefix)] = v
	}
	return out
}

// testAggregatedEqualsPerEvent applies the same random events one call
// per event and in chunks of random sizes, to two key spaces of one
// backend, and compares every event's outcome (applied, duplicate,
// refused, the notices it crossed), every key and value, and the notices
// left pending.
func testAggregatedEqualsPerEvent(t *testing.T, open backend, n int) {
	t.Helper()
	testAggregatedEqualsPerEventIn(t, open, n, false)
}

// testAggregatedEqualsPerEventIn is testAggregatedEqualsPerEvent with the
// store deduplicating by stream position (stream) or by id.
func testAggregatedEqualsPerEventIn(t *testing.T, open backend, n int, stream bool) {
	rdb, prefix := open(t)
	cluster := strings.HasSuffix(prefix, clusterSuffix)
	ctx := t.Context()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	ops := randomOps(rng, n, testenv.Now(t)) // ahead, never behind: grant keys expire an hour after their period on the server's clock

	open2 := func(sub string) *Store {
		// No clock of the test's: each grant event is judged by its own
		// time, as the stream's.
		s, err := New(ctx, rdb, Options{Keys: keys.New(prefix + sub), DedupTTL: time.Hour, Cluster: cluster, StreamDedup: stream})
		if err != nil {
			t.Fatal(err)
		}
		// An override for one uid, on both sides.
		if err := rdb.HSet(ctx, s.Keys().Grants("u-3"), "hourly", "25").Err(); err != nil {
			t.Fatal(err)
		}
		return s
	}
	one, agg := open2("one:"), open2("agg:")
	// One at a time, every counter event is read and decided alone: the
	// reference for the chunks' HINCRBY of whole numbers.
	one.oneByOne = true

	var got1, got2 []string
	for _, op := range ops {
		res, err := one.Apply(ctx, []Op{op})
		if err != nil {
			t.Fatal(err)
		}
		got1 = append(got1, outcome(res[0]))
	}
	for i := 0; i < len(ops); {
		size := 1 + rng.IntN(500)
		chunk := ops[i:min(len(ops), i+size)]
		res, err := agg.Apply(ctx, chunk)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			got2 = append(got2, outcome(r))
		}
		i += len(chunk)
	}
	crossed, applied := 0, 0
	for i := range got1 {
		if got1[i] != got2[i] {
			t.Fatalf("event %d (%+v): one at a time %q, in chunks %q", i, ops[i], got1[i], got2[i])
		}
		crossed += strings.Count(got1[i], "crossed=")
		if strings.HasPrefix(got1[i], "applied") {
			applied++
		}
	}
	if crossed < n/200 || applied < n/2 {
		t.Fatalf("the events crossed %d notices and %d applied: not the mix this test needs", crossed, applied)
	}
	if d := cmp.Diff(stateWithout(t, rdb, prefix+"one:"), stateWithout(t, rdb, prefix+"agg:")); d != "" {
		t.Errorf("state (-one at a time +in chunks):\n%s", d)
	}
	t.Logf("%d events: %d applied, %d notices crossed", n, applied, crossed)
}

func TestAggregatedEqualsPerEvent(t *testing.T) {
	for _, tc := range []struct {
		name string
		open backend
	}{{"SingleRedis", miniBackend}, {"ClusterPath", clusterPath(miniBackend)}} {
		t.Run(tc.name, func(t *testing.T) { testAggregatedEqualsPerEvent(t, tc.open, 3000) })
		t.Run(tc.name+"/StreamDedup", func(t *testing.T) { testAggregatedEqualsPerEventIn(t, tc.open, 3000, true) })
	}
}

// TestPoisonEventsFailOnlyThemselves interleaves events whose state key
// holds the wrong type at random positions of chunks: each fails alone,
// with nothing of it kept; every good event around it is applied once,
// and a redelivery of the whole chunk applies nothing twice.
func TestPoisonEventsFailOnlyThemselves(t *testing.T) {
	for _, tc := range []struct {
		name string
		open backend
	}{{"SingleRedis", miniBackend}, {"ClusterPath", clusterPath(miniBackend)}} {
		t.Run(tc.name, func(t *testing.T) { testPoisonEvents(t, tc.open) })
	}
}

func testPoisonEvents(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open)
	ctx := t.Context()
	k := s.Keys()
	// u-bad's counter, grant and gauge keys are strings.
	counter := counterCfg(usage.StyleCounter, usage.ScopeUser)
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar, 50)
	gauge := counterCfg(usage.StyleGauge, usage.ScopeUser)
	for _, key := range []string{k.Values(keys.UserTag("u-bad"), "c"), k.Grant("u-bad", "g"), k.Values(keys.UserTag("u-bad"), "q")} {
		rdb.Set(ctx, key, "not a hash", 0)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	var ops []Op
	good := map[string]float64{}
	for i := range 300 {
		uid := fmt.Sprintf("u-%d", rng.IntN(4))
		if rng.IntN(10) == 0 {
			uid = "u-bad"
		}
		op := Op{ID: fmt.Sprintf("p%d", i), UID: uid, Value: 1}
		switch rng.IntN(3) {
		case 0:
			op.Metric, op.Config, op.Field = "c", counter, ""
		case 1:
			op.Metric, op.Config, op.Limit = "g", grant, 1000
		default:
			op.Metric, op.Config, op.Field = "q", gauge, ""
		}
		if uid != "u-bad" && op.Config.Style != usage.StyleGauge {
			good[uid+" "+op.Metric]++
		}
		ops = append(ops, op)
	}
	for pass := range 2 {
		res, err := s.Apply(ctx, ops)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			bad := ops[i].UID == "u-bad"
			switch {
			case bad && (r.Err == nil || !strings.Contains(r.Err.Error(), "WRONGTYPE")):
				t.Errorf("pass %d: poison event %d: %+v, want a WRONGTYPE error", pass, i, r)
			case !bad && r.Err != nil:
				t.Errorf("pass %d: good event %d failed: %v", pass, i, r.Err)
			case !bad && r.Applied != (pass == 0):
				t.Errorf("pass %d: good event %d applied=%v", pass, i, r.Applied)
			}
		}
	}
	for key, want := range good {
		uid, metric, _ := strings.Cut(key, " ")
		var got string
		if metric == "g" {
			got = rdb.HGet(ctx, k.Grant(uid, "g"), "u").Val()
		} else {
			got = rdb.HGet(ctx, k.Values(keys.UserTag(uid), "c"), "").Val()
		}
		if got != fmt.Sprint(want) {
			t.Errorf("%s holds %q, want %v", key, got, want)
		}
	}
	for i, op := range ops {
		if op.UID == "u-bad" {
			if set, member := s.DedupRecord(op); rdb.SIsMember(ctx, set, member).Val() {
				t.Errorf("poison event %d left a dedup record: it could never be applied once repaired", i)
			}
		}
	}
}

func TestStreamDedup(t *testing.T) {
	for _, tc := range []struct {
		name string
		open backend
	}{{"SingleRedis", miniBackend}, {"ClusterPath", clusterPath(miniBackend)}} {
		t.Run(tc.name, func(t *testing.T) { testStreamDedup(t, tc.open) })
		t.Run(tc.name+"/Partitioned", func(t *testing.T) { testPartitionedStreamDedup(t, tc.open) })
	}
}

// testStreamDedup: with dedup by stream position, a redelivered message
// counts once however its chunks overlap and in whatever order replicas
// apply them; records at or below the ack floor go; an event of an
// authorized request's id is a duplicate; an event without a sequence is
// recorded by its id.
func testStreamDedup(t *testing.T, open backend) {
	rdb, prefix := open(t)
	ctx := t.Context()
	s, err := New(ctx, rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, Cluster: strings.HasSuffix(prefix, clusterSuffix), StreamDedup: true})
	if err != nil {
		t.Fatal(err)
	}
	counter := counterCfg(usage.StyleCounter, usage.ScopeUser)
	var ops []Op
	want := map[string]float64{}
	for i := range 1500 {
		uid := fmt.Sprintf("u-%d", i%7)
		v := float64(1 + i%4)
		// Ids repeat: by stream position they are distinct events.
		ops = append(ops, Op{ID: fmt.Sprintf("r%d", i%1000), UID: uid, Metric: "c", Config: counter, Value: v, Seq: uint64(i + 1)})
		want[uid] += v
	}
	apply := applier(t, s)
	// Two replicas: later chunks first, overlapping redeliveries.
	apply(ops[500:1000])
	res := apply(ops[0:700]) // 500..699 again
	for i, r := range res {
		if r.Applied != (i < 500) {
			t.Fatalf("seq %d: applied %v", ops[i].Seq, r.Applied)
		}
	}
	apply(ops[1000:1500])
	for i, r := range apply(ops[900:1200]) {
		if r.Applied {
			t.Fatalf("redelivered seq %d applied again", ops[900+i].Seq)
		}
	}
	for uid, w := range want {
		if got := rdb.HGet(ctx, s.Keys().Values(keys.UserTag(uid), "c"), "").Val(); got != fmt.Sprint(w) {
			t.Errorf("%s holds %s, want %v", uid, got, w)
		}
	}
	// The ack floor drops what the consumer will never hand out again, from
	// the records a call touches (on a Cluster, its tag's; an idle tag's
	// go with their TTL).
	s.SetAckFloor(0, 1200)
	late := Op{ID: "late", UID: "u-0", Metric: "c", Config: counter, Value: 1, Seq: 1501}
	apply([]Op{late})
	if n := len(seqKeys(t, rdb, s)); s.cluster != (n > 1) {
		t.Errorf("%d keys of stream-position records: one per tag on a Cluster, one on a single Redis", n)
	}
	for _, key := range []string{s.seqsKey(Tag(late), 0)} {
		runs, err := rdb.ZRangeWithScores(ctx, key, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range runs {
			if r.Score <= 1200 && r.Member != "0-1200" {
				t.Errorf("%s: run %v ends at or below the floor and stayed", key, r.Member)
			}
		}
		if runs[0].Member != "0-1200" {
			t.Errorf("%s: lowest run %v, want the floor's 0-1200", key, runs[0].Member)
		}
	}
	// A delivery held past its ack wait while a later one was applied and
	// acked: below the floor, its record gone, it is still a duplicate,
	// for this replica and for one whose floor is older (it reads the
	// floor's run).
	stale, err := New(ctx, rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, Cluster: s.cluster, StreamDedup: true})
	if err != nil {
		t.Fatal(err)
	}
	held := ops[98] // u-0, seq 99
	for name, st := range map[string]*Store{"the replica that read the floor": s, "a replica with an older floor": stale} {
		res, err := st.Apply(ctx, []Op{held})
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Applied {
			t.Errorf("%s applied seq %d, acked and below the floor, again", name, held.Seq)
		}
	}
	// A lower floor passed later keeps the higher one.
	stale.SetAckFloor(0, 1100)
	if _, err := stale.Apply(ctx, []Op{{ID: "later", UID: "u-0", Metric: "c", Config: counter, Value: 1, Seq: 1503}}); err != nil {
		t.Fatal(err)
	}
	if lowest := rdb.ZRange(ctx, s.seqsKey(Tag(late), 0), 0, 0).Val(); len(lowest) != 1 || lowest[0] != "0-1200" {
		t.Errorf("after a lower floor the lowest run is %v, want 0-1200", lowest)
	}
	want["u-0"] += 2 // late and later
	// An authorized request's id makes an event of that id a duplicate.
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar)
	if d, err := s.Authorize(ctx, AuthorizeOp{ID: "a1", UID: "u-9", Metric: "g", Config: grant, Limit: 10, Amount: 2}); err != nil || !d.Allowed {
		t.Fatalf("authorize: %+v, %v", d, err)
	}
	if res := apply([]Op{{ID: "a1", UID: "u-9", Metric: "g", Config: grant, Limit: 10, Value: 2, Seq: 1502}}); res[0].Applied {
		t.Error("the event of an authorized id counted again")
	}
	// No sequence: recorded by id.
	noSeq := Op{ID: "n1", UID: "u-0", Metric: "c", Config: counter, Value: 1}
	if res := apply([]Op{noSeq}); !res[0].Applied {
		t.Fatal("first event without a sequence not applied")
	}
	if res := apply([]Op{noSeq}); res[0].Applied {
		t.Error("an event without a sequence applied twice")
	}
	want["u-0"]++ // n1
	for uid, w := range want {
		if got := rdb.HGet(ctx, s.Keys().Values(keys.UserTag(uid), "c"), "").Val(); got != fmt.Sprint(w) {
			t.Errorf("at the end %s holds %s, want %v", uid, got, w)
		}
	}
}

// applier returns a function that applies a chunk with s and fails the
// test when the round trip fails.
func applier(t *testing.T, s *Store) func([]Op) []Result {
	return func(chunk []Op) []Result {
		t.Helper()
		res, err := s.Apply(t.Context(), chunk)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
}

// seqKeys lists the store's stream-position record keys.
func seqKeys(t *testing.T, rdb redis.UniversalClient, s *Store) []string {
	t.Helper()
	all, err := testenv.Keys(t.Context(), rdb, s.Keys().Prefix()+"*:seqs")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) == 0 {
		t.Fatal("no stream-position records")
	}
	return all
}

// The epoch marker follows the chunk's highest sequence, and with
// ApplyCovering the refused events' too, in the same call; RaiseEpoch
// never lowers it and never writes a missing one; DropEpoch drops only
// the seq it was given.
func TestEpochMarkerFollowsTheChunk(t *testing.T) {
	rdb, prefix := miniBackend(t)
	ctx := t.Context()
	s, err := New(ctx, rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, Guard: true})
	if err != nil {
		t.Fatal(err)
	}
	if !s.TracksSeq() {
		t.Fatal("a guarded store on one Redis does not track the seq")
	}
	if err := s.RaiseEpoch(ctx, 3); err != nil {
		t.Fatalf("raise without a marker: %v", err)
	}
	if _, ok, _ := s.Epoch(ctx); ok {
		t.Fatal("RaiseEpoch wrote a missing marker")
	}
	if _, err := s.InitEpoch(ctx, 0); err != nil {
		t.Fatal(err)
	}
	seqIs := func(want uint64) {
		t.Helper()
		if got, ok, err := s.Epoch(ctx); err != nil || !ok || got != want {
			t.Fatalf("marker seq %d (%v, %v), want %d", got, ok, err, want)
		}
	}
	counter := counterCfg(usage.StyleCounter, usage.ScopeUser)
	op := func(id string, seq uint64) Op {
		return Op{ID: id, UID: "u-1", Metric: "c", Config: counter, Value: 1, Seq: seq}
	}
	if _, err := s.Apply(ctx, []Op{op("a", 4), op("b", 2)}); err != nil {
		t.Fatal(err)
	}
	seqIs(4)
	if _, err := s.ApplyCovering(ctx, []Op{op("c", 5)}, 9); err != nil {
		t.Fatal(err)
	}
	seqIs(9)
	if err := s.RaiseEpoch(ctx, 7); err != nil {
		t.Fatal(err)
	}
	seqIs(9)
	if err := s.RaiseEpoch(ctx, 12); err != nil {
		t.Fatal(err)
	}
	seqIs(12)
	if dropped, err := s.DropEpoch(ctx, 11); err != nil || dropped {
		t.Fatalf("dropped a marker that moved: %v, %v", dropped, err)
	}
	if dropped, err := s.DropEpoch(ctx, 12); err != nil || !dropped {
		t.Fatalf("drop: %v, %v", dropped, err)
	}
	if _, err := s.Apply(ctx, []Op{op("d", 13)}); !errors.Is(err, ErrLost) {
		t.Errorf("apply after the drop: %v, want ErrLost", err)
	}
}
