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
	// stream is sent again before it counts as failed (default 3). Resending
	// is safe: the stream drops the copy by its id.
	MaxRetries int
	// RetryWait is the pause before a resend (default 250ms).
	RetryWait time.Duration
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
		o.MaxRetries = 3
	}
	if o.RetryWait <= 0 {
		o.RetryWait = 250 * time.Millisecond
	}
	return o
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
// It is safe for concurrent use.
type AsyncPublisher struct {
	js    jetstream.JetStream
	opts  AsyncOptions
	sem   chan struct{}
	queue chan *pending
	done  chan struct{}

	closeMu sync.RWMutex // held for reading while Publish enqueues
	closed  bool

	mu          sync.Mutex
	outstanding int
	idle        []chan struct{}
	failed      []Failure

	published, acked, duplicates, retries, failedN atomic.Uint64
}

type pending struct {
	ev       Event
	msg      *nats.Msg
	fut      jetstream.PubAckFuture
	attempts int
}

// NewAsyncPublisher returns an AsyncPublisher on nc. Close it to wait for
// the last acks and stop its goroutine.
func NewAsyncPublisher(nc *nats.Conn, opts AsyncOptions) (*AsyncPublisher, error) {
	if nc == nil {
		return nil, errors.New("events: new async publisher: nil NATS connection")
	}
	opts = opts.withDefaults()
	if err := opts.Subjects.Validate(); err != nil {
		return nil, fmt.Errorf("events: new async publisher: %w", err)
	}
	js, err := jetstream.New(nc,
		// Room for resends on top of the window, so they never stall.
		jetstream.WithPublishAsyncMaxPending(2*opts.Window),
		jetstream.WithPublishAsyncTimeout(opts.AckTimeout),
	)
	if err != nil {
		return nil, fmt.Errorf("events: new async publisher: %w", err)
	}
	p := &AsyncPublisher{
		js:    js,
		opts:  opts,
		sem:   make(chan struct{}, opts.Window),
		queue: make(chan *pending, opts.Window),
		done:  make(chan struct{}),
	}
	go p.collect()
	return p, nil
}

// Publish validates ev, fills in what is missing (as Prepare does) and
// sends it, waiting only while the window is full. An invalid event is
// refused here with a [ValidationError] and never reaches the wire;
// failures after sending are reported by Flush and Close.
func (p *AsyncPublisher) Publish(ctx context.Context, ev Event) error {
	msg, err := Prepare(&ev, p.opts.PublisherOptions)
	if err != nil {
		return err
	}
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
	p.mu.Lock()
	p.outstanding++
	p.mu.Unlock()
	p.published.Add(1)

	pd := &pending{ev: ev, msg: msg}
	if err := p.send(pd); err != nil {
		p.finish(pd, err)
		return nil
	}
	p.queue <- pd // never blocks: the semaphore holds a place for it
	return nil
}

// send makes one attempt, retrying at once-refused sends (a stalled
// window in the client) up to MaxRetries.
func (p *AsyncPublisher) send(pd *pending) error {
	for {
		pd.attempts++
		fut, err := p.js.PublishMsgAsync(pd.msg)
		if err == nil {
			pd.fut = fut
			return nil
		}
		if !retryable(err) || pd.attempts > p.opts.MaxRetries {
			return publishError(pd.msg.Subject, err)
		}
		p.retries.Add(1)
		time.Sleep(p.opts.RetryWait)
	}
}

// collect waits for each future in order and settles it. A resend is
// scheduled off this goroutine, so one slow retry never holds up the acks
// behind it.
func (p *AsyncPublisher) collect() {
	defer close(p.done)
	for pd := range p.queue {
		var err error
		select {
		case ack := <-pd.fut.Ok():
			p.acked.Add(1)
			if ack.Duplicate {
				p.duplicates.Add(1)
			}
		case err = <-pd.fut.Err():
		}
		switch {
		case err == nil:
			p.finish(pd, nil)
		case retryable(err) && pd.attempts <= p.opts.MaxRetries:
			p.retries.Add(1)
			time.AfterFunc(p.opts.RetryWait, func() { p.resend(pd) })
		default:
			p.finish(pd, publishError(pd.msg.Subject, err))
		}
	}
}

// resend sends pd again and queues it for its ack. pd still holds its
// place in the window, so the queue has room for it, and Close cannot
// have closed the queue while pd is outstanding.
func (p *AsyncPublisher) resend(pd *pending) {
	if err := p.send(pd); err != nil {
		p.finish(pd, err)
		return
	}
	p.queue <- pd
}

// finish settles one event: records a failure, frees its place in the
// window and wakes Flush when nothing is left in flight.
func (p *AsyncPublisher) finish(pd *pending, err error) {
	p.mu.Lock()
	if err != nil {
		p.failedN.Add(1)
		p.failed = append(p.failed, Failure{Event: pd.ev, Err: err})
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
// returns the events that failed since the last Flush.
func (p *AsyncPublisher) Close(ctx context.Context) ([]Failure, error) {
	p.closeMu.Lock()
	already := p.closed
	p.closed = true
	p.closeMu.Unlock()
	if already {
		return nil, ErrClosed
	}
	failed, err := p.Flush(ctx)
	if err != nil {
		// The collector still owns what is in flight. Stop it once that
		// settles; what fails from here on is counted in Stats only.
		go func() {
			_, _ = p.Flush(context.Background())
			close(p.queue)
		}()
		return failed, err
	}
	close(p.queue)
	<-p.done
	return failed, nil
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
