package service_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkEndpoints is the cost the endpoints add to a request, batched
// or not, without Redis: 32 clients on their own connection ask an echo
// endpoint whose handler or batch answers at once, through the Replier.
// It reports requests per second; compare runs on one machine.
func BenchmarkEndpoints(b *testing.B) {
	for _, batched := range []bool{true, false} {
		name := "handler"
		if batched {
			name = "batched"
		}
		b.Run(name, func(b *testing.B) {
			s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
			if err != nil {
				b.Fatal(err)
			}
			go s.Start()
			defer s.Shutdown()
			if !s.ReadyForConnections(10 * time.Second) {
				b.Fatal("nats-server did not start")
			}
			nc, err := nats.Connect(s.ClientURL())
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "requests_total", Help: "x"}, []string{"endpoint", "result"})
			r := service.Replier{Requests: requests}
			ep := service.Endpoint{Name: "echo", Subject: "echo"}
			if batched {
				ep.Batch = func(reqs []micro.Request) {
					for _, req := range reqs {
						r.ReplyBytes(req, "echo", req.Data(), nil)
					}
				}
			} else {
				ep.Handler = func(req micro.Request) { r.ReplyBytes(req, "echo", req.Data(), nil) }
			}
			eps, err := service.StartEndpoints(nc, service.EndpointsConfig{Name: "echo", Version: "0.0.1", Group: "bench", Handlers: 4}, []service.Endpoint{ep}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer eps.Stop()
			cnc, err := nats.Connect(s.ClientURL())
			if err != nil {
				b.Fatal(err)
			}
			defer cnc.Close()
			var left atomic.Int64
			left.Store(int64(b.N))
			var wg sync.WaitGroup
			body := []byte(`{"metric":"m"}`)
			b.ResetTimer()
			start := time.Now()
			for range 32 {
				wg.Go(func() {
					for left.Add(-1) >= 0 {
						if _, err := cnc.Request("bench.echo", body, 5*time.Second); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
}
