package registry

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
)

// benchRegistry starts a registry with the 1,000 benchmark instances
// (100 of each of 10 services) on benchSetup's servers.
func benchRegistry(b *testing.B) (string, Config, *Registry) {
	b.Helper()
	natsURL, _, rdb, cfg := benchSetup(b)
	nc := benchConnect(b, natsURL)
	r, err := Start(b.Context(), cfg, Deps{NATS: nc, Redis: rdb, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = r.Stop(context.Background()) })
	registerAll(b, natsURL, cfg.Subjects, benchInstances(1000), 16)
	return natsURL, cfg, r
}

func benchConnect(b *testing.B, url string) *nats.Conn {
	b.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	return nc
}

func benchClient(b *testing.B, url string, cfg Config) *events.Client {
	b.Helper()
	c, err := events.NewClient(benchConnect(b, url), events.ClientOptions{Subjects: cfg.Subjects})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func msPct(d []time.Duration, p float64) float64 {
	slices.Sort(d)
	return float64(d[int(p*float64(len(d)-1))].Nanoseconds()) / 1e6
}

// BenchmarkWatchFind is the find of one service's 100 instances (of
// 1,000) by findClients clients at once, each with its own connection,
// two ways in the same run: watch answers from a RegistryWatch, request
// asks registry.find.svc-3 (find_cache 1s, gzip). Both report p50 and
// p99; watch also reports how many times faster its p99 is.
func BenchmarkWatchFind(b *testing.B) {
	natsURL, cfg, _ := benchRegistry(b)
	var p99request float64
	for _, mode := range []string{"request", "watch"} {
		b.Run("find="+mode, func(b *testing.B) {
			finds := make([]func(context.Context) (events.FindReply, error), findClients)
			for i := range finds {
				c := benchClient(b, natsURL, cfg)
				if mode == "request" {
					finds[i] = func(ctx context.Context) (events.FindReply, error) { return c.Find(ctx, "svc-3") }
					continue
				}
				w, err := c.WatchRegistry(b.Context(), "svc-3", events.WatchOptions{})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = w.Close() })
				finds[i] = w.Find
			}
			per := max(b.N/findClients, 50)
			lat := make([][]time.Duration, findClients)
			errs := make(chan error, findClients)
			var wg sync.WaitGroup
			b.ResetTimer()
			for i := range findClients {
				wg.Go(func() {
					ctx := context.Background()
					for range per {
						t0 := time.Now()
						rep, err := finds[i](ctx)
						if err == nil && len(rep.Instances) != 100 {
							err = fmt.Errorf("find svc-3: %d instances, want 100", len(rep.Instances))
						}
						if err != nil {
							errs <- err
							return
						}
						lat[i] = append(lat[i], time.Since(t0))
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			all := slices.Concat(lat...)
			p99 := msPct(all, 0.99)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(msPct(all, 0.5), "p50_ms")
			b.ReportMetric(p99, "p99_ms")
			if mode == "request" {
				p99request = p99
			} else if p99 > 0 && p99request > 0 {
				b.ReportMetric(p99request/p99, "p99_x_faster")
			}
		})
	}
}

// BenchmarkWatchRemoval measures how long after a deregister's reply
// (the registry has removed the instance) three watches, each on its own
// connection, stop listing it: removal_p99_ms over every watch and round.
func BenchmarkWatchRemoval(b *testing.B) {
	natsURL, cfg, _ := benchRegistry(b)
	c := benchClient(b, natsURL, cfg)
	ws := make([]*events.RegistryWatch, 3)
	for i := range ws {
		w, err := benchClient(b, natsURL, cfg).WatchRegistry(b.Context(), "svc-3", events.WatchOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = w.Close() })
		ws[i] = w
	}
	victim := events.RegisterRequest{Name: "svc-3", ID: "victim", IPv4: "10.9.9.9", Port: 1}
	listed := func(w *events.RegistryWatch) bool {
		rep, err := w.Find(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		return slices.ContainsFunc(rep.Instances, func(in events.Instance) bool { return in.ID == victim.ID })
	}
	rounds := max(b.N, 50)
	var delays []time.Duration
	b.ResetTimer()
	for range rounds {
		if _, err := c.Register(b.Context(), victim); err != nil {
			b.Fatal(err)
		}
		for _, w := range ws {
			for !listed(w) {
				time.Sleep(100 * time.Microsecond)
			}
		}
		if err := c.Deregister(b.Context(), victim.Name, victim.ID); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		for _, w := range ws {
			for listed(w) {
				if time.Since(t0) > 5*time.Second {
					b.Fatalf("a watch still lists the victim after 5s: %+v", w.Stats())
				}
				time.Sleep(20 * time.Microsecond)
			}
			delays = append(delays, time.Since(t0))
		}
	}
	b.StopTimer()
	var fallbacks uint64
	for _, w := range ws {
		fallbacks += w.Stats().Fallbacks
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(msPct(delays, 0.5), "removal_p50_ms")
	b.ReportMetric(msPct(delays, 0.99), "removal_p99_ms")
	b.ReportMetric(float64(fallbacks), "fallbacks")
}
