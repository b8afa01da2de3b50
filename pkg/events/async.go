package events

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrClosed is returned by an AsyncPublisher after Close.
var ErrClosed = errors.New("events: publisher closed")

// AsyncOptions configures an [AsyncPublisher].
type AsyncOptions struct {
	PublisherOptions
	// Window is the most events in flight, waiting for their ack
	// (default 4096). Publish blocks while the window is full.
	Window int
	// AckTimeout is how long one attempt waits for its ack before it is
	// retried (default 5s).
	AckTimeout time.Duration
	// MaxRetries is how often an event that timed out, stalled or found no
	// stream is sent again before it counts as failed (default 12). Resending
	// is safe: the stream drops the copy by its id.
	MaxRetries int
	// RetryWait is the pause before the first resend (default 250ms); it
	// doubles with each resend of the event, up to RetryMaxWait (default
	// 2s). With the defaults an event that meets "no responders" at once
	// (a stream between leaders on a NATS cluster, the server restarting)
	// is tried for about 20 s before it fails: longer than a JetStream
	// leader election (6-17 s when a node of a 3-node cluster is killed,
	// README "Faults on the clusters").
	RetryWait    time.Duration
	RetryMaxWait time.Duration
}

func (o AsyncOptions) withDefaults() AsyncOptions {
	o.PublisherOptions = o.PublisherOptions.withDefaults()
	if o.Window <= 0 {
		o.Window = 4096
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = 5 * time.Second
	}
	if o.MaxRetries < 0 {
		o.MaxRetries = 0
	} else if o.MaxRetries == 0 {
		o.MaxRetries = 12
	}
	if o.RetryWait <= 0 {
		o.RetryWait = 250 * time.Millisecond
	}
	if o.RetryMaxWait <= 0 {
		o.RetryMaxWait = 2 * time.Second
	}
	o.RetryMaxWait = max(o.RetryMaxWait, o.RetryWait)
	return o
}

// retryWait is the pause before resend n (1: the first).
func (o AsyncOptions) retryWait(n int) time.Duration {
	w := o.RetryWait
	for i := 1; i < n && w < o.RetryMaxWait; i++ {
		w *= 2
	}
	return min(w, o.RetryMaxWait)
}

// Failure is an event that could not be published, and why.
type Failure struct {
	Event Event
	Err   error
}

// AsyncStats counts what an AsyncPublisher did.
type AsyncStats struct {
	Published  uint64 // events taken by Publish
	Acked      uint64 // stored by the stream
	Duplicates uint64 // acked, but dropped by the stream as a repeated id
	Retries    uint64 // resends after a timeout, stall or lost connection
	Failed     uint64 // given up on; returned by Flush or Close
	InFlight   int    // sent and not yet acked or failed
}

// AsyncPublisher publishes usage events without waiting for each ack. It
// keeps at most Window events in flight, blocking Publish when the window
// is full, resends what timed out or stalled, and on Flush or Close
// returns exactly the events that failed.
//
// Acks and errors arrive through the JetStream client's async handlers,
// so no goroutine waits on each event's future. It is safe for concurrent
// use.
type AsyncPublisher struct {
	js   jetstream.JetStream
	opts AsyncOptions
	sem  chan struct{}

	closeMu sync.RWMutex // held for reading while Publish sends
	closed  bool

	mu          sync.Mutex
	inFlight    map[*nats.Msg]*pending
	outstanding int
	idle        []chan struct{}
	failed      []Failure

	published, acked, duplicates, retries, failedN atomic.Uint64
}

type pending struct {
	ev       Event
	msg      *nats.Msg
	attempts int
}

// NewAsyncPublisher returns an AsyncPublisher on nc. Close it to wait for
// the last acks.
func NewAsyncPublisher(nc *nats.Conn, opts AsyncOptions) (*AsyncPublisher, error) {
	if nc == nil {
		return nil, errors.New("events: new async publisher: nil NATS connection")
	}
	opts = opts.withDefaults()
	if err := opts.Subjects.Validate(); err != nil {
		return nil, fmt.Errorf("events: new async publisher: %w", err)
	}
	p := &AsyncPublisher{
		opts:     opts,
		sem:      make(chan struct{}, opts.Window),
		inFlight: make(map[*nats.Msg]*pending, opts.Window),
	}
	js, err := jetstream.New(nc,
		// Room for resends on top of the window, so they never stall.
		jetstream.WithPublishAsyncMaxPending(2*opts.Window),
		jetstream.WithPublishAsyncTimeout(opts.AckTimeout),
		jetstream.WithPublishAsyncAckHandler(p.onAck),
		jetstream.WithPublishAsyncErrHandler(p.onErr),
	)
	if err != nil {
		return nil, fmt.Errorf("events: new async publisher: %w", err)
	}
	p.js = js
	return p, nil
}

// Publish validates ev, fills in what is missing (as Prepare does) and
// sends it, waiting only while the window is full. An invalid event is
// refused here with a [ValidationError] and never reaches the wire;
// failures after sending are reported by Flush and Close.
func (p *AsyncPublisher) Publish(ctx context.Context, ev Event) error {
	pe, err := p.Prepare(ev)
	if err != nil {
		return err
	}
	return p.PublishPrepared(ctx, pe)
}

// Prepare fills in, validates and encodes ev as Publish would, once;
// PublishPrepared sends the result. An invalid event returns a
// [ValidationError].
func (p *AsyncPublisher) Prepare(ev Event) (Prepared, error) {
	return prepare(&ev, p.opts.PublisherOptions)
}

// PublishPrepared sends an event Prepare made, as it was encoded, as
// Publish does.
func (p *AsyncPublisher) PublishPrepared(ctx context.Context, pe Prepared) error {
	if pe.subject == "" {
		return errNotPrepared
	}
	ev, msg := pe.ev, pe.msg()
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if p.closed {
		return ErrClosed
	}
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("events: publish %s: waiting for room in the window: %w", ev.ID, ctx.Err())
	}
	p.published.Add(1)
	pd := &pending{ev: ev, msg: msg}
	p.mu.Lock()
	p.outstanding++
	p.inFlight[msg] = pd // before sending: the ack may beat PublishMsgAsync's return
	p.mu.Unlock()
	p.send(pd)
	return nil
}

// send makes one attempt. A send the client refuses at once (its own
// window stalled, or the connection is down) is retried like a lost ack.
func (p *AsyncPublisher) send(pd *pending) {
	pd.attempts++
	if _, err := p.js.PublishMsgAsync(pd.msg); err != nil {
		p.onErr(p.js, pd.msg, err)
	}
}

// onAck settles an acked event. It runs on the client's ack goroutine
// and never blocks.
func (p *AsyncPublisher) onAck(_ jetstream.JetStream, msg *nats.Msg, ack *jetstream.PubAck) {
	pd := p.take(msg)
	if pd == nil {
		return
	}
	p.acked.Add(1)
	if ack.Duplicate {
		p.duplicates.Add(1)
	}
	p.finish(nil)
}

// onErr resends the event later when a resend may help, or settles it as
// failed. Resending is safe: the stream drops a copy by its id.
func (p *AsyncPublisher) onErr(_ jetstream.JetStream, msg *nats.Msg, err error) {
	p.mu.Lock()
	pd := p.inFlight[msg]
	retry := pd != nil && retryable(err) && pd.attempts <= p.opts.MaxRetries
	if pd != nil && !retry {
		delete(p.inFlight, msg)
	}
	p.mu.Unlock()
	switch {
	case pd == nil:
	case retry:
		p.retries.Add(1)
		time.AfterFunc(p.opts.retryWait(pd.attempts), func() { p.send(pd) })
	default:
		p.finish(&Failure{Event: pd.ev, Err: publishError(msg.Subject, err)})
	}
}

func (p *AsyncPublisher) take(msg *nats.Msg) *pending {
	p.mu.Lock()
	defer p.mu.Unlock()
	pd := p.inFlight[msg]
	delete(p.inFlight, msg)
	return pd
}

// finish settles one event: records a failure, frees its place in the
// window and wakes Flush when nothing is left in flight.
func (p *AsyncPublisher) finish(f *Failure) {
	p.mu.Lock()
	if f != nil {
		p.failedN.Add(1)
		p.failed = append(p.failed, *f)
	}
	p.outstanding--
	if p.outstanding == 0 {
		for _, ch := range p.idle {
			close(ch)
		}
		p.idle = nil
	}
	p.mu.Unlock()
	<-p.sem
}

// retryable reports whether sending again may succeed: timeouts, stalls,
// a missing stream (it may be being created) and connection trouble. A
// JetStream API error (the stream refused the message) and a closed
// connection are final.
func retryable(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return false
	}
	return errors.Is(err, jetstream.ErrAsyncPublishTimeout) ||
		errors.Is(err, jetstream.ErrTooManyStalledMsgs) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrConnectionReconnecting)
}

// Flush waits until no event is in flight, then returns the events that
// failed since the last Flush, and forgets them. The error is non-nil only
// when ctx ends first; the failures gathered so far are returned with it.
func (p *AsyncPublisher) Flush(ctx context.Context) ([]Failure, error) {
	p.mu.Lock()
	if p.outstanding == 0 {
		failed := p.takeFailed()
		p.mu.Unlock()
		return failed, nil
	}
	ch := make(chan struct{})
	p.idle = append(p.idle, ch)
	p.mu.Unlock()
	select {
	case <-ch:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.takeFailed(), nil
	case <-ctx.Done():
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.takeFailed(), fmt.Errorf("events: flush with %d events in flight: %w", p.outstanding, ctx.Err())
	}
}

func (p *AsyncPublisher) takeFailed() []Failure {
	failed := p.failed
	p.failed = nil
	return failed
}

// Close refuses new events, waits for every ack (bounded by ctx) and
// returns the events that failed since the last Flush. When ctx ends
// first, what is still in flight goes on settling and is counted in Stats.
func (p *AsyncPublisher) Close(ctx context.Context) ([]Failure, error) {
	p.closeMu.Lock()
	already := p.closed
	p.closed = true
	p.closeMu.Unlock()
	if already {
		return nil, ErrClosed
	}
	return p.Flush(ctx)
}

// Stats returns counts of what the publisher did so far.
func (p *AsyncPublisher) Stats() AsyncStats {
	p.mu.Lock()
	inFlight := p.outstanding
	p.mu.Unlock()
	return AsyncStats{
		Published:  p.published.Load(),
		Acked:      p.acked.Load(),
		Duplicates: p.duplicates.Load(),
		Retries:    p.retries.Load(),
		Failed:     p.failedN.Load(),
		InFlight:   inFlight,
	}
}
