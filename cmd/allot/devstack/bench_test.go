package devstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/services/auth"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// BenchmarkAuthOverhead runs two whole allot stacks in this process, one
// with access control (the auth callout, every connection on a key) and
// one open, and measures what an app sees after it has connected:
// meter.credit and ratelimit.check with ALLOT_BENCH_CLIENTS (32)
// closed-loop clients, and usage events published with their acks
// awaited (a window of 1024 in flight), each for ALLOT_BENCH_DURATION
// (2s), the two stacks in turns for ALLOT_BENCH_ROUNDS (3) rounds so a
// shared machine's noise falls on both. Redis is ALLOT_BENCH_REDIS_URL
// when set (two key prefixes), else a miniredis per stack.
//
// Reported: each rate with auth on and off (median of the rounds) and
// their ratio, on/off; the permission checks are nats-server's, so the
// ratio should be about 1.
func BenchmarkAuthOverhead(b *testing.B) {
	clients := benchInt("ALLOT_BENCH_CLIENTS", 32)
	duration := benchDuration("ALLOT_BENCH_DURATION", 2*time.Second)
	rounds := benchInt("ALLOT_BENCH_ROUNDS", 3)
	on, onKey := benchStack(b, true)
	off, _ := benchStack(b, false)
	onNC := benchConn(b, on.NATSURL, onKey)
	offNC := benchConn(b, off.NATSURL, "")

	type phase struct {
		name string
		run  func(nc *nats.Conn) float64
	}
	subj := events.DefaultSubjects()
	request := func(subject func(string) string, body string) func(nc *nats.Conn) float64 {
		return func(nc *nats.Conn) float64 {
			rate, _ := testenv.Load{Clients: clients, Duration: duration, Body: []byte(body),
				Subject: func(i int) string { return subject("u-" + strconv.Itoa(i%1000)) },
				Check: func(m *nats.Msg) error {
					if m.Header.Get("Nats-Service-Error-Code") != "" {
						return fmt.Errorf("error reply: %s %s", m.Header.Get("Nats-Service-Error-Code"), m.Data)
					}
					return nil
				}}.Run(b, nc)
			return rate
		}
	}
	phases := []phase{
		{"credit", request(subj.Credit, `{"metric":"photo_daily_total"}`)},
		{"check", request(subj.Check, `{"cost":1}`)},
		{"publish", func(nc *nats.Conn) float64 { return publishRate(b, nc, duration) }},
	}
	rates := map[string][]float64{}
	b.ResetTimer()
	for range rounds {
		for _, p := range phases {
			rates[p.name+"_on"] = append(rates[p.name+"_on"], p.run(onNC))
			rates[p.name+"_off"] = append(rates[p.name+"_off"], p.run(offNC))
		}
	}
	b.StopTimer()
	b.ReportMetric(0, "ns/op")
	for _, p := range phases {
		onRate, offRate := median(rates[p.name+"_on"]), median(rates[p.name+"_off"])
		b.ReportMetric(onRate, p.name+"_on/s")
		b.ReportMetric(offRate, p.name+"_off/s")
		b.ReportMetric(onRate/offRate, p.name+"_ratio")
	}
}

// publishRate publishes usage events for d with up to 1024 acks awaited
// at once and returns events acked per second.
func publishRate(b *testing.B, nc *nats.Conn, d time.Duration) float64 {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1024))
	if err != nil {
		b.Fatal(err)
	}
	var acked atomic.Int64
	var seq int
	start := time.Now()
	for time.Since(start) < d {
		seq++
		ev := events.NewUsage("u-"+strconv.Itoa(seq%1000), "api_calls_total", 1)
		msg, err := events.Prepare(&ev, events.PublisherOptions{Source: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		f, err := js.PublishMsgAsync(msg)
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			// The window is full and stayed full: let it drain, then go on.
			<-js.PublishAsyncComplete()
			f, err = js.PublishMsgAsync(msg)
		}
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			select {
			case <-f.Ok():
				acked.Add(1)
			case err := <-f.Err():
				b.Errorf("publish: %v", err)
			}
		}()
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		b.Fatal("acks not in within 30s")
	}
	return float64(acked.Load()) / time.Since(start).Seconds()
}

func benchStack(b *testing.B, withAuth bool) (*Stack, string) {
	cfg := service.Default()
	cfg.Log.Level = "error"
	opts := Options{Config: cfg, NATSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", SMTPAddr: "127.0.0.1:0", Log: slog.New(slog.DiscardHandler)}
	if url := os.Getenv("ALLOT_BENCH_REDIS_URL"); url != "" {
		opts.ExternalRedis = true
		opts.Config.Redis.URL = service.URL(url)
		opts.Config.Redis.KeyPrefix = fmt.Sprintf("bench%d%v:", time.Now().UnixNano()%100000, withAuth)
	}
	if withAuth {
		a, err := auth.DefaultConfig()
		if err != nil {
			b.Fatal(err)
		}
		kp, _ := nkeys.CreateAccount()
		seed, _ := kp.Seed()
		a.IssuerSeed, a.SysPassword = service.Secret(seed), "bench-sys-password"
		opts.Auth = &a
	}
	st, err := Start(context.Background(), opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if opts.ExternalRedis {
			testenv.DeleteKeys(st.Redis, opts.Config.Redis.KeyPrefix)
		}
		_ = st.Close(ctx)
	})
	return st, st.AppKey
}

func benchConn(b *testing.B, url, key string) *nats.Conn {
	var opts []nats.Option
	if key != "" {
		var err error
		if opts, err = events.KeyOptions(key); err != nil {
			b.Fatal(err)
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	return nc
}

func median(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}

func benchInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func benchDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
