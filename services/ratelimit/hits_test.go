package ratelimit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/testenv"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// TestHitsFromUsageEvents: events of a service's metric count as its
// hits, once each, however often they are delivered, from a partitioned
// usage stream too.
func TestHitsFromUsageEvents(t *testing.T) {
	for _, parts := range []int{0, 3} {
		t.Run(fmt.Sprintf("partitions=%d", parts), func(t *testing.T) {
			l, nc, _, cfg := startHitsWith(t, func(c *Config) { c.Streams.Partitions = parts })
			testHitsFromUsageEvents(t, l, nc, cfg)
		})
	}
}

func testHitsFromUsageEvents(t *testing.T, l *Limiter, nc *nats.Conn, cfg Config) {
	ctx := t.Context()
	pub, err := events.NewPublisher(nc, events.PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	first := events.NewUsage("u-1", "api_calls_total", 2)
	msg, err := events.Prepare(&first, events.PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	// The first event twice, the second time under another Nats-Msg-Id so
	// the stream keeps it: the limiter's own record must catch it.
	again := nats.NewMsg(msg.Subject)
	again.Data = msg.Data
	again.Header.Set(events.MsgIDHeader, "another-id")
	for _, m := range []*nats.Msg{msg, again} {
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, ev := range []events.Event{events.NewUsage("u-1", "api_calls_total", 1), events.NewUsage("u-1", "photo_daily_total", 1)} {
		if _, err := pub.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	bad := nats.NewMsg(cfg.Subjects.UsageFor("u-1"))
	bad.Data = []byte("{not json")
	if _, err := js.PublishMsg(ctx, bad); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(10 * time.Second)
	settled := func() bool {
		n := testutil.ToFloat64(l.metrics.hitEvents.WithLabelValues("invalid")) + testutil.ToFloat64(l.metrics.hitEvents.WithLabelValues("other_metric"))
		for _, svc := range []string{"api", "web"} {
			n += testutil.ToFloat64(l.metrics.hits.WithLabelValues(svc, "counted")) + testutil.ToFloat64(l.metrics.hits.WithLabelValues(svc, "duplicate"))
		}
		return n >= 2+2*(3+2)
	}
	for time.Now().Before(deadline) && !settled() {
		time.Sleep(20 * time.Millisecond)
	}
	for _, svc := range []string{"api", "web"} {
		r, err := l.Check(ctx, "u-1", events.CheckRequest{Service: svc, Cost: events.Cost(0)})
		if err != nil {
			t.Fatal(err)
		}
		if r.Remaining != 2 {
			t.Errorf("%s: %+v, want 3 hits counted (2 left)", svc, r)
		}
		if got := testutil.ToFloat64(l.metrics.hits.WithLabelValues(svc, "duplicate")); got != 2 {
			t.Errorf("%s: duplicate hits %v, want 2 (the repeated event's value)", svc, got)
		}
	}
	if got := testutil.ToFloat64(l.metrics.hitEvents.WithLabelValues("other_metric")); got != 1 {
		t.Errorf("other_metric %v, want 1", got)
	}
}

// startHits starts a rate limiter whose services api and web count
// api_calls_total events, on an embedded JetStream and miniredis.
func startHits(t *testing.T) (*Limiter, *nats.Conn, *miniredis.Miniredis, Config) {
	t.Helper()
	return startHitsWith(t, func(*Config) {})
}

// startHitsWith is startHits with the configuration changed by mod.
func startHitsWith(t *testing.T, mod func(*Config)) (*Limiter, *nats.Conn, *miniredis.Miniredis, Config) {
	t.Helper()
	nc, err := nats.Connect(testenv.EmbeddedNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })

	cfg := DefaultConfig()
	cfg.RateLimit.Hits.RetryDelay = 100 * time.Millisecond
	cfg.Instance = "test"
	cfg.Streams.Memory = true
	cfg.Streams.MaxBytes, cfg.Streams.DeadMaxBytes, cfg.Streams.NotifyMaxBytes = 64<<20, 16<<20, 16<<20
	limit := int64(5)
	cfg.RateLimit.Services = map[string]Service{
		"api": {Limit: &limit, Interval: time.Hour, Metric: "api_calls_total"},
		"web": {Limit: &limit, Interval: time.Hour, Metric: "api_calls_total", Mode: ModeSliding},
	}
	mod(&cfg)
	clock := &fakeClock{t: windowStart(time.Hour)}
	l, err := Start(t.Context(), cfg, Deps{NATS: nc, Redis: rdb, Registerer: prometheus.NewRegistry(), Log: testLog(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Stop(context.Background()) })

	return l, nc, mr, cfg
}

// TestHitsWaitForRedis: while Redis refuses, events are redelivered
// later, then counted once.
func TestHitsWaitForRedis(t *testing.T) {
	l, nc, mr, _ := startHits(t)
	start := time.Now()
	pub, err := events.NewPublisher(nc, events.PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	mr.SetError("LOADING Redis is loading the dataset in memory") // every command refused
	if _, err := pub.Publish(t.Context(), events.NewUsage("u-1", "api_calls_total", 4)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if got := testutil.ToFloat64(l.metrics.hits.WithLabelValues("api", "counted")); got != 0 {
		t.Fatalf("counted %v with Redis refusing", got)
	}
	mr.SetError("")
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && testutil.ToFloat64(l.metrics.hits.WithLabelValues("api", "counted")) < 4 {
		time.Sleep(20 * time.Millisecond)
	}
	r, err := l.Check(t.Context(), "u-1", events.CheckRequest{Service: "api", Cost: events.Cost(0)})
	if err != nil || r.Remaining != 1 {
		t.Errorf("after Redis came back: %+v, %v; want 4 hits counted once", r, err)
	}
	if n := testutil.ToFloat64(l.metrics.hits.WithLabelValues("api", "counted")); n != 4 {
		t.Errorf("counted %v, want 4", n)
	}
	t.Logf("counted %v after the event was published", time.Since(start))
}
