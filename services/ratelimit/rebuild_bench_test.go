package ratelimit

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/testenv"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// BenchmarkRebuild measures, in one run on the same events, the live hit
// consumer (draining a backlog of n events, its fastest pace) and a
// rebuild of the same windows after Redis lost them, and reports both
// rates and their ratio. Two services count every event, so each event
// is two hits on either path. b.N is the number of events. NATS is an
// embedded JetStream, whose stream is the benchmark's alone;
// ALLOT_BENCH_REDIS_URL points Redis at a real server, as for
// BenchmarkCheck.
func BenchmarkRebuild(b *testing.B) {
	nc, rdb, cfg := benchSetupOn(b, testenv.EmbeddedNATS(b))
	cfg.Streams.Memory = true
	cfg.Streams.MaxBytes, cfg.Streams.DeadMaxBytes, cfg.Streams.NotifyMaxBytes = 256<<20, 16<<20, 16<<20
	for _, name := range []string{"api", "fixed"} {
		svc := cfg.RateLimit.Services[name]
		svc.Metric, svc.Interval = "api_calls_total", time.Hour
		cfg.RateLimit.Services[name] = svc
	}
	n := max(b.N, 1000)
	ctx := context.Background()
	deps := func() Deps {
		return Deps{NATS: nc, Redis: rdb, Registerer: prometheus.NewRegistry(), Log: slog.New(slog.DiscardHandler)}
	}
	// The consumer takes new events only: create it, then let the
	// backlog pile up behind it.
	l, err := Start(ctx, cfg, deps())
	if err != nil {
		b.Fatal(err)
	}
	if err := l.Stop(ctx); err != nil {
		b.Fatal(err)
	}
	pub, err := events.NewAsyncPublisher(nc, events.AsyncOptions{PublisherOptions: events.PublisherOptions{Source: "bench", Subjects: cfg.Subjects}})
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		if err := pub.Publish(ctx, events.NewUsage(fmt.Sprintf("u-%d", i%1000), "api_calls_total", 1)); err != nil {
			b.Fatal(err)
		}
	}
	if failed, err := pub.Close(ctx); err != nil || len(failed) > 0 {
		b.Fatalf("publish: %d failed, %v", len(failed), err)
	}
	b.ResetTimer()

	start := time.Now()
	if l, err = Start(ctx, cfg, deps()); err != nil {
		b.Fatal(err)
	}
	counted := func() float64 {
		return testutil.ToFloat64(l.metrics.hits.WithLabelValues("api", "counted")) + testutil.ToFloat64(l.metrics.hits.WithLabelValues("fixed", "counted"))
	}
	for counted() < float64(2*n) {
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("the hit consumer counted %v of %d hits in two minutes", counted(), 2*n)
		}
		time.Sleep(time.Millisecond)
	}
	liveTime := time.Since(start)
	if err := l.Stop(ctx); err != nil {
		b.Fatal(err)
	}

	testenv.DeleteKeys(rdb, cfg.Redis.KeyPrefix) // Redis lost everything
	rep, err := Rebuild(ctx, cfg, Deps{NATS: nc, Redis: rdb}, RebuildOptions{From: start.Add(-time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if rep.Hits != int64(2*n) {
		b.Fatalf("rebuild counted %d of %d hits", rep.Hits, 2*n)
	}
	live := float64(n) / liveTime.Seconds()
	rebuilt := float64(n) / rep.Elapsed.Seconds()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(live, "live_ev/s")
	b.ReportMetric(rebuilt, "rebuild_ev/s")
	b.ReportMetric(rebuilt/live, "ratio")
}
