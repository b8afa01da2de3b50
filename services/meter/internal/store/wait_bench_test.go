//go:build integration

package store

import (
	"fmt"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/pkg/usage"
)

// BenchmarkClusterApplyWait measures what meter.wait_replicas 1 costs on
// the Redis Cluster of make cluster-test (one replica per master): chunks
// of 500 grant events applied back to back, without WAIT and with it,
// taking turns for 3 rounds of 1 s each so that a shared machine's noise
// falls on both; it reports events/s of each and their ratio. Over 1,000
// uids a chunk is ~500 script calls on the 3 masters; over 5 uids, 5.
func BenchmarkClusterApplyWait(b *testing.B) {
	for _, uids := range []int{1000, 5} {
		b.Run(fmt.Sprintf("uids=%d", uids), func(b *testing.B) {
			rdb, prefix := testenv.RedisCluster(b)
			stores := [2]*Store{waitStore(b, rdb, prefix, 0), waitStore(b, rdb, prefix, 1)}
			stores[1].waitTimeout = time.Second // the default
			r0, r1 := applyInTurns(b, stores, uids)
			b.ReportMetric(r0, "events/s-wait0")
			b.ReportMetric(r1, "events/s-wait1")
			b.ReportMetric(r1/r0, "ratio")
		})
	}
}

// BenchmarkClusterApplySlotMarkers measures what the epoch markers per
// hash slot cost on the Redis Cluster: the same chunks applied by a store
// without the guard and by one with it (each script call checks and
// raises its slot's marker), in turns as above.
func BenchmarkClusterApplySlotMarkers(b *testing.B) {
	for _, uids := range []int{1000, 5} {
		b.Run(fmt.Sprintf("uids=%d", uids), func(b *testing.B) {
			rdb, prefix := testenv.RedisCluster(b)
			guarded, err := New(b.Context(), rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, Guard: true})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := guarded.InitEpoch(b.Context(), 0); err != nil {
				b.Fatal(err)
			}
			r0, r1 := applyInTurns(b, [2]*Store{waitStore(b, rdb, prefix, 0), guarded}, uids)
			b.ReportMetric(r0, "events/s-unguarded")
			b.ReportMetric(r1, "events/s-slot-markers")
			b.ReportMetric(r1/r0, "ratio")
		})
	}
}

// applyInTurns applies chunks of 500 grant events over uids with each
// store, taking turns for 3 rounds of 1 s each so that a shared machine's
// noise falls on both, and returns each one's events/s.
func applyInTurns(b *testing.B, stores [2]*Store, uids int) (float64, float64) {
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar)
	var seq int
	chunk := func() []Op {
		ops := make([]Op, 500)
		for i := range ops {
			seq++
			ops[i] = Op{ID: fmt.Sprintf("b%d", seq), UID: fmt.Sprintf("u-%d", seq%uids), Metric: "photo_daily_total", Config: grant, Limit: 1e12, Value: 1, Seq: uint64(seq)}
		}
		return ops
	}
	var events [2]int
	var took [2]time.Duration
	for range 3 {
		for w, s := range stores {
			start := time.Now()
			for time.Since(start) < time.Second {
				if _, err := s.Apply(b.Context(), chunk()); err != nil {
					b.Fatalf("store %d: %v", w, err)
				}
				events[w] += 500
			}
			took[w] += time.Since(start)
		}
	}
	return float64(events[0]) / took[0].Seconds(), float64(events[1]) / took[1].Seconds()
}
