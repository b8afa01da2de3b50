package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/testenv"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// benchSetup connects to ALLOT_BENCH_NATS_URL and ALLOT_BENCH_REDIS_URL
// (the real servers the README's figures come from) or to an embedded
// NATS and miniredis, and returns a config whose subjects and keys are
// the benchmark's own; its keys are removed afterwards.
func benchSetup(b *testing.B) (*nats.Conn, *redis.Client, Config) {
	b.Helper()
	natsURL := os.Getenv("ALLOT_BENCH_NATS_URL")
	if natsURL == "" {
		natsURL = startNATS(b)
	}
	return benchSetupOn(b, natsURL)
}

// benchSetupOn is benchSetup on the NATS server at natsURL.
func benchSetupOn(b *testing.B, natsURL string) (*nats.Conn, *redis.Client, Config) {
	b.Helper()
	redisURL := os.Getenv("ALLOT_BENCH_REDIS_URL")
	if redisURL == "" {
		mr := miniredis.RunT(b)
		redisURL = "redis://" + mr.Addr()
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		b.Fatal(err)
	}
	opts.PoolSize = 64
	opts.ContextTimeoutEnabled = true
	rdb := redis.NewClient(opts)
	b.Cleanup(func() { _ = rdb.Close() })

	var r [4]byte
	_, _ = rand.Read(r[:])
	tag := hex.EncodeToString(r[:])
	cfg := DefaultConfig()
	cfg.Instance = "bench"
	cfg.Redis.KeyPrefix = "b" + tag[:4] + ":"
	cfg.Subjects.RateLimit = "b" + tag + ".ratelimit"
	limit := int64(MaxLimit)
	cfg.RateLimit.Services = map[string]Service{
		"api":   {Limit: &limit, Interval: time.Minute, Mode: ModeSliding},
		"fixed": {Limit: &limit, Interval: time.Minute, Mode: ModeFixed},
	}
	b.Cleanup(func() {
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, cfg.Redis.KeyPrefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})
	return nc, rdb, cfg
}

// BenchmarkCheck runs 32 concurrent clients, on a connection of their
// own as apps would be, against ratelimit.check in sliding and fixed mode
// (every call allowed, so every call writes) and two references in the
// same run: a raw micro responder doing one Redis GET per request with
// 16 handlers (the baseline: a round trip per request, as the check was
// served before batching) and a bare NATS responder doing no work at all
// (the floor of request and reply on this machine). The four take turns
// for ALLOT_BENCH_ROUNDS rounds (default 3) of ALLOT_BENCH_DURATION each
// (default 2s), so a shared machine's noise falls on all of them; it
// reports the median rate and the p99 over all rounds of each, the
// ratios of the medians to the baseline and to the floor, and the mean
// batch of checks served; fixed_batched is the fixed check through a
// client batching the calls in flight together (events.BatchOptions;
// ALLOT_BENCH_BATCH_INFLIGHT sets its MaxInFlight), and floor_batched the
// same client against bare responders (testenv.FloorBatchResponder):
// the floor of batching itself.
// It runs once whatever b.N is. The rate
// limiter has the default handlers and pipelines; ALLOT_BENCH_HANDLERS
// and ALLOT_BENCH_PIPELINES override them, to compare settings.
func BenchmarkCheck(b *testing.B) {
	nc, rdb, cfg := benchSetup(b)
	ctx := context.Background()
	d, rounds := testenv.BenchTurns()
	const clients = 32
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_HANDLERS")); err == nil {
		cfg.RateLimit.Handlers = v
	}
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_PIPELINES")); err == nil {
		cfg.RateLimit.Pipelines = v
	}
	reg := prometheus.NewRegistry()
	l, err := Start(ctx, cfg, Deps{NATS: nc, Redis: rdb, Registerer: reg, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Stop(ctx)

	// The baseline: one Redis GET per request, 16 handlers, as the check
	// was served before batching; the floor: no work at all.
	testenv.RawResponder(b, nc, rdb, "b.raw.*", cfg.Redis.KeyPrefix+"raw", 16)
	testenv.FloorResponder(b, nc, "b.floor.*", []byte(`{"v":"0"}`))
	cnc, err := nats.Connect(nc.ConnectedUrl())
	if err != nil {
		b.Fatal(err)
	}
	defer cnc.Close()
	load := func(subject func(string) string, body []byte) testenv.Load {
		return testenv.Load{Clients: 32, Duration: d, Body: body,
			Subject: func(i int) string { return subject("u-" + strconv.Itoa(i%1000)) },
			// A 503 (Redis past the decision budget on a loaded machine) is
			// an answer, counted apart; any other error fails the run.
			Check: func(msg *nats.Msg) error {
				switch serr := events.DecodeServiceError(msg); {
				case serr == nil:
					return nil
				case errors.Is(serr, events.ErrUnavailable):
					return testenv.ErrApart
				default:
					return serr
				}
			}}
	}
	var batches uint64
	var batched float64
	var n0 uint64
	var sum0 float64
	before := func() {
		if n0, sum0, err = histogramOf(reg, "allot_ratelimit_batch_size"); err != nil {
			b.Fatal(err)
		}
	}
	after := func() {
		n1, sum1, err := histogramOf(reg, "allot_ratelimit_batch_size")
		if err != nil {
			b.Fatal(err)
		}
		batches, batched = batches+n1-n0, batched+sum1-sum0
	}
	// The fixed check again through the client with batching on: the
	// calls in flight together travel as one batch message.
	batching := events.BatchOptions{Enabled: true}
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_BATCH_INFLIGHT")); err == nil {
		batching.MaxInFlight = v
	}
	batchedLoad := func(subjects events.Subjects) testenv.Load {
		bc, err := events.NewClient(cnc, events.ClientOptions{Subjects: subjects, Batch: batching})
		if err != nil {
			b.Fatal(err)
		}
		return testenv.Load{Clients: clients, Duration: d, Call: func(i int) error {
			_, err := bc.Check(ctx, "u-"+strconv.Itoa(i%1000), events.CheckRequest{Service: "fixed"})
			if errors.Is(err, events.ErrUnavailable) {
				return testenv.ErrApart
			}
			return err
		}}
	}
	// The floor of batching: the same client against bare responders
	// that answer every check allowed, doing no work.
	bare := cfg.Subjects
	bare.RateLimit = "b.floor_batched"
	testenv.FloorBatchResponder(b, nc, bare.Check("*"), bare.CheckMany("*"),
		[]byte(`{"allowed":true,"limit":1000000,"remaining":999999,"reset_after_ms":60000,"retry_after_ms":0}`))
	phases := []testenv.Phase{
		{Name: "floor", Load: load(func(u string) string { return "b.floor." + u }, nil)},
		{Name: "raw", Load: load(func(u string) string { return "b.raw." + u }, nil)},
		{Name: "sliding", Load: load(cfg.Subjects.Check, []byte(`{"service":"api"}`)), Before: before, After: after},
		{Name: "fixed", Load: load(cfg.Subjects.Check, []byte(`{"service":"fixed"}`)), Before: before, After: after},
		{Name: "fixed_batched", Load: batchedLoad(cfg.Subjects)},
		{Name: "floor_batched", Load: batchedLoad(bare)},
	}
	b.ResetTimer()
	for range b.N {
		res := testenv.Interleave(b, cnc, rounds, phases)
		b.ReportMetric(0, "ns/op")
		raw, fl := res["raw"].Rate, res["floor"].Rate
		for _, p := range phases {
			r := res[p.Name]
			b.ReportMetric(r.Rate, p.Name+"_req/s")
			b.ReportMetric(testenv.Ms(r.Latencies.Quantile(0.99)), p.Name+"_p99_ms")
			if p.Name != "raw" && p.Name != "floor" {
				b.ReportMetric(testenv.Ms(r.Latencies.Quantile(0.5)), p.Name+"_p50_ms")
				b.ReportMetric(r.Rate/raw, p.Name+"_ratio")
				b.ReportMetric(r.Rate/fl, p.Name+"_of_floor")
				b.ReportMetric(float64(r.Latencies.Apart()), p.Name+"_503s")
			}
		}
		b.ReportMetric(res["fixed_batched"].Rate/res["floor_batched"].Rate, "fixed_batched_of_floor_batched")
		if batches > 0 {
			b.ReportMetric(batched/float64(batches), "checks/batch")
		}
	}
}

// BenchmarkDecide times Limiter.Check alone, without NATS: validation,
// the script round trip and the metrics, from 32 goroutines, after a
// plain Redis GET from as many (raw_get, the baseline). It shows how much
// of BenchmarkCheck's time is the decision itself.
func BenchmarkDecide(b *testing.B) {
	_, rdb, cfg := benchSetup(b)
	l, err := New(context.Background(), cfg, Deps{Redis: rdb, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("raw_get", func(b *testing.B) {
		b.SetParallelism(16)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_, _ = rdb.Get(context.Background(), cfg.Redis.KeyPrefix+"raw").Result()
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
	})
	for _, svc := range []string{"fixed", "api"} {
		name := map[string]string{"fixed": "fixed", "api": "sliding"}[svc]
		b.Run(name, func(b *testing.B) {
			var n atomic.Int64
			b.SetParallelism(16) // 32 goroutines on 2 CPUs
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					if _, err := l.Check(context.Background(), "u-"+strconv.Itoa(int(i%1000)), events.CheckRequest{Service: svc}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
		})
	}
}
