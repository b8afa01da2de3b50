package service_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
)

// A message its handler always retries is handed out max_deliver times;
// then the server's advisory has it dead-lettered with the reason, once,
// though two replicas watch the advisory.
func TestMaxDeliveriesAreDeadLettered(t *testing.T) {
	s := runNATS(t, server.Options{JetStream: true, StoreDir: t.TempDir()})
	var replicas [2]jetstream.JetStream
	for i := range replicas {
		nc, err := nats.Connect(s.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		if replicas[i], err = jetstream.New(nc); err != nil {
			t.Fatal(err)
		}
	}
	js := replicas[0]
	ctx := t.Context()
	for name, subj := range map[string]string{"IN": "in.*", "DEAD": "dead.*"} {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subj}}); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "IN", jetstream.ConsumerConfig{
		Durable: "worker", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 5 * time.Second, MaxDeliver: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	metrics, err := service.NewConsumerMetrics(reg, "allot_test", "Messages")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var deadKinds []string
	dl := &service.DeadLetters{
		Subject: func(s string) string { return "dead." + strings.TrimPrefix(s, "in.") },
		Stream:  "IN",
		Counted: func(kind string) {
			mu.Lock()
			defer mu.Unlock()
			deadKinds = append(deadKinds, kind)
		},
	}
	for _, rjs := range replicas {
		stop, err := service.WatchMaxDeliveries(rjs, service.MaxDeliveries{Stream: "IN", Consumer: "worker", DeadLetters: dl, Counted: metrics.MaxDeliveryCounted}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		if err := rjs.Conn().Flush(); err != nil {
			t.Fatal(err)
		}
	}
	rec := &recorder{decide: func(string, uint64) service.Outcome { return service.Retry(10*time.Millisecond, "always") }}
	c, err := service.NewConsumer(cons, js, rec, service.ConsumerConfig{Name: "worker", DeadLetters: dl}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := c.Start(ctx)
	defer func() { _ = stop(ctx) }()
	if _, err := js.Publish(ctx, "in.u-1", []byte("stuck")); err != nil {
		t.Fatal(err)
	}

	dead, err := js.Stream(ctx, "DEAD")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(metricsMaxDeliveries(t, reg)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no dead letter after max_deliver")
		}
		time.Sleep(10 * time.Millisecond)
	}
	rec.waitSeen(t, 2)
	msg, err := dead.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	reason := msg.Header.Get(events.ErrorHeader)
	for _, part := range []string{"max_deliver", "consumer worker", "2 times", "stream IN seq 1"} {
		if !strings.Contains(reason, part) {
			t.Errorf("Allot-Error = %q, want it to say %q", reason, part)
		}
	}
	if string(msg.Data) != "stuck" || msg.Subject != "dead.u-1" || msg.Header.Get("Allot-Original-Subject") != "in.u-1" || msg.Header.Get("Allot-Original-Seq") != "1" {
		t.Errorf("dead letter %s %q %v, want the message's body and origin", msg.Subject, msg.Data, msg.Header)
	}
	// Exactly once: the other replica's queue member got nothing, and a
	// second copy (the same advisory handled twice) would be dropped by id.
	for _, rjs := range replicas {
		if err := rjs.Conn().Flush(); err != nil {
			t.Fatal(err)
		}
	}
	info, err := dead.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("dead letters: %d, want exactly 1", info.State.Msgs)
	}
	if got := len(rec.bodies()); got != 2 {
		t.Errorf("handed over %d times, want max_deliver (2)", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(deadKinds) != 1 || deadKinds[0] != "max_deliver" {
		t.Errorf("dead letters counted as %v, want [max_deliver]", deadKinds)
	}
}

// metricsMaxDeliveries is the dead_lettered series of metrics.
func metricsMaxDeliveries(t *testing.T, reg *prometheus.Registry) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	for _, mf := range mfs {
		if mf.GetName() != "allot_test_consumer_max_deliveries_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == "dead_lettered" {
				c.Add(m.GetCounter().GetValue())
			}
		}
	}
	return c
}

// The default max_deliver outlasts a Redis outage of hours, not minutes.
func TestMaxDeliverOutlasts(t *testing.T) {
	d := service.DefaultConsumerTuning()
	got := service.MaxDeliverOutlasts(d.MaxDeliver, d.RetryDelay, time.Minute, d.AckWait)
	if want := 31*time.Second + 494*30*time.Second; got != want {
		t.Errorf("MaxDeliverOutlasts(defaults) = %v, want %v", got, want)
	}
	if got < 4*time.Hour {
		t.Errorf("the default max_deliver outlasts only %v", got)
	}
	if got := service.MaxDeliverOutlasts(2, time.Second, time.Minute, 30*time.Second); got != time.Second {
		t.Errorf("MaxDeliverOutlasts(2) = %v, want 1s", got)
	}
}

// max_deliver is finite: -1 (unlimited) and 1 (no retry at all) are refused.
func TestMaxDeliverValidate(t *testing.T) {
	for _, v := range []int{-1, 0, 1, 1_000_001} {
		tu := service.DefaultConsumerTuning()
		tu.MaxDeliver = v
		if err := tu.Validate("meter", time.Minute); err == nil || !strings.Contains(err.Error(), "meter.max_deliver: must be between 2 and 1000000") {
			t.Errorf("max_deliver %d: Validate = %v, want meter.max_deliver refused", v, err)
		}
	}
	if err := service.DefaultConsumerTuning().Validate("meter", time.Minute); err != nil {
		t.Errorf("defaults: %v", err)
	}
}
