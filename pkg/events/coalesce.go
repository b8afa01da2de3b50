package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"
)

// BatchOptions turns on and sizes a [Client]'s batching: Check, Credit,
// Credits and Authorize calls in flight at the same moment travel
// together as one batch message (many.go) instead of one message each.
// Each call still gets its own answer and its own error.
type BatchOptions struct {
	// Enabled turns batching on. Off, every call is its own request, as
	// a raw NATS user's is.
	Enabled bool
	// MaxWait is the longest a call waits for others to join its batch
	// (default 200µs). A call made while fewer than MaxInFlight messages
	// of its endpoint are in flight does not wait: it goes at once,
	// taking along the calls made at the same moment (it yields to them
	// once first), and alone, on the endpoint's own subject, when there
	// are none.
	MaxWait time.Duration
	// MaxInFlight is how many messages (calls alone or batches) of one
	// endpoint may be in flight before calls wait to be batched (default
	// 2). When one is answered, what waits goes at once, as one batch; so
	// under load a batch holds what arrived during a round trip, and
	// batches grow with the load instead of with the wait.
	MaxInFlight int
	// MaxSize sends a batch as soon as it holds this many calls
	// (default 64, at most MaxBatchRequests).
	MaxSize int
	// PerUID batches only calls for the same uid, on the batch subjects
	// of that uid's scope. A key bound to some uids needs it: it may not
	// send batches of ScopeAll, which hold any uid's calls.
	PerUID bool
}

// Batching defaults.
const (
	DefaultBatchWait = 200 * time.Microsecond
	DefaultBatchSize = 64
	// DefaultBatchInFlight: see BatchOptions.MaxInFlight.
	DefaultBatchInFlight = 2
	// batchOffFor is how long a lane sends calls alone after its batch
	// subject had no responders (a service older than batching).
	batchOffFor = 30 * time.Second
)

func (o BatchOptions) withDefaults() BatchOptions {
	if o.MaxWait <= 0 {
		o.MaxWait = DefaultBatchWait
	}
	if o.MaxSize <= 0 {
		o.MaxSize = DefaultBatchSize
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultBatchInFlight
	}
	o.MaxSize = min(o.MaxSize, MaxBatchRequests)
	return o
}

// coalescer gathers a client's calls into batches, one lane per batch
// subject.
type coalescer struct {
	c     *Client
	opts  BatchOptions
	mu    sync.Mutex
	lanes map[string]*lane
}

// lane is the calls of one batch subject: those in flight (sent alone or
// in a batch, not yet answered) and those waiting to go.
type lane struct {
	subject  string // the batch subject
	inFlight int    // messages sent, not yet answered
	pending  []*batchCall
	size     int // bytes of the pending calls' bodies
	timer    *time.Timer
	off      time.Time // until then, calls go alone
	// gathering is set while a call with room in flight lets others
	// join it before it goes.
	gathering bool
}

// batchCall is one call waiting for its answer.
type batchCall struct {
	single   string // the subject of the call alone
	uid      string
	body     []byte
	deadline time.Time
	done     chan struct{}
	// Set before done is closed:
	result   BatchResult
	err      error
	fallback bool // the batch found no responders: ask alone
}

// do answers one call: at once when its lane has room in flight (with
// the calls made at the same moment), else in the lane's next batch.
func (b *coalescer) do(ctx context.Context, single, batch string, uid string, req, reply any) error {
	ctx, cancel := b.c.bound(ctx)
	defer cancel()
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("events: encode request for %s: %w", single, err)
	}
	b.mu.Lock()
	ln := b.lanes[batch]
	if ln == nil {
		ln = &lane{subject: batch}
		b.lanes[batch] = ln
	}
	if time.Now().Before(ln.off) {
		ln.inFlight++
		b.mu.Unlock()
		err := b.c.exchange(ctx, single, nil, body, reply)
		b.answered(ln)
		return err
	}
	call := &batchCall{single: single, uid: uid, body: body, done: make(chan struct{})}
	call.deadline, _ = ctx.Deadline()
	ln.pending = append(ln.pending, call)
	ln.size += len(body) + len(uid) + 24
	switch {
	case len(ln.pending) >= b.opts.MaxSize || ln.size >= MaxBatchBytes/2:
		calls := b.take(ln)
		b.mu.Unlock()
		b.send(ln, calls)
	case ln.gathering:
		// The call gathering the next message takes this one along.
		b.mu.Unlock()
	case ln.inFlight < b.opts.MaxInFlight:
		// There is room in flight: this call goes at once, and takes
		// along the calls made at the same moment (those answered
		// together with it in the last batch, say), which it lets in
		// first by yielding once. Alone, it goes alone.
		ln.gathering = true
		b.mu.Unlock()
		runtime.Gosched()
		b.mu.Lock()
		ln.gathering = false
		calls := b.take(ln)
		b.mu.Unlock()
		if len(calls) > 0 {
			b.send(ln, calls)
		}
	case ln.timer == nil:
		ln.timer = time.AfterFunc(b.opts.MaxWait, func() { b.flush(ln) })
		b.mu.Unlock()
	default:
		b.mu.Unlock()
	}
	select {
	case <-call.done:
	case <-ctx.Done():
		b.abandon(ln, call)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w: no reply on %s: %w", ErrTimeout, single, ctx.Err())
		}
		return fmt.Errorf("events: request %s: %w", single, ctx.Err())
	}
	switch {
	case call.fallback:
		return b.c.exchange(ctx, single, nil, body, reply)
	case call.err != nil:
		return call.err
	}
	if err := call.result.Err(); err != nil {
		_ = json.Unmarshal(call.result.Body, reply) // best effort: 429s carry the decision
		return err
	}
	if err := unmarshalReply(call.result.Body, reply); err != nil {
		return fmt.Errorf("events: decode reply from %s: %w", batch, err)
	}
	return nil
}

// take empties ln's pending calls into a batch about to be sent, which
// counts as in flight from now. b.mu is held.
func (b *coalescer) take(ln *lane) []*batchCall {
	if ln.timer != nil {
		ln.timer.Stop()
		ln.timer = nil
	}
	calls := ln.pending
	ln.pending, ln.size = nil, 0
	if len(calls) > 0 {
		ln.inFlight++
	}
	return calls
}

// flush sends what ln holds when its wait is over.
func (b *coalescer) flush(ln *lane) {
	b.mu.Lock()
	calls := b.take(ln)
	b.mu.Unlock()
	if len(calls) > 0 {
		b.send(ln, calls)
	}
}

// abandon takes a call whose caller stopped waiting out of its lane, if
// it has not been sent yet.
func (b *coalescer) abandon(ln *lane, call *batchCall) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, c := range ln.pending {
		if c == call {
			ln.pending = append(ln.pending[:i], ln.pending[i+1:]...)
			ln.size -= len(call.body) + len(call.uid) + 24
			break
		}
	}
	if len(ln.pending) == 0 && ln.timer != nil {
		ln.timer.Stop()
		ln.timer = nil
	}
	b.settle(ln, false)
}

// answered notes a message of ln answered, and sends what waits, now
// that there is room in flight.
func (b *coalescer) answered(ln *lane) {
	b.mu.Lock()
	b.settle(ln, true)
	var calls []*batchCall
	if len(ln.pending) > 0 && ln.inFlight < b.opts.MaxInFlight {
		calls = b.take(ln)
	}
	b.mu.Unlock()
	if len(calls) > 0 {
		go b.send(ln, calls)
	}
}

// settle notes a message of ln answered, when answered, and drops an
// idle per-uid lane. b.mu is held.
func (b *coalescer) settle(ln *lane, answered bool) {
	if answered {
		ln.inFlight--
	}
	if b.opts.PerUID && ln.inFlight == 0 && len(ln.pending) == 0 && ln.off.IsZero() {
		delete(b.lanes, ln.subject)
	}
}

// send sends calls as one batch message and hands each its result. A
// batch alone is sent on its endpoint's subject instead: no wrapping for
// nothing.
func (b *coalescer) send(ln *lane, calls []*batchCall) {
	defer func() {
		// The lane first: a caller that has its answer finds the lane
		// settled (its room in flight back, an idle per-uid lane gone).
		b.answered(ln)
		for _, c := range calls {
			close(c.done)
		}
	}()
	deadline := time.Now().Add(b.c.timeout)
	if len(calls) == 1 {
		c := calls[0]
		if c.deadline.After(deadline) {
			deadline = c.deadline
		}
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		var raw json.RawMessage
		if err := b.c.exchange(ctx, c.single, nil, c.body, &raw); err != nil {
			var serr *ServiceError
			if !errors.As(err, &serr) {
				c.err = err
				return
			}
			c.result = BatchResult{Status: serr.Status, Body: raw}
			return
		}
		c.result = BatchResult{Status: 200, Body: raw}
		return
	}
	items := make([]BatchItem, len(calls))
	for i, c := range calls {
		items[i] = BatchItem{UID: c.uid, Body: c.body}
		if c.deadline.After(deadline) {
			deadline = c.deadline
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	results, err := b.c.exchangeBatch(ctx, ln.subject, AppendBatchRequest(nil, items), len(calls))
	if errors.Is(err, ErrNoResponders) {
		b.mu.Lock()
		ln.off = time.Now().Add(batchOffFor)
		b.mu.Unlock()
		b.c.log.Warn("no service answers batch messages; sending calls alone for a while", "subject", ln.subject, "for", batchOffFor)
		for _, c := range calls {
			c.fallback = true
		}
		return
	}
	for i, c := range calls {
		if err != nil {
			c.err = err
			continue
		}
		c.result = results[i]
	}
}

// exchangeBatch sends a batch message and returns its n results.
func (c *Client) exchangeBatch(ctx context.Context, subject string, data []byte, n int) ([]BatchResult, error) {
	var reply BatchReply
	if err := c.exchange(ctx, subject, nil, data, &reply); err != nil {
		return nil, err
	}
	if len(reply.Replies) != n {
		return nil, fmt.Errorf("events: batch reply from %s holds %d results for %d requests", subject, len(reply.Replies), n)
	}
	return reply.Replies, nil
}

// batched sends one call of a batchable endpoint: through the
// coalescer when batching is on, else alone.
func (c *Client) batched(ctx context.Context, uid string, single, batch func(string) string, req, reply any) error {
	if err := c.subj.ValidateUID("uid", uid); err != nil {
		return err
	}
	if c.coalescer == nil {
		return c.request(ctx, single(uid), req, reply)
	}
	scope := ScopeAll
	if c.coalescer.opts.PerUID {
		scope = uid
	}
	return c.coalescer.do(ctx, single(uid), batch(scope), uid, req, reply)
}
