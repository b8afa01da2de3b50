package auth

import (
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/testenv"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

// BenchmarkConnect measures what verifying a key adds to a connect: the
// same connect (dial, CONNECT, PING/PONG, close) to a nats-server with the
// callout and the auth service, with a key of role app, and to a
// nats-server without auth (the baseline), in the same run. Each round
// measures both in turn: latencies one connect at a time, then connects
// per second with ALLOT_BENCH_CLIENTS (8) connecting at once, each for
// ALLOT_BENCH_DURATION (2s); ALLOT_BENCH_ROUNDS (3) rounds. The keys live
// in ALLOT_BENCH_REDIS_URL when set, else in miniredis.
//
// Reported: p50 and p99 of each (ms), what auth adds to the p99, and the
// connects per second of each.
func BenchmarkConnect(b *testing.B) {
	rdb, prefix := benchRedis(b)
	srv, sc, issuer := calloutServer(b)
	st := startStackOn(b, srv, sc, issuer, rdb, prefix)
	key, err := NewKey()
	if err != nil {
		b.Fatal(err)
	}
	admin, _, _, err := st.connect(b, st.adminKey)
	if err != nil {
		b.Fatal(err)
	}
	client, _ := events.NewClient(admin, events.ClientOptions{Timeout: 2 * time.Second})
	created, err := client.CreateKey(b.Context(), events.KeyCreateRequest{Role: "app", UIDs: []string{"*"}})
	if err != nil {
		b.Fatal(err)
	}
	key = created.Key
	keyOpts, _ := events.KeyOptions(key)
	plain := testenv.EmbeddedCoreNATS(b)

	duration := envDuration("ALLOT_BENCH_DURATION", 2*time.Second)
	clients := envInt("ALLOT_BENCH_CLIENTS", 8)
	rounds := envInt("ALLOT_BENCH_ROUNDS", 3)
	var authLat, plainLat []time.Duration
	var authRates, plainRates []float64
	b.ResetTimer()
	for range rounds {
		authLat = append(authLat, connectLatencies(b, srv.ClientURL(), keyOpts, duration)...)
		plainLat = append(plainLat, connectLatencies(b, plain, nil, duration)...)
		authRates = append(authRates, connectRate(b, srv.ClientURL(), keyOpts, clients, duration))
		plainRates = append(plainRates, connectRate(b, plain, nil, clients, duration))
	}
	b.StopTimer()
	ap50, ap99 := quantiles(authLat)
	pp50, pp99 := quantiles(plainLat)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(testenv.Ms(ap50), "auth_p50_ms")
	b.ReportMetric(testenv.Ms(ap99), "auth_p99_ms")
	b.ReportMetric(testenv.Ms(pp50), "plain_p50_ms")
	b.ReportMetric(testenv.Ms(pp99), "plain_p99_ms")
	b.ReportMetric(testenv.Ms(ap99-pp99), "added_p99_ms")
	b.ReportMetric(median(authRates), "auth_connects/s")
	b.ReportMetric(median(plainRates), "plain_connects/s")
	if n := st.decisions("allowed", ""); n == 0 {
		b.Fatal("no connection went through the callout")
	}
}

// connectLatencies connects, one at a time, for d and returns each
// connect's time (to the first PONG).
func connectLatencies(b *testing.B, url string, opts []nats.Option, d time.Duration) []time.Duration {
	var out []time.Duration
	for end := time.Now().Add(d); time.Now().Before(end); {
		t0 := time.Now()
		nc, err := nats.Connect(url, append([]nats.Option{nats.NoReconnect()}, opts...)...)
		if err != nil {
			b.Fatalf("connect: %v", err)
		}
		out = append(out, time.Since(t0))
		nc.Close()
	}
	return out
}

// connectRate connects and closes with clients goroutines for d and
// returns connects per second.
func connectRate(b *testing.B, url string, opts []nats.Option, clients int, d time.Duration) float64 {
	var n atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	end := time.Now().Add(d)
	for range clients {
		wg.Go(func() {
			for time.Now().Before(end) {
				nc, err := nats.Connect(url, append([]nats.Option{nats.NoReconnect()}, opts...)...)
				if err != nil {
					failed.Store(err)
					return
				}
				nc.Close()
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatalf("connect: %v", err)
	}
	return float64(n.Load()) / d.Seconds()
}

func benchRedis(b *testing.B) (redis.UniversalClient, string) {
	if url := os.Getenv("ALLOT_BENCH_REDIS_URL"); url != "" {
		opts, err := redis.ParseURL(url)
		if err != nil {
			b.Fatal(err)
		}
		rdb := redis.NewClient(opts)
		b.Cleanup(func() { _ = rdb.Close() })
		return rdb, testenv.KeyPrefix(b, rdb)
	}
	mr := miniredis.RunT(b)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	b.Cleanup(func() { _ = rdb.Close() })
	return rdb, "allot:"
}

func quantiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2], d[len(d)*99/100]
}

func median(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
