package service_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/allot/allot/pkg/service"
)

// consumerEnv is an embedded JetStream with a stream IN (in.*), a dead
// letter stream DEAD (dead.*) and a durable pull consumer on IN.
type consumerEnv struct {
	js   jetstream.JetStream
	cons jetstream.Consumer
}

func newConsumerEnv(t *testing.T) consumerEnv { return newConsumerEnvAckWait(t, 2*time.Second) }

func newConsumerEnvAckWait(t *testing.T, ackWait time.Duration) consumerEnv {
	t.Helper()
	s := runNATS(t, server.Options{JetStream: true, StoreDir: t.TempDir()})
	js := jsOf(t, s.ClientURL())
	ctx := t.Context()
	for name, subj := range map[string]string{"IN": "in.*", "DEAD": "dead.*"} {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subj}}); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "IN", jetstream.ConsumerConfig{
		Durable: "worker", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxDeliver: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	return consumerEnv{js: js, cons: cons}
}

func (e consumerEnv) publish(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		if _, err := e.js.Publish(t.Context(), "in."+strconv.Itoa(i%3), []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
}

// settled waits until the consumer has nothing pending or unacked.
func (e consumerEnv) settled(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := e.cons.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer not settled: %d pending, %d unacked", info.NumPending, info.NumAckPending)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runUntilSettled runs c until the consumer has nothing pending or
// unacked, then stops it (the drain included).
func (e consumerEnv) runUntilSettled(t *testing.T, c *service.Consumer) {
	t.Helper()
	stop := c.Start(t.Context())
	e.settled(t)
	if err := stop(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// recorder is a handler that records what it was handed.
type recorder struct {
	mu     sync.Mutex
	seen   []string // bodies, in the order handed over
	chunks []int
	decide func(body string, delivery uint64) service.Outcome
	fail   func() error // non-nil error: the backend is away
}

func (r *recorder) HandleChunk(_ context.Context, msgs []jetstream.Msg) ([]service.Outcome, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		if err := r.fail(); err != nil {
			out := make([]service.Outcome, len(msgs))
			for i, m := range msgs {
				if string(m.Data()) == "bad" {
					out[i] = service.Dead("invalid", "not a number")
				}
			}
			return out, err
		}
	}
	r.chunks = append(r.chunks, len(msgs))
	out := make([]service.Outcome, len(msgs))
	for i, m := range msgs {
		r.seen = append(r.seen, string(m.Data()))
		if r.decide != nil {
			meta, _ := m.Metadata()
			out[i] = r.decide(string(m.Data()), meta.NumDelivered)
		}
	}
	return out, nil
}

// waitSeen waits until the handler has been handed n messages.
func (r *recorder) waitSeen(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(r.bodies()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("handed over %v, want %d messages", r.bodies(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *recorder) bodies() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

func seq(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = strconv.Itoa(i)
	}
	return out
}

// Every message is handed over once, in stream order, in chunks of at
// most Batch, and acked.
func TestConsumerHandsOverInOrder(t *testing.T) {
	e := newConsumerEnv(t)
	e.publish(t, 1000)
	rec := &recorder{}
	reg := prometheus.NewPedanticRegistry()
	metrics, err := service.NewConsumerMetrics(reg, "allot_test", "Messages")
	if err != nil {
		t.Fatal(err)
	}
	c, err := service.NewConsumer(e.cons, e.js, rec, service.ConsumerConfig{Name: "t", Batch: 64, Metrics: metrics}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.runUntilSettled(t, c)
	if diff := cmp.Diff(seq(1000), rec.bodies()); diff != "" {
		t.Errorf("handed over (-want +got):\n%s", diff)
	}
	for _, n := range rec.chunks {
		if n < 1 || n > 64 {
			t.Errorf("a chunk of %d, want 1..64", n)
		}
	}
	if n := testutil.CollectAndCount(reg, "allot_test_batch_size"); n != 1 {
		t.Errorf("batch size series: %d", n)
	}
	if got := testutil.ToFloat64(metricsPending(t, reg)); got != 0 {
		t.Errorf("pending after the last chunk = %v, want 0", got)
	}
}

func metricsPending(t *testing.T, reg *prometheus.Registry) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "allot_test_consumer_pending" {
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
			g.Set(mf.GetMetric()[0].GetGauge().GetValue())
			return g
		}
	}
	t.Fatal("no allot_test_consumer_pending")
	return nil
}

// A Dead message goes to the dead letters with its reason and origin, once
// however often it was delivered, and is acked; Retry redelivers.
func TestConsumerDeadLettersAndRetries(t *testing.T) {
	e := newConsumerEnv(t)
	for _, body := range []string{"ok", "bad", "again", "ok2"} {
		if _, err := e.js.Publish(t.Context(), "in.u-1", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	var counted sync.Map
	rec := &recorder{decide: func(body string, delivery uint64) service.Outcome {
		switch {
		case body == "bad":
			return service.Dead("invalid", "data: not a number")
		case body == "again" && delivery == 1:
			return service.Retry(10*time.Millisecond, "try later")
		}
		return service.Ack()
	}}
	c, err := service.NewConsumer(e.cons, e.js, rec, service.ConsumerConfig{
		Name: "t",
		DeadLetters: &service.DeadLetters{
			Subject: func(s string) string { return "dead." + s[len("in."):] },
			Stream:  "IN",
			Counted: func(kind string) { n, _ := counted.LoadOrStore(kind, new(atomic.Int64)); n.(*atomic.Int64).Add(1) },
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := c.Start(t.Context())
	rec.waitSeen(t, 5)
	e.settled(t)
	if err := stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"ok", "bad", "again", "ok2", "again"}, rec.bodies()); diff != "" {
		t.Errorf("handed over (-want +got):\n%s", diff)
	}
	dead, err := e.js.Stream(t.Context(), "DEAD")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := dead.GetMsg(t.Context(), 1)
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	want := map[string]string{"Allot-Error": "data: not a number", "Allot-Original-Subject": "in.u-1", "Allot-Original-Seq": "2", "Nats-Msg-Id": "dead.IN.2"}
	for k, v := range want {
		if got := msg.Header.Get(k); got != v {
			t.Errorf("dead letter %s = %q, want %q", k, got, v)
		}
	}
	if msg.Subject != "dead.u-1" || string(msg.Data) != "bad" {
		t.Errorf("dead letter %s %q", msg.Subject, msg.Data)
	}
	if n, ok := counted.Load("invalid"); !ok || n.(*atomic.Int64).Load() != 1 {
		t.Errorf("dead letters counted: %v", n)
	}
}

// While the backend is away the consumer naks with a growing delay,
// stores the refusals anyway, asks Ready before resuming, and in the end
// hands over every message: nothing is lost.
func TestConsumerPausesWhileTheBackendIsAway(t *testing.T) {
	e := newConsumerEnv(t)
	for _, body := range []string{"1", "bad", "2", "3"} {
		if _, err := e.js.Publish(t.Context(), "in.u-1", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	var down atomic.Bool
	down.Store(true)
	var failures, readies atomic.Int64
	rec := &recorder{decide: func(body string, _ uint64) service.Outcome {
		if body == "bad" {
			return service.Dead("invalid", "not a number")
		}
		return service.Ack()
	}, fail: func() error {
		if down.Load() {
			failures.Add(1)
			return errors.New("redis: connection refused")
		}
		return nil
	}}
	c, err := service.NewConsumer(e.cons, e.js, rec, service.ConsumerConfig{
		Name: "t", RetryDelay: 20 * time.Millisecond, MaxRetryDelay: 80 * time.Millisecond,
		Ready: func(context.Context) error {
			if readies.Add(1) >= 3 {
				down.Store(false)
				return nil
			}
			return errors.New("still down")
		},
		DeadLetters: &service.DeadLetters{Subject: func(string) string { return "dead.u-1" }, Stream: "IN"},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := c.Start(t.Context())
	// Every message is handed over once the backend is back; "bad" only
	// if it was not in a chunk that met the failure (then it is already
	// a dead letter).
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := map[string]bool{}
		for _, b := range rec.bodies() {
			got[b] = true
		}
		if got["1"] && got["2"] && got["3"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handed over %v; want 1, 2 and 3 once the backend was back", rec.bodies())
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.settled(t)
	if err := stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if failures.Load() == 0 || readies.Load() < 3 {
		t.Errorf("failures %d, readiness probes %d: the consumer did not pause", failures.Load(), readies.Load())
	}
	counts := map[string]int{}
	for _, b := range rec.bodies() {
		counts[b]++
	}
	if counts["1"] != 1 || counts["2"] != 1 || counts["3"] != 1 || counts["bad"] > 1 {
		t.Errorf("handed over once the backend was back: %v; want 1, 2, 3 once each", counts)
	}
	if info, _ := e.js.Stream(t.Context(), "DEAD"); info == nil {
		t.Fatal("no DEAD stream")
	} else if si, _ := info.Info(t.Context()); si.State.Msgs != 1 {
		t.Errorf("%d dead letters, want the one refusal stored once", si.State.Msgs)
	}
}

// A handler that returns the wrong number of outcomes loses nothing: the
// chunk is redelivered.
func TestConsumerWrongOutcomeCountRedelivers(t *testing.T) {
	e := newConsumerEnv(t)
	e.publish(t, 3)
	var calls atomic.Int64
	h := service.ChunkHandlerFunc(func(_ context.Context, msgs []jetstream.Msg) ([]service.Outcome, error) {
		if calls.Add(1) == 1 {
			return nil, nil
		}
		return make([]service.Outcome, len(msgs)), nil
	})
	c, err := service.NewConsumer(e.cons, e.js, h, service.ConsumerConfig{Name: "t", RetryDelay: 10 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.runUntilSettled(t, c)
	if calls.Load() < 2 {
		t.Errorf("%d calls: the chunk was not redelivered", calls.Load())
	}
}

// Stop drains: every message handed over is settled before stop returns
// (the next run never sees it again), and what the client held but had
// not handed over is redelivered to the next run once its ack wait ends:
// nothing is lost or handed over twice across a stop.
func TestConsumerStopDrains(t *testing.T) {
	e := newConsumerEnv(t)
	e.publish(t, 200)
	started := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	handled := map[string]int{}
	h := service.ChunkHandlerFunc(func(_ context.Context, msgs []jetstream.Msg) ([]service.Outcome, error) {
		once.Do(func() { close(started); <-release })
		mu.Lock()
		for _, m := range msgs {
			handled[string(m.Data())]++
		}
		mu.Unlock()
		return make([]service.Outcome, len(msgs)), nil
	})
	c, err := service.NewConsumer(e.cons, e.js, h, service.ConsumerConfig{Name: "t", Batch: 50}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := c.Start(t.Context())
	<-started
	errc := make(chan error, 1)
	go func() { errc <- stop(t.Context()) }()
	time.Sleep(50 * time.Millisecond)
	close(release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// The next run gets the rest, and what was delivered but never
	// handed over once its ack wait ends.
	c2, err := service.NewConsumer(e.cons, e.js, h, service.ConsumerConfig{Name: "t2", Batch: 50}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop2 := c2.Start(t.Context())
	e.settled(t)
	if err := stop2(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, body := range seq(200) {
		if handled[body] != 1 {
			t.Errorf("message %s handed over %d times, want once", body, handled[body])
		}
	}
}

func TestNewConsumerRefusesBadUse(t *testing.T) {
	e := newConsumerEnv(t)
	h := service.ChunkHandlerFunc(func(context.Context, []jetstream.Msg) ([]service.Outcome, error) { return nil, nil })
	for name, try := range map[string]func() error{
		"no consumer": func() error { _, err := service.NewConsumer(nil, e.js, h, service.ConsumerConfig{}, nil); return err },
		"no handler": func() error {
			_, err := service.NewConsumer(e.cons, e.js, nil, service.ConsumerConfig{}, nil)
			return err
		},
		"no js": func() error { _, err := service.NewConsumer(e.cons, nil, h, service.ConsumerConfig{}, nil); return err },
		"dead letters without subject": func() error {
			_, err := service.NewConsumer(e.cons, e.js, h, service.ConsumerConfig{DeadLetters: &service.DeadLetters{}}, nil)
			return err
		},
	} {
		if err := try(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := service.NewConsumerMetrics(reg, "allot_x", "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := service.NewConsumerMetrics(reg, "allot_x", "x"); err == nil {
		t.Error("a second consumer's metrics under the same prefix were accepted")
	}
}

// preparer records when each chunk was prepared and handled.
type preparer struct {
	mu       sync.Mutex
	prepared []string // first body of each chunk, as prepared
	handled  []string // every body, as handled
	ahead    int      // chunks prepared while the one before was being handled
	busy     bool
	decide   func(body string) service.Outcome
}

func (p *preparer) HandleChunk(ctx context.Context, msgs []jetstream.Msg) ([]service.Outcome, error) {
	return p.PrepareChunk(msgs)(ctx)
}

func (p *preparer) PrepareChunk(msgs []jetstream.Msg) func(context.Context) ([]service.Outcome, error) {
	p.mu.Lock()
	p.prepared = append(p.prepared, string(msgs[0].Data()))
	if p.busy {
		p.ahead++
	}
	p.mu.Unlock()
	bodies := make([]string, len(msgs))
	for i, m := range msgs {
		bodies[i] = string(m.Data())
	}
	return func(context.Context) ([]service.Outcome, error) {
		p.mu.Lock()
		p.busy = true
		p.mu.Unlock()
		time.Sleep(5 * time.Millisecond) // the backend's round trip
		p.mu.Lock()
		defer p.mu.Unlock()
		p.busy = false
		out := make([]service.Outcome, len(bodies))
		for i, b := range bodies {
			p.handled = append(p.handled, b)
			if p.decide != nil {
				out[i] = p.decide(b)
			}
		}
		return out, nil
	}
}

// A ChunkPreparer's next chunk is prepared while the one before is
// handled; chunks are still handled once each, in stream order, and
// settled as the handler says.
func TestConsumerPreparesTheNextChunkAhead(t *testing.T) {
	e := newConsumerEnv(t)
	e.publish(t, 600)
	p := &preparer{decide: func(body string) service.Outcome {
		if body == "7" {
			return service.Dead("invalid", "seven")
		}
		return service.Ack()
	}}
	c, err := service.NewConsumer(e.cons, e.js, p, service.ConsumerConfig{Name: "t", Batch: 20,
		DeadLetters: &service.DeadLetters{Subject: func(string) string { return "dead.t" }, Stream: "IN"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.runUntilSettled(t, c)
	p.mu.Lock()
	defer p.mu.Unlock()
	if diff := cmp.Diff(seq(600), p.handled); diff != "" {
		t.Errorf("handled (-want +got):\n%s", diff)
	}
	if p.ahead == 0 {
		t.Errorf("no chunk of %d was prepared while the one before was handled", len(p.prepared))
	}
	dead, err := e.js.Stream(t.Context(), "DEAD")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := dead.Info(t.Context()); err != nil || info.State.Msgs != 1 {
		t.Errorf("dead letters: %+v, %v; want 1", info, err)
	}
}
