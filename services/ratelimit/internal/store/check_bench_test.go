package store

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
)

// BenchmarkCheckMany decides batches of 32 checks, each for one of 1,000
// uids at random, every one allowed (so written), in fixed and sliding
// mode: the shape of a busy rate limiter's batch. On ALLOT_BENCH_REDIS_URL
// (a real Redis) it reports the script's own time per check from INFO
// commandstats (redis_us/check: what binds a single Redis, and what a
// batch spends in it), beside the wall time per check (ns/op: b.N counts
// checks); on miniredis only the latter.
func BenchmarkCheckMany(b *testing.B) {
	for _, mode := range []string{ModeFixed, ModeSliding} {
		b.Run("mode="+mode, func(b *testing.B) {
			ctx := context.Background()
			rdb, prefix := testenv.BenchRedis(b)
			s, err := New(ctx, rdb, Options{Keys: keys.New(prefix)})
			if err != nil {
				b.Fatal(err)
			}
			l := Limit{Service: "api", Interval: time.Minute, Mode: mode, Configured: 1 << 40, DefaultGrant: 100}
			const batch = 32
			ops := make([]CheckOp, batch)
			n := 0
			usec0 := testenv.ScriptUsec(b, rdb)
			b.ResetTimer()
			for checks := 0; checks < b.N; checks += batch {
				for i := range ops {
					n = (n*7919 + 13) % 1000
					ops[i] = CheckOp{UID: "u-" + strconv.Itoa(n), Limit: l, Cost: 1}
				}
				ds, errs := s.CheckMany(ctx, ops)
				for i := range ds {
					if errs[i] != nil || !ds[i].Allowed {
						b.Fatalf("check %d: %+v, %v", i, ds[i], errs[i])
					}
				}
			}
			b.StopTimer()
			if usec0 >= 0 {
				b.ReportMetric(float64(testenv.ScriptUsec(b, rdb)-usec0)/float64(b.N), "redis_us/check")
			}
		})
	}
}
