package meter

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/allot/allot/pkg/testenv"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// BenchmarkRebuild measures, in one run on the same events, the meter's
// live ingest (draining a backlog of n events, its fastest pace) and a
// rebuild of the same events after Redis lost them, and reports both
// rates and their ratio (issue 18's target: at least 0.8). b.N is the
// number of events. ALLOT_BENCH_NATS_URL and ALLOT_BENCH_REDIS_URL point
// it at real servers, as for BenchmarkIngest.
func BenchmarkRebuild(b *testing.B) {
	nc, rdb, cfg := benchSetup(b)
	n := max(b.N, 1000)
	fill(b, nc, cfg, n)
	ctx := context.Background()
	b.ResetTimer()

	start := time.Now()
	m, err := Start(ctx, cfg, Deps{NATS: nc, Redis: rdb, Registerer: prometheus.NewRegistry(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	for applied := 0.0; applied < float64(n); {
		applied = testutil.ToFloat64(m.metrics.events.WithLabelValues("applied"))
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("the meter applied %v of %d events in two minutes", applied, n)
		}
		time.Sleep(time.Millisecond)
	}
	liveTime := time.Since(start)
	if err := m.Stop(ctx); err != nil {
		b.Fatal(err)
	}

	testenv.DeleteKeys(rdb, cfg.Redis.KeyPrefix) // Redis lost everything
	rep, err := Rebuild(ctx, cfg, Deps{NATS: nc, Redis: rdb}, RebuildOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if rep.Applied != int64(n) {
		b.Fatalf("rebuild applied %d of %d events", rep.Applied, n)
	}
	live := float64(n) / liveTime.Seconds()
	rebuilt := float64(n) / rep.Elapsed.Seconds()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(live, "live_ev/s")
	b.ReportMetric(rebuilt, "rebuild_ev/s")
	b.ReportMetric(rebuilt/live, "ratio")
}
