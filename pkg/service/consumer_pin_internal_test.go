package service

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A pinned client that stops while a message handed to it under its pin
// is unacked (it never arrived: a NATS cluster's consumer leader can
// deliver to a pull that has just ended) keeps the pin, so that message
// goes to the next client before anything after it once the pinned TTL
// runs out; with nothing unacked it gives the pin up at once.
func TestUnpinKeepsThePinOverMessagesOnTheirWay(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(s.Shutdown)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx := t.Context()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "IN", Subjects: []string{"in.*"}}); err != nil {
		t.Fatal(err)
	}
	cfg := PinnedConsumer(jetstream.ConsumerConfig{Durable: "pinned", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute}, "g", time.Minute)
	cons, err := js.CreateOrUpdateConsumer(ctx, "IN", cfg)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := js.Publish(ctx, "in.a", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	c, err := NewConsumer(cons, js, ChunkHandlerFunc(nil), ConsumerConfig{Name: "t", PriorityGroup: "g"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// This client's pulls (the handle carries the pin id): the first
	// message handled and acked, the second handed out and left unacked.
	fetch := func() jetstream.Msg {
		t.Helper()
		b, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second), jetstream.FetchPriorityGroup("g"))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			return m
		}
		t.Fatalf("no message: %v", b.Error())
		return nil
	}
	first := fetch()
	c.notePin(first)
	if err := first.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	second := fetch()
	pinned := func() string {
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range info.PriorityGroups {
			return g.PinnedClientID
		}
		return ""
	}
	c.unpin(ctx)
	if id := pinned(); id == "" || id != *c.pin.Load() {
		t.Fatalf("pin %q after unpin with a message unacked, want this client's %q kept", id, *c.pin.Load())
	}
	if err := second.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	c.unpin(ctx)
	if id := pinned(); id != "" {
		t.Errorf("pin %q after unpin with everything acked, want none", id)
	}
}
