package service_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
)

// A chunk that meets an outage longer than the ack wait is held and
// handled again once the backend answers, before anything after it: the
// messages come out in stream order, each delivered once (the held chunk
// and everything taken in behind it kept in progress, never
// redelivered). A consumer that nak'ed the chunk would hand the chunks
// after it over first.
func TestConsumerHoldsAChunkThroughAnOutage(t *testing.T) {
	t.Run("Handler", func(t *testing.T) { testHoldThroughAnOutage(t, false) })
	// The chunk prepared while the held one waits is kept in progress too.
	t.Run("Preparer", func(t *testing.T) { testHoldThroughAnOutage(t, true) })
}

// preparing is a recorder as a ChunkPreparer that prepares nothing.
type preparing struct{ *recorder }

func (p preparing) PrepareChunk(msgs []jetstream.Msg) func(context.Context) ([]service.Outcome, error) {
	return func(ctx context.Context) ([]service.Outcome, error) { return p.HandleChunk(ctx, msgs) }
}

func testHoldThroughAnOutage(t *testing.T, prepare bool) {
	const ackWait = time.Second
	e := newConsumerEnvAckWait(t, ackWait)
	e.publish(t, 12)
	start := time.Now()
	var failures, readies atomic.Int64
	deliveries := map[string]uint64{}
	var mu sync.Mutex
	rec := &recorder{
		decide: func(body string, delivery uint64) service.Outcome {
			mu.Lock()
			defer mu.Unlock()
			deliveries[body] = max(deliveries[body], delivery)
			return service.Ack()
		},
		fail: func() error {
			// Down for two and a half ack waits from the start.
			if time.Since(start) < 5*ackWait/2 {
				failures.Add(1)
				return errors.New("redis: connection refused")
			}
			return nil
		},
	}
	var h service.ChunkHandler = rec
	if prepare {
		h = preparing{rec}
	}
	c, err := service.NewConsumer(e.cons, e.js, h, service.ConsumerConfig{
		Name: "t", Batch: 3, AckWait: ackWait, RetryDelay: 50 * time.Millisecond, MaxRetryDelay: 100 * time.Millisecond,
		Ready: func(context.Context) error {
			readies.Add(1)
			if time.Since(start) < 5*ackWait/2 {
				return errors.New("still down")
			}
			return nil
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.runUntilSettled(t, c)
	if diff := cmp.Diff(seq(12), rec.bodies()); diff != "" {
		t.Errorf("handed over (-want +got), want stream order, each once:\n%s", diff)
	}
	// The held chunk, the one prepared after it and what the client had
	// taken in behind them outlived their ack wait: kept in progress,
	// none was redelivered.
	for body, d := range deliveries {
		if d != 1 {
			t.Errorf("message %s delivered %d times, want once: it was not kept in progress", body, d)
		}
	}
	if failures.Load() != 1 || readies.Load() < 3 {
		t.Errorf("%d failed attempts, %d readiness probes: want one failure, then probes until the backend is back", failures.Load(), readies.Load())
	}
}

// A chunk that keeps failing while Ready says the backend is up is handed
// over HeldTries times, then nak'ed so the stream goes on; it comes again
// and is handled once the failure passes.
func TestConsumerNaksAChunkThatFailsWithTheBackendUp(t *testing.T) {
	e := newConsumerEnv(t)
	e.publish(t, 1) // one message, one chunk
	var attempts atomic.Int64
	var redelivered atomic.Bool
	rec := &recorder{
		decide: func(body string, delivery uint64) service.Outcome {
			if delivery > 1 {
				redelivered.Store(true)
			}
			return service.Ack()
		},
		fail: func() error {
			if attempts.Add(1) <= service.HeldTries {
				return errors.New("ERR something in this chunk")
			}
			return nil
		},
	}
	c, err := service.NewConsumer(e.cons, e.js, rec, service.ConsumerConfig{
		Name: "t", RetryDelay: 20 * time.Millisecond, MaxRetryDelay: 40 * time.Millisecond,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.runUntilSettled(t, c)
	if diff := cmp.Diff(seq(1), rec.bodies()); diff != "" {
		t.Errorf("handed over (-want +got):\n%s", diff)
	}
	if got := attempts.Load(); got != service.HeldTries+1 {
		t.Errorf("%d attempts, want %d held, then the redelivery", got, service.HeldTries+1)
	}
	if !redelivered.Load() {
		t.Error("the chunk was handled without a redelivery: it was not nak'ed after HeldTries")
	}
}

// Two consumers on one pinned consumer: one handles everything while it
// runs, the other stands by; stopped, the first gives its pin up and the
// second takes over at once (well inside the pinned TTL), and every
// message is handled once, in stream order across the handover.
func TestPinnedConsumerHasOneReaderAtATime(t *testing.T) {
	e := newConsumerEnv(t)
	ctx := t.Context()
	const ttl = 30 * time.Second
	cfg := service.PinnedConsumer(jetstream.ConsumerConfig{Durable: "pinned", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 2 * time.Second}, "workers", ttl)
	if _, err := e.js.CreateOrUpdateConsumer(ctx, "IN", cfg); err != nil {
		t.Fatal(err)
	}
	var all recorder
	recs := [2]*recorder{{}, {}}
	stops := [2]func(context.Context) error{}
	for i := range recs {
		recs[i].decide = func(body string, _ uint64) service.Outcome {
			all.mu.Lock()
			all.seen = append(all.seen, body)
			all.mu.Unlock()
			return service.Ack()
		}
		cons, err := e.js.Consumer(ctx, "IN", "pinned")
		if err != nil {
			t.Fatal(err)
		}
		c, err := service.NewConsumer(cons, e.js, recs[i], service.ConsumerConfig{Name: "t", Batch: 7, PullExpiry: time.Second, PriorityGroup: "workers"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		stops[i] = c.Start(ctx)
		t.Cleanup(func() { _ = stops[i](context.Background()) })
	}
	e.publish(t, 300)
	all.waitSeen(t, 300)
	first, standby := 0, 1
	if len(recs[1].bodies()) > 0 {
		first, standby = 1, 0
	}
	if n := len(recs[standby].bodies()); n != 0 {
		t.Fatalf("both consumers handled messages (%d and %d): the pin let two read at once", len(recs[first].bodies()), n)
	}
	if err := stops[first](ctx); err != nil {
		t.Fatal(err)
	}
	handover := time.Now()
	for i := range 300 {
		if _, err := e.js.Publish(ctx, "in.x", []byte(seq(600)[300+i])); err != nil {
			t.Fatal(err)
		}
	}
	all.waitSeen(t, 600)
	if took := time.Since(handover); took > ttl/2 {
		t.Errorf("the standby took over after %v: the pin was not given up", took)
	}
	if n := len(recs[standby].bodies()); n != 300 {
		t.Errorf("the standby handled %d messages after the handover, want 300", n)
	}
	if diff := cmp.Diff(seq(600), all.bodies()); diff != "" {
		t.Errorf("handled (-want +got), want stream order, each once:\n%s", diff)
	}
}
