package service_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
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

// A pinned consumer stopped while messages keep coming leaves no pull of
// its open: it sends no more and waits for the last one to end, handling
// what that brings. An open pull would go on being handed messages on a
// NATS cluster, where the node leading the consumer learns late that the
// client is gone; they would come back only after their ack wait, after
// the next client had applied later ones. So once it has stopped, the
// server waits on no request of its, nothing is handed out unacked, and
// the pin is free for a standby at once. On one server and on a 3-node
// cluster with the client on a node that does not lead the consumer (the
// case that needs it).
func TestPinnedConsumerStopsWithNoPullOpen(t *testing.T) {
	t.Run("OneServer", func(t *testing.T) {
		e := newConsumerEnv(t)
		testPinnedStop(t, e.js, e.js)
	})
	t.Run("Cluster", func(t *testing.T) {
		servers := runNATSCluster(t, 3)
		admin := jsOf(t, servers[0].ClientURL())
		ctx := t.Context()
		st, err := admin.CreateStream(ctx, jetstream.StreamConfig{Name: "IN", Subjects: []string{"in.*"}, Replicas: 3})
		if err != nil {
			t.Fatal(err)
		}
		leader := st.CachedInfo().Cluster.Leader
		for _, s := range servers {
			if s.Name() != leader {
				testPinnedStop(t, admin, jsOf(t, s.ClientURL()))
				return
			}
		}
		t.Fatalf("no server but the stream's leader %q", leader)
	})
}

// testPinnedStop runs a pinned consumer of stream IN on js under a
// stream of messages published through admin, stops it, and checks what
// it left at the server.
func testPinnedStop(t *testing.T, admin, js jetstream.JetStream) {
	ctx := t.Context()
	cfg := service.PinnedConsumer(jetstream.ConsumerConfig{Durable: "pinned", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute}, "workers", time.Minute)
	if _, err := admin.CreateOrUpdateConsumer(ctx, "IN", cfg); err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(ctx, "IN", "pinned")
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	rec.decide = func(string, uint64) service.Outcome { return service.Ack() }
	c, err := service.NewConsumer(cons, js, &rec, service.ConsumerConfig{Name: "t", Batch: 50, PullExpiry: 30 * time.Second, PriorityGroup: "workers"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := c.Start(ctx)
	// Publish until the consumer has been stopped, a message at a time so
	// that its pulls are open and waiting when it stops.
	pctx, stopPublishing := context.WithCancel(ctx)
	var published sync.WaitGroup
	published.Go(func() {
		for i := 0; pctx.Err() == nil; i++ {
			if _, err := admin.Publish(pctx, "in.x", []byte(strconv.Itoa(i))); err != nil && pctx.Err() == nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	rec.waitSeen(t, 200)
	began := time.Now()
	if err := stop(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	stopPublishing()
	published.Wait()
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumWaiting != 0 {
		t.Errorf("%d pull requests still open at the server after the stop", info.NumWaiting)
	}
	if info.NumAckPending != 0 {
		t.Errorf("%d messages handed out and not acked after the stop", info.NumAckPending)
	}
	for _, g := range info.PriorityGroups {
		if g.PinnedClientID != "" {
			t.Errorf("group %s still pinned to %s after the stop", g.Group, g.PinnedClientID)
		}
	}
	// The last pull is bounded: a stop waits a second for it, not the
	// 30 s PullExpiry.
	if took > 5*time.Second {
		t.Errorf("the stop took %v", took)
	}
}

// A pinned consumer pulls one request at a time: when NATS goes away
// and comes back (the same store), it goes on pulling and handles what
// is published after the restart, each once, in order.
func TestPinnedConsumerPullsOnAfterNATSRestarts(t *testing.T) {
	dir := t.TempDir()
	s := runNATS(t, server.Options{JetStream: true, StoreDir: dir})
	port := portOf(t, s.Addr().String())
	js := jsOf(t, s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	ctx := t.Context()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "IN", Subjects: []string{"in.*"}}); err != nil {
		t.Fatal(err)
	}
	cfg := service.PinnedConsumer(jetstream.ConsumerConfig{Durable: "pinned", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 5 * time.Second}, "workers", time.Minute)
	cons, err := js.CreateOrUpdateConsumer(ctx, "IN", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	rec.decide = func(string, uint64) service.Outcome { return service.Ack() }
	c, err := service.NewConsumer(cons, js, &rec, service.ConsumerConfig{Name: "t", Batch: 10, PriorityGroup: "workers"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := c.Start(ctx)
	t.Cleanup(func() { _ = stop(context.Background()) })
	publish := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if _, err := js.Publish(ctx, "in.x", []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(0, 50)
	rec.waitSeen(t, 50)

	s.Shutdown()
	s.WaitForShutdown()
	time.Sleep(3 * time.Second) // down for a while: pulls fail or wait meanwhile
	runNATS(t, server.Options{JetStream: true, StoreDir: dir, Port: port})
	publish(50, 100)
	rec.waitSeen(t, 100)

	want := make([]string, 100)
	for i := range want {
		want[i] = strconv.Itoa(i)
	}
	if diff := cmp.Diff(want, rec.bodies()); diff != "" {
		t.Errorf("handled (-want +got), want each once in order:\n%s", diff)
	}
}
