package ratelimit

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allot/allot/pkg/testenv"
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// BenchmarkGRPCvsNATS runs 32 closed-loop clients against the gRPC
// front's ShouldRateLimit (one descriptor, hits_addend 1, a random key of
// 10,000, on 4 connections as a few Envoy workers hold) and against
// ratelimit.check over NATS (the same limit shape: fixed, one minute,
// never reached, a random uid of 10,000, each client on a connection of
// its own), taking turns for ALLOT_BENCH_ROUNDS rounds (default 3) of
// ALLOT_BENCH_DURATION (default 2s) on the same rate limiter, Redis and
// machine (ALLOT_BENCH_NATS_URL and ALLOT_BENCH_REDIS_URL as
// BenchmarkCheck). It reports both rates, both p99s, grpc_of_nats (the
// ratio of the median rates) and the gRPC answers that were Unavailable
// (Redis past ratelimit.timeout), counted apart. It runs once whatever b.N is.
func BenchmarkGRPCvsNATS(b *testing.B) {
	nc, rdb, cfg := benchSetup(b)
	ctx := context.Background()
	d, rounds := testenv.BenchTurns()
	const clients = 32
	cfg.RateLimit.GRPC.Listen = "127.0.0.1:0"
	cfg.RateLimit.GRPC.Domains = []EnvoyDomain{{Domain: "bench", Descriptors: []EnvoyDescriptor{{
		Key: "client", RateLimit: &EnvoyRateLimit{Unit: "minute", RequestsPerUnit: MaxLimit}}}}}
	l, err := Start(ctx, cfg, Deps{NATS: nc, Redis: rdb, Registerer: prometheus.NewRegistry(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Stop(ctx)
	var rls []rlv3.RateLimitServiceClient
	for range 4 {
		c, _ := dialGRPC(b, l.GRPCAddr())
		rls = append(rls, c)
	}
	conns := make([]*nats.Conn, clients)
	for i := range conns {
		if conns[i], err = nats.Connect(nc.ConnectedUrl()); err != nil {
			b.Fatal(err)
		}
		defer conns[i].Close()
	}
	natsCall := func(i int) error {
		uid := "u-" + strconv.Itoa(rand.IntN(10_000))
		_, err := conns[i].Request(cfg.Subjects.Check(uid), []byte(`{"service":"fixed"}`), 5*time.Second)
		return err
	}
	var unavailable atomic.Int64
	grpcCall := func(i int) error {
		resp, err := rls[i%len(rls)].ShouldRateLimit(ctx, &rlv3.RateLimitRequest{Domain: "bench", HitsAddend: 1,
			Descriptors: []*rlcommon.RateLimitDescriptor{desc("client", "c-"+strconv.Itoa(rand.IntN(10_000)))}})
		switch {
		case status.Code(err) == codes.Unavailable:
			// Redis past the decision budget on a loaded machine: an
			// answer, counted apart, as BenchmarkCheck counts 503s.
			unavailable.Add(1)
			return nil
		case err == nil && resp.OverallCode != rlv3.RateLimitResponse_OK:
			b.Errorf("over the limit: %v", resp)
		}
		return err
	}
	type result struct {
		n    int
		secs float64
		lat  []time.Duration
	}
	run := func(call func(int) error) result {
		var mu sync.Mutex
		var res result
		start := time.Now()
		var wg sync.WaitGroup
		for i := range clients {
			wg.Go(func() {
				var lat []time.Duration
				for time.Since(start) < d {
					t0 := time.Now()
					if err := call(i); err != nil {
						b.Error(err)
						return
					}
					lat = append(lat, time.Since(t0))
				}
				mu.Lock()
				res.lat = append(res.lat, lat...)
				mu.Unlock()
			})
		}
		wg.Wait()
		res.n, res.secs = len(res.lat), time.Since(start).Seconds()
		return res
	}
	b.ResetTimer()
	for range b.N {
		var rates [2][]float64
		var lats [2][]time.Duration
		for range rounds {
			for k, call := range []func(int) error{natsCall, grpcCall} {
				r := run(call)
				rates[k] = append(rates[k], float64(r.n)/r.secs)
				lats[k] = append(lats[k], r.lat...)
			}
		}
		b.ReportMetric(0, "ns/op")
		var med [2]float64
		for k, name := range []string{"nats", "grpc"} {
			slices.Sort(rates[k])
			med[k] = rates[k][len(rates[k])/2]
			slices.Sort(lats[k])
			b.ReportMetric(med[k], name+"_req/s")
			b.ReportMetric(float64(lats[k][len(lats[k])*99/100])/1e6, name+"_p99_ms")
		}
		b.ReportMetric(med[1]/med[0], "grpc_of_nats")
		b.ReportMetric(float64(unavailable.Load()), "grpc_unavailable")
	}
}
