package service

import (
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// inbox is what a consumer's client has taken in and no chunk has taken
// yet, in arrival order. Its reader never waits on it: while a chunk is
// slow, the client's own buffer would fill and a re-pull drop what
// arrives, to be redelivered only after the ack wait. The server hands
// out at most max_ack_pending unacked messages, so it stays bounded by
// that (and the redeliveries of what it holds past its ack wait, which a
// held chunk's wait prevents by keeping it all in progress).
type inbox struct {
	mu     sync.Mutex
	ready  *sync.Cond
	q      []jetstream.Msg
	head   int
	closed bool
}

func newInbox() *inbox {
	b := &inbox{}
	b.ready = sync.NewCond(&b.mu)
	return b
}

// push adds msg at the end.
func (b *inbox) push(msg jetstream.Msg) {
	b.mu.Lock()
	b.q = append(b.q, msg)
	b.mu.Unlock()
	b.ready.Signal()
}

// close says no more will come; next returns false once the rest is out.
func (b *inbox) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.ready.Broadcast()
}

// next returns the first message, waiting for one; false when the inbox
// is closed and empty.
func (b *inbox) next() (jetstream.Msg, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.head == len(b.q) && !b.closed {
		b.ready.Wait()
	}
	return b.take()
}

// tryNext returns the first message if there is one, without waiting.
func (b *inbox) tryNext() (jetstream.Msg, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.take()
}

// take pops the first message; b.mu is held.
func (b *inbox) take() (jetstream.Msg, bool) {
	if b.head == len(b.q) {
		return nil, false
	}
	msg := b.q[b.head]
	b.q[b.head] = nil
	b.head++
	if b.head == len(b.q) {
		b.q, b.head = b.q[:0], 0
	} else if b.head > 1024 && b.head*2 > len(b.q) {
		n := copy(b.q, b.q[b.head:])
		clear(b.q[n:])
		b.q, b.head = b.q[:n], 0
	}
	return msg, true
}

// snapshot returns the messages the inbox holds now, in order.
func (b *inbox) snapshot() []jetstream.Msg {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]jetstream.Msg(nil), b.q[b.head:]...)
}
