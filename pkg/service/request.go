package service

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
)

// endpoint is one endpoint as this process serves it: its subscription,
// the queue its workers take requests from, and what $SRV.STATS and
// allot_request_duration_seconds report about it.
type endpoint struct {
	name, subject, queueGroup string
	batched                   bool
	nc                        *nats.Conn
	subs                      []*nats.Subscription
	drained                   []<-chan nats.SubStatus

	queue   chan *request
	mu      sync.RWMutex // guards closed against sends on a closed queue
	closed  bool
	workers sync.WaitGroup

	durations [numOutcomes]prometheus.Observer
	inFlight  atomic.Int64 // received, not yet answered
	stats     endpointStats
}

// endpointStats are an endpoint's micro stats, counted as requests are
// answered.
type endpointStats struct {
	mu        sync.Mutex
	requests  int
	errors    int
	lastError string
	total     time.Duration
}

// start runs n workers.
func (p *endpoint) start(n int, work func()) {
	for range n {
		p.workers.Go(work)
	}
}

// receive is the subscription's callback: it stamps the request's arrival
// and queues it for the workers.
func (p *endpoint) receive(m *nats.Msg) {
	p.enqueue(&request{msg: m, ep: p, received: time.Now()})
}

// enqueue hands r to the workers, or answers it 503 when the endpoint has
// stopped.
func (p *endpoint) enqueue(r *request) {
	p.inFlight.Add(1)
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		// The endpoint has stopped; a subscription being drained can
		// still deliver. Say so rather than leave the caller to time out.
		_ = events.RespondError(r, events.NewServiceError(events.CodeUnavailable, "", "shutting down"))
		return
	}
	p.queue <- r
}

// drain stops the subscriptions taking new requests; what the server has
// sent is still delivered.
func (p *endpoint) drain(log *slog.Logger) {
	for _, sub := range p.subs {
		closed := sub.StatusChanged(nats.SubscriptionClosed)
		if err := sub.Drain(); err != nil {
			if !errors.Is(err, nats.ErrConnectionClosed) {
				log.Warn("draining endpoint", "subject", p.subject, "err", err)
			}
			continue
		}
		p.drained = append(p.drained, closed)
	}
}

// drainPoll is how often waitDrained looks whether the connection has
// closed under a draining subscription (which then never says closed).
const drainPoll = 50 * time.Millisecond

// waitDrained waits until the drained subscriptions have delivered all
// they held, the connection closes or its drain timeout passes.
func (p *endpoint) waitDrained(log *slog.Logger) {
	if len(p.drained) == 0 {
		return
	}
	deadline := time.NewTimer(cmp.Or(p.nc.Opts.DrainTimeout, nats.GetDefaultOptions().DrainTimeout))
	defer deadline.Stop()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for _, closed := range p.drained {
		for done := false; !done; {
			select {
			case <-closed:
				done = true
			case <-tick.C:
				if p.nc.IsClosed() {
					return
				}
			case <-deadline.C:
				log.Warn("endpoint still draining at the drain timeout", "subject", p.subject)
				return
			}
		}
	}
}

// stop closes the queue and waits until the workers have answered what
// it held.
func (p *endpoint) stop() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.queue)
	}
	p.mu.Unlock()
	p.workers.Wait()
}

// record counts r's answer once: its time since arrival in the histogram
// by outcome, and in the micro stats, with failure as the last error when
// it is one. It reports whether this was r's first answer.
func (p *endpoint) record(r *request, status int, failure string) bool {
	if !r.answered.CompareAndSwap(false, true) {
		return false
	}
	d := time.Since(r.received)
	p.inFlight.Add(-1)
	p.durations[outcomeOf(status, failure)].Observe(d.Seconds())
	s := &p.stats
	s.mu.Lock()
	s.requests++
	s.total += d
	if failure != "" {
		s.errors++
		s.lastError = failure
	}
	s.mu.Unlock()
	return true
}

// unsent makes an answer already recorded an error: it could not be
// sent. wasError says it was counted as one already.
func (p *endpoint) unsent(failure string, wasError bool) {
	s := &p.stats
	s.mu.Lock()
	if !wasError {
		s.errors++
	}
	s.lastError = failure
	s.mu.Unlock()
}

// microStats reads the endpoint's stats in micro's form.
func (p *endpoint) microStats() *micro.EndpointStats {
	s := &p.stats
	s.mu.Lock()
	st := &micro.EndpointStats{Name: p.name, Subject: p.subject, QueueGroup: p.queueGroup,
		NumRequests: s.requests, NumErrors: s.errors, LastError: s.lastError, ProcessingTime: s.total}
	s.mu.Unlock()
	if st.NumRequests > 0 {
		st.AverageProcessingTime = st.ProcessingTime / time.Duration(st.NumRequests)
	}
	st.Data, _ = json.Marshal(endpointData{InFlight: p.inFlight.Load()})
	return st
}

// endpointData is the data of an endpoint's $SRV.STATS: the requests
// received and not answered yet (being served, or queued for a worker or
// a batch).
type endpointData struct {
	InFlight int64 `json:"in_flight"`
}

// request is a request as an endpoint's workers and batches get it. It
// may be answered from any goroutine; the first answer is recorded.
type request struct {
	msg      *nats.Msg
	ep       *endpoint
	received time.Time
	answered atomic.Bool
	// many, when set, is the batch message r came in: r's answer goes
	// into its slot of the batch's reply (many.go), not on the wire.
	many *manyReply
	slot int
}

// Respond answers with data.
func (r *request) Respond(data []byte, opts ...micro.RespondOpt) error {
	m := &nats.Msg{Data: data}
	for _, opt := range opts {
		opt(m)
	}
	return r.send(m, 0, "")
}

// RespondJSON answers with v as JSON.
func (r *request) RespondJSON(v any, opts ...micro.RespondOpt) error {
	data, err := json.Marshal(v)
	if err != nil {
		return micro.ErrMarshalResponse
	}
	return r.Respond(data, opts...)
}

// Error answers with a micro service error: code (allot's are HTTP-style
// statuses) and description in the headers, data as the body. It is
// counted as an error, with micro's "code:description" as the last error.
func (r *request) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	if code == "" || description == "" {
		return fmt.Errorf("%w: error code and description", micro.ErrArgRequired)
	}
	m := &nats.Msg{Header: nats.Header{
		micro.ErrorHeader:     []string{description},
		micro.ErrorCodeHeader: []string{code},
	}}
	for _, opt := range opts {
		opt(m)
	}
	m.Data = data
	status, err := strconv.Atoi(code)
	if err != nil {
		status = 500
	}
	return r.send(m, status, code+":"+description)
}

// send records the answer and publishes it. Recorded first, a reply is
// in $SRV.STATS by the time its caller has it, so a caller that reads
// the stats after its reply finds it counted. An answer that cannot be
// sent is an error too, as micro counts it: without a reply subject it is
// recorded as an internal one; when the publish itself fails, the stats
// count it as an error after the fact (the histogram keeps the outcome
// the answer carried). It publishes on the connection:
// nats.Msg.RespondMsg would take the subscription's lock, which the
// subscription's delivery holds for every request it takes in.
func (r *request) send(m *nats.Msg, status int, failure string) error {
	if r.many != nil {
		if r.ep.record(r, status, failure) {
			r.many.fill(r.slot, status, m.Data)
		}
		return nil
	}
	if r.msg.Reply == "" {
		err := fmt.Errorf("%w: %w", micro.ErrRespond, nats.ErrMsgNoReply)
		r.ep.record(r, 500, cmp.Or(failure, err.Error()))
		return err
	}
	m.Subject = r.msg.Reply
	first := r.ep.record(r, status, failure)
	if err := r.ep.nc.PublishMsg(m); err != nil {
		err = fmt.Errorf("%w: %w", micro.ErrRespond, err)
		if first {
			r.ep.unsent(cmp.Or(failure, err.Error()), failure != "")
		}
		return err
	}
	return nil
}

// Data is the request's body.
func (r *request) Data() []byte { return r.msg.Data }

// Headers are the request's headers.
func (r *request) Headers() micro.Headers { return micro.Headers(r.msg.Header) }

// Subject is the subject the request was sent to.
func (r *request) Subject() string { return r.msg.Subject }

// Reply is the request's reply subject.
func (r *request) Reply() string { return r.msg.Reply }
