package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

// benchSetup connects to ALLOT_BENCH_NATS_URL and ALLOT_BENCH_REDIS_URL
// (the real servers the README's figures come from) or to an embedded
// NATS and miniredis, and returns a config whose subjects and keys are
// the benchmark's own and are removed afterwards.
func benchSetup(b *testing.B) (natsURL, redisURL string, rdb *redis.Client, cfg service.Config) {
	b.Helper()
	natsURL = os.Getenv("ALLOT_BENCH_NATS_URL")
	if natsURL == "" {
		natsURL = testenv.EmbeddedCoreNATS(b)
	}
	redisURL = os.Getenv("ALLOT_BENCH_REDIS_URL")
	if redisURL == "" {
		mr := miniredis.RunT(b)
		redisURL = "redis://" + mr.Addr()
	}
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		b.Fatal(err)
	}
	opts.PoolSize = 64
	rdb = redis.NewClient(opts)
	b.Cleanup(func() { _ = rdb.Close() })

	var r [4]byte
	_, _ = rand.Read(r[:])
	tag := hex.EncodeToString(r[:])
	cfg = service.Default()
	cfg.Instance = "bench"
	cfg.Redis.KeyPrefix = "b" + tag + ":"
	cfg.Subjects.Registry = "b" + tag + ".registry"
	cfg.Registry.Keys = []service.Secret{"bench-key-0123456789abcdef"}
	cfg.Registry.Handlers = 4
	cfg.Registry.SelfRegister = false
	b.Cleanup(func() {
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, cfg.Redis.KeyPrefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})
	return natsURL, redisURL, rdb, cfg
}

// benchInstances are n instances of 10 services, two resources each.
func benchInstances(n int) []events.RegisterRequest {
	out := make([]events.RegisterRequest, n)
	for i := range out {
		svc := i % 10
		out[i] = events.RegisterRequest{Name: fmt.Sprint("svc-", svc), ID: fmt.Sprintf("svc-%d-pod-%04d", svc, i),
			Endpoints: []string{fmt.Sprint("res-", svc), fmt.Sprint("res-", svc, "-admin")},
			IPv4:      fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), Port: 8080, PublicURL: fmt.Sprintf("https://svc-%d.example.com", svc)}
	}
	return out
}

// registerAll registers reqs over conc connections and returns when all
// are answered.
func registerAll(b *testing.B, natsURL string, subj events.Subjects, reqs []events.RegisterRequest, conc int) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, conc)
	for w := range conc {
		nc, err := nats.Connect(natsURL)
		if err != nil {
			b.Fatal(err)
		}
		c, _ := events.NewClient(nc, events.ClientOptions{Subjects: subj, Timeout: 10 * time.Second})
		wg.Go(func() {
			defer nc.Close()
			for i := w; i < len(reqs); i += conc {
				if _, err := c.Register(context.Background(), reqs[i]); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// BenchmarkFind: 16 clients, each on its own connection, ask
// registry.find (all 1,000 instances) or registry.find.<name> (100) in a
// loop; it reports the latency percentiles of the round trip (request to
// reply received; the client's own JSON decoding is not timed). cache=1s is the default find_cache (no changes arrive
// during the run, so finds are served from memory); cache=0 reads Redis
// and decrypts all 1,000 entries on every find.
func BenchmarkFind(b *testing.B) {
	for _, cache := range []time.Duration{time.Second, 0} {
		for _, name := range []string{"", "svc-3"} {
			label := "all"
			if name != "" {
				label = "one"
			}
			b.Run(fmt.Sprintf("cache=%v/find=%s", cache, label), func(b *testing.B) {
				natsURL, _, rdb, cfg := benchSetup(b)
				cfg.Registry.FindCache = cache
				nc, err := nats.Connect(natsURL)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(nc.Close)
				r, err := Start(b.Context(), cfg, Deps{NATS: nc, Redis: rdb, Log: slog.New(slog.DiscardHandler)})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = r.Stop(context.Background()) })
				registerAll(b, natsURL, cfg.Subjects, benchInstances(1000), 16)
				const clients = 16
				per := max(b.N/clients, 50)
				lat := make([][]time.Duration, clients)
				var size atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				for w := range clients {
					cnc, err := nats.Connect(natsURL)
					if err != nil {
						b.Fatal(err)
					}
					subject := cfg.Subjects.Find(name)
					wg.Go(func() {
						defer cnc.Close()
						for range per {
							start := time.Now()
							msg, err := cnc.Request(subject, nil, 10*time.Second)
							lat[w] = append(lat[w], time.Since(start))
							if err == nil && events.DecodeServiceError(msg) != nil {
								err = events.DecodeServiceError(msg)
							}
							if err != nil {
								b.Errorf("find: %v", err)
								return
							}
							size.Store(int64(len(msg.Data)))
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				var all []time.Duration
				for _, l := range lat {
					all = append(all, l...)
				}
				sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
				pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000 }
				b.ReportMetric(pct(0.5), "p50_ms")
				b.ReportMetric(pct(0.99), "p99_ms")
				b.ReportMetric(float64(size.Load())/1024, "reply_KiB")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

// BenchmarkFindFloor is the floor BenchmarkFind is measured against: a
// bare NATS responder that answers every request with the same 145 KiB
// (a 1,000-instance reply), under the same 16 clients.
func BenchmarkFindFloor(b *testing.B) {
	natsURL, _, _, cfg := benchSetup(b)
	nc, err := nats.Connect(natsURL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	blob := make([]byte, 145<<10)
	for range 4 {
		if _, err := nc.QueueSubscribe(cfg.Subjects.Find(""), "floor", func(m *nats.Msg) { _ = m.Respond(blob) }); err != nil {
			b.Fatal(err)
		}
	}
	_ = nc.Flush()
	const clients = 16
	per := max(b.N/clients, 50)
	lat := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := range clients {
		cnc, err := nats.Connect(natsURL)
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			defer cnc.Close()
			for range per {
				start := time.Now()
				if _, err := cnc.Request(cfg.Subjects.Find(""), nil, 10*time.Second); err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(start))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99_ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkHeartbeatCPU runs the registry binary (cmd/registry) as a
// child process and sends it rounds of 1,000 heartbeats (re-registering
// 1,000 unchanged instances, from this process over 16 connections),
// reading the child's CPU time (utime+stime in /proc/<pid>/stat) before
// and after. cpu_ms/round is the registry's CPU per heartbeat round of
// 1,000 instances; core_% is that over the 30s heartbeat interval: the
// share of one core that 1,000 instances cost. Redis's and the clients'
// CPU are not the registry's and are not counted.
func BenchmarkHeartbeatCPU(b *testing.B) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		b.Skip("needs /proc")
	}
	natsURL, redisURL, _, cfg := benchSetup(b)
	bin := filepath.Join(b.TempDir(), "registry")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/registry").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "NATS_URL="+natsURL, "REDIS_URL="+redisURL, "ALLOT_HTTP_ADDR=127.0.0.1:0",
		"ALLOT_INSTANCE=bench", "ALLOT_REGISTRY_KEYS=bench-key-0123456789abcdef", "ALLOT_LOG_LEVEL=warn")
	cfgFile := filepath.Join(b.TempDir(), "allot.yaml")
	body := fmt.Sprintf("redis: {key_prefix: %q}\nsubjects: {registry: %q}\nregistry: {handlers: 4, self_register: false}\n", cfg.Redis.KeyPrefix, cfg.Subjects.Registry)
	if err := os.WriteFile(cfgFile, []byte(body), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd.Env = append(cmd.Env, "ALLOT_CONFIG="+cfgFile)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	nc, err := nats.Connect(natsURL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	c, _ := events.NewClient(nc, events.ClientOptions{Subjects: cfg.Subjects})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := c.Find(context.Background(), ""); err == nil {
			break
		} else if time.Now().After(deadline) {
			b.Fatalf("the registry did not answer: %v", err)
		}
	}
	reqs := benchInstances(1000)
	registerAll(b, natsURL, cfg.Subjects, reqs, 16) // they appear
	rounds := max(b.N, 5)
	b.ResetTimer()
	before := cpuTime(b, cmd.Process.Pid)
	start := time.Now()
	for range rounds {
		registerAll(b, natsURL, cfg.Subjects, reqs, 16)
	}
	wall := time.Since(start)
	used := cpuTime(b, cmd.Process.Pid) - before
	b.StopTimer()
	perRound := used / time.Duration(rounds)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(perRound.Microseconds())/1000, "cpu_ms/round")
	b.ReportMetric(float64(perRound)/float64(30*time.Second)*100, "core_%")
	b.ReportMetric(float64(rounds*len(reqs))/wall.Seconds(), "heartbeats/s")
}

// cpuTime reads a process's user+system CPU time from /proc (clock ticks
// of 10ms).
func cpuTime(b *testing.B, pid int) time.Duration {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
