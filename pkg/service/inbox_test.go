package service

import (
	"strconv"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// fakeMsg is a jetstream.Msg told apart by its body alone.
type fakeMsg struct {
	jetstream.Msg
	body string
}

func (m fakeMsg) Data() []byte { return []byte(m.body) }

// The inbox hands out what was pushed, in order, once each, across its
// compactions; next waits for a push and ends once closed and empty;
// snapshot shows what is held without taking it.
func TestInboxKeepsOrder(t *testing.T) {
	b := newInbox()
	if _, ok := b.tryNext(); ok {
		t.Fatal("an empty inbox handed out a message")
	}
	const n = 5000
	var pusher sync.WaitGroup
	pusher.Go(func() {
		for i := range n {
			b.push(fakeMsg{body: strconv.Itoa(i)})
		}
	})
	got := 0
	for got < n {
		msg, ok := b.next()
		if !ok {
			t.Fatal("next ended before the inbox was closed")
		}
		if body := string(msg.Data()); body != strconv.Itoa(got) {
			t.Fatalf("message %d is %s", got, body)
		}
		got++
		if got%700 == 0 { // take a few without waiting, leave the rest
			for range 3 {
				if msg, ok := b.tryNext(); ok {
					if body := string(msg.Data()); body != strconv.Itoa(got) {
						t.Fatalf("message %d is %s", got, body)
					}
					got++
				}
			}
		}
	}
	pusher.Wait()
	b.push(fakeMsg{body: "a"})
	b.push(fakeMsg{body: "b"})
	if snap := b.snapshot(); len(snap) != 2 || string(snap[0].Data()) != "a" {
		t.Errorf("snapshot = %d messages, want a and b", len(snap))
	}
	b.close()
	for _, want := range []string{"a", "b"} {
		if msg, ok := b.next(); !ok || string(msg.Data()) != want {
			t.Errorf("after close: %v %v, want %s", msg, ok, want)
		}
	}
	if _, ok := b.next(); ok {
		t.Error("next handed out a message from a closed, empty inbox")
	}
}
