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
	"github.com/nats-io/nats-server/v2/server"
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
	// The stacks' own admin connections watch their meters.
	onAdmin, offAdmin := benchConn(b, on.NATSURL, on.AdminKey), benchConn(b, off.NATSURL, "")

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
					if m.Header.Get("Nats-Service-Error-Code") == "503" {
						return testenv.ErrApart // the rate limiter's Redis budget ran out under load
					}
					if m.Header.Get("Nats-Service-Error-Code") != "" {
						return fmt.Errorf("error reply: %s %s", m.Header.Get("Nats-Service-Error-Code"), m.Data)
					}
					return nil
				}}.Run(b, nc)
			return rate
		}
	}
	// The floor: what nats-server's own permission checks cost request and
	// reply on this machine, with no allot in the way: a bare server whose
	// client may publish only the app role's subjects and whose responder
	// answers only what it receives (respond), against one without
	// permissions; a responder that replies at once.
	floorOn, floorOff := floorServer(b, true), floorServer(b, false)
	floor := func(nc *nats.Conn) float64 {
		if nc == onNC {
			nc = floorOn
		} else {
			nc = floorOff
		}
		rate, _ := testenv.Load{Clients: clients, Duration: duration, Body: []byte("{}"),
			Subject: func(i int) string { return subj.Credit("u-" + strconv.Itoa(i%1000)) }}.Run(b, nc)
		return rate
	}
	phases := []phase{
		{"floor", floor},
		{"credit", request(subj.Credit, `{"metric":"photo_daily_total"}`)},
		{"check", request(subj.Check, `{"cost":1}`)},
		{"publish", func(nc *nats.Conn) float64 { return publishRate(b, nc, duration) }},
	}
	rates := map[string][]float64{}
	type side struct {
		name string
		nc   *nats.Conn
	}
	sides := []side{{"_on", onNC}, {"_off", offNC}}
	b.ResetTimer()
	for r := range rounds {
		for _, p := range phases {
			// Each goes first in every other round, and a phase starts
			// only once both meters have applied what was published, so
			// neither pays for the other's backlog.
			order := sides
			if r%2 == 1 {
				order = []side{sides[1], sides[0]}
			}
			for _, sd := range order {
				waitApplied(b, onAdmin)
				waitApplied(b, offAdmin)
				rates[p.name+sd.name] = append(rates[p.name+sd.name], p.run(sd.nc))
			}
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

// floorServer starts a bare nats-server with a responder on
// meter.credit.* answering at once, and returns a client connection: with
// perms, the client may publish only what the app role may and the
// responder only answer, as allot's roles have them.
func floorServer(b *testing.B, perms bool) *nats.Conn {
	conf := `authorization { users: [ {user: svc, password: p}, {user: cli, password: p} ] }`
	if perms {
		conf = `authorization { users: [
  {user: svc, password: p, permissions: {publish: {deny: [">"]}, allow_responses: true, subscribe: {allow: ["meter.>"]}}},
  {user: cli, password: p, permissions: {publish: {allow: ["usage.*", "meter.credit.*", "meter.authorize.*", "ratelimit.check.*", "notify.confirm.*", "notify.verify"]}, subscribe: {allow: ["_INBOX.>"]}}}
] }`
	}
	opts := &server.Options{}
	if err := opts.ProcessConfigString(conf); err != nil {
		b.Fatal(err)
	}
	opts.Host, opts.Port, opts.NoLog, opts.NoSigs = "127.0.0.1", -1, true, true
	s, err := server.NewServer(opts)
	if err != nil {
		b.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		b.Fatal("floor server not ready")
	}
	b.Cleanup(s.Shutdown)
	svc, err := nats.Connect(s.ClientURL(), nats.UserInfo("svc", "p"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(svc.Close)
	for range 4 {
		if _, err := svc.QueueSubscribe("meter.credit.*", "q", func(m *nats.Msg) { _ = m.Respond([]byte(`{}`)) }); err != nil {
			b.Fatal(err)
		}
	}
	_ = svc.Flush()
	cli, err := nats.Connect(s.ClientURL(), nats.UserInfo("cli", "p"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cli.Close)
	return cli
}

// waitApplied waits until the meter's consumer has every published event
// acked.
func waitApplied(b *testing.B, nc *nats.Conn) {
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		c, err := js.Consumer(ctx, "USAGE", "meter")
		if err != nil {
			b.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
	}
	b.Fatal("the meter did not catch up within 2 minutes")
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
	opts := Options{Config: cfg, NATSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", SMTPAddr: "127.0.0.1:0", Log: slog.New(slog.DiscardHandler)}
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
