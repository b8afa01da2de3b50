package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// benchSetup connects to ALLOT_BENCH_NATS_URL and ALLOT_BENCH_REDIS_URL
// (the real servers the README's figures come from) or to an embedded
// NATS and miniredis, and returns a config whose subjects and keys are
// the benchmark's own; its keys are removed afterwards.
func benchSetup(b *testing.B) (*nats.Conn, *redis.Client, service.Config) {
	b.Helper()
	natsURL := os.Getenv("ALLOT_BENCH_NATS_URL")
	if natsURL == "" {
		natsURL = startNATS(b)
	}
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
	cfg := service.Default()
	cfg.Instance = "bench"
	cfg.Redis.KeyPrefix = "b" + tag[:4] + ":"
	cfg.Subjects.RateLimit = "b" + tag + ".ratelimit"
	limit := int64(service.MaxRateLimit)
	cfg.RateLimit.Services = map[string]service.RateLimitService{
		"api":   {Limit: &limit, Interval: time.Minute, Mode: service.ModeSliding},
		"fixed": {Limit: &limit, Interval: time.Minute, Mode: service.ModeFixed},
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

// latencies collects request latencies from concurrent clients.
type latencies struct {
	mu          sync.Mutex
	d           []time.Duration
	unavailable atomic.Int64
}

func (l *latencies) add(d []time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d...)
	l.mu.Unlock()
}

func (l *latencies) quantile(q float64) time.Duration {
	sort.Slice(l.d, func(i, j int) bool { return l.d[i] < l.d[j] })
	if len(l.d) == 0 {
		return 0
	}
	return l.d[int(q*float64(len(l.d)-1))]
}

// hammer sends requests from `clients` goroutines for d and returns the
// rate of answered requests and their latencies. A 503 (Redis past the
// decision budget on a loaded machine) is an answer, counted in
// unavailable; anything else failing fails the benchmark.
func hammer(b *testing.B, nc *nats.Conn, clients int, d time.Duration, subject func(i int) string, body []byte) (float64, *latencies) {
	b.Helper()
	var wg sync.WaitGroup
	lat := &latencies{}
	deadline := time.Now().Add(d)
	var failures sync.Map
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for i := c; time.Now().Before(deadline); i += clients {
				t0 := time.Now()
				msg, err := nc.Request(subject(i), body, 2*time.Second)
				if err == nil {
					if serr := events.DecodeServiceError(msg); serr != nil {
						if errors.Is(serr, events.ErrUnavailable) {
							lat.unavailable.Add(1)
						} else {
							err = serr
						}
					}
				}
				if err != nil {
					failures.Store(c, fmt.Sprint(err))
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			lat.add(mine)
		}()
	}
	wg.Wait()
	failures.Range(func(k, v any) bool {
		b.Fatalf("request failed: %v", v)
		return false
	})
	return float64(len(lat.d)) / d.Seconds(), lat
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
// batch of checks served. It runs once whatever b.N is. The rate
// limiter has the default handlers and pipelines; ALLOT_BENCH_HANDLERS
// and ALLOT_BENCH_PIPELINES override them, to compare settings.
func BenchmarkCheck(b *testing.B) {
	nc, rdb, cfg := benchSetup(b)
	ctx := context.Background()
	d := 2 * time.Second
	if v, err := time.ParseDuration(os.Getenv("ALLOT_BENCH_DURATION")); err == nil {
		d = v
	}
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
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

	// The baseline: a micro service doing one Redis GET per request.
	const rawHandlers = 16
	var svcs []micro.Service
	for range rawHandlers {
		svc, err := micro.AddService(nc, micro.Config{Name: "rawbaseline", Version: "0.0.1", QueueGroup: "raw"})
		if err != nil {
			b.Fatal(err)
		}
		if err := svc.AddEndpoint("get", micro.HandlerFunc(func(req micro.Request) {
			v, _ := rdb.Get(context.Background(), cfg.Redis.KeyPrefix+"raw").Result()
			_ = req.Respond([]byte(`{"v":"` + v + `"}`))
		}), micro.WithEndpointSubject("b.raw.*")); err != nil {
			b.Fatal(err)
		}
		svcs = append(svcs, svc)
	}
	defer func() {
		for _, s := range svcs {
			_ = s.Stop()
		}
	}()
	// The floor: answer at once, from the subscription's goroutine.
	floor, err := nc.Subscribe("b.floor.*", func(msg *nats.Msg) { _ = msg.Respond([]byte(`{"v":"0"}`)) })
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = floor.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	cnc, err := nats.Connect(nc.ConnectedUrl())
	if err != nil {
		b.Fatal(err)
	}
	defer cnc.Close()
	uid := func(i int) string { return "u-" + strconv.Itoa(i%1000) }
	runs := []struct {
		name    string
		subject func(i int) string
		body    []byte
	}{
		{"floor", func(i int) string { return "b.floor." + uid(i) }, nil},
		{"raw", func(i int) string { return "b.raw." + uid(i) }, nil},
		{"sliding", func(i int) string { return cfg.Subjects.Check(uid(i)) }, []byte(`{"service":"api"}`)},
		{"fixed", func(i int) string { return cfg.Subjects.Check(uid(i)) }, []byte(`{"service":"fixed"}`)},
	}
	batchSize := func() (uint64, float64) {
		n, sum, err := histogramOf(reg, "allot_ratelimit_batch_size")
		if err != nil {
			b.Fatal(err)
		}
		return n, sum
	}
	b.ResetTimer()
	for range b.N {
		rates := map[string][]float64{}
		all := map[string]*latencies{}
		var batches uint64
		var batched float64
		for range rounds {
			for _, r := range runs {
				n0, sum0 := batchSize()
				rate, lat := hammer(b, cnc, clients, d, r.subject, r.body)
				n1, sum1 := batchSize()
				batches, batched = batches+n1-n0, batched+sum1-sum0
				rates[r.name] = append(rates[r.name], rate)
				if all[r.name] == nil {
					all[r.name] = &latencies{}
				}
				all[r.name].add(lat.d)
				all[r.name].unavailable.Add(lat.unavailable.Load())
			}
		}
		b.ReportMetric(0, "ns/op")
		raw, fl := median(rates["raw"]), median(rates["floor"])
		for _, r := range runs {
			b.ReportMetric(median(rates[r.name]), r.name+"_req/s")
			b.ReportMetric(float64(all[r.name].quantile(0.99).Microseconds())/1000, r.name+"_p99_ms")
			if r.name != "raw" && r.name != "floor" {
				b.ReportMetric(float64(all[r.name].quantile(0.5).Microseconds())/1000, r.name+"_p50_ms")
				b.ReportMetric(median(rates[r.name])/raw, r.name+"_ratio")
				b.ReportMetric(median(rates[r.name])/fl, r.name+"_of_floor")
				b.ReportMetric(float64(all[r.name].unavailable.Load()), r.name+"_503s")
			}
		}
		if batches > 0 {
			b.ReportMetric(batched/float64(batches), "checks/batch")
		}
	}
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
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
