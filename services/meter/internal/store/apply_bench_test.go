package store

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/pkg/usage"
)

// BenchmarkApplyChunk applies chunks of 500 events, half to a counter
// and half to a daily grant notifying at 80 and 100 % (the default
// catalog's shape), with the chunk's events spread over uids uids: at
// 500, about one event per key per chunk (a busy stream of many users);
// at 5, fifty. On ALLOT_BENCH_REDIS_URL (a real Redis) it reports the
// script's own time per event from INFO commandstats (redis_us/ev: what
// binds a single Redis), beside the wall time per event (ns/op: b.N
// counts events); on miniredis only the latter.
func BenchmarkApplyChunk(b *testing.B) {
	for _, uids := range []int{500, 5} {
		for _, stream := range []bool{false, true} {
			dedup := "ids"
			if stream {
				dedup = "stream"
			}
			b.Run("uids="+strconv.Itoa(uids)+"/dedup="+dedup, func(b *testing.B) { benchmarkApplyChunk(b, uids, stream) })
		}
	}
}

func benchmarkApplyChunk(b *testing.B, uids int, stream bool) {
	ctx := context.Background()
	rdb, prefix := testenv.BenchRedis(b)
	s, err := New(ctx, rdb, Options{Keys: keys.New(prefix), DedupTTL: 24 * time.Hour, StreamDedup: stream, Guard: true})
	if err != nil {
		b.Fatal(err)
	}
	if err := rdb.HSet(ctx, s.keys.MeterEpoch(), "seq", 0).Err(); err != nil {
		b.Fatal(err)
	}
	grant := usage.MetricConfig{Style: usage.StyleGrant, Period: usage.PeriodDay, Notify: []float64{80, 100}}.Normalized()
	counter := usage.MetricConfig{Style: usage.StyleCounter, Scope: usage.ScopeUser, Labels: []string{"resource"}}.Normalized()
	const chunk = 500
	// Fresh ids and sequences every chunk, a grant big enough that the
	// run crosses no threshold: the steady state of a busy stream.
	var seq uint64
	chunkOf := func() []Op {
		ops := make([]Op, chunk)
		for i := range ops {
			seq++
			uid := "u-" + strconv.Itoa(int(seq)%uids)
			ops[i] = Op{ID: "e-" + strconv.FormatUint(seq, 10), UID: uid, Value: 1, Seq: seq}
			if i%2 == 0 {
				ops[i].Metric, ops[i].Config, ops[i].Limit = "photo_daily_total", grant, 1e12
			} else {
				ops[i].Metric, ops[i].Config, ops[i].Field = "api_calls_total", counter, "resource=photo"
			}
		}
		return ops
	}
	usec0 := testenv.ScriptUsec(b, rdb)
	b.ResetTimer()
	events := 0
	for events < b.N {
		b.StopTimer()
		ops := chunkOf()
		b.StartTimer()
		res, err := s.Apply(ctx, ops)
		if err != nil {
			b.Fatal(err)
		}
		for i, r := range res {
			if r.Err != nil || !r.Applied {
				b.Fatalf("op %d: applied %v, %v", i, r.Applied, r.Err)
			}
		}
		events += chunk
	}
	b.StopTimer()
	if usec0 >= 0 {
		b.ReportMetric(float64(testenv.ScriptUsec(b, rdb)-usec0)/float64(events), "redis_us/ev")
	}
}
