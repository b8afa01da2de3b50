package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// BatchFunc serves requests that arrived together, so that one Redis
// round trip can answer all of them. It must answer every request, and
// may do so from any goroutine.
type BatchFunc func(reqs []micro.Request)

// Batching defaults: requests per batch, and pending requests an
// endpoint holds before its handlers wait.
const (
	DefaultMaxBatch = 256
	batchQueue      = 4096
)

// batcher hands the requests of one endpoint to its pipelines: each
// pipeline takes whatever has queued up while it was busy, up to max,
// and serves it as one batch. Under light load a batch holds one request
// and adds one goroutine hand-off; under heavy load the batches grow, and
// Redis sees a few pipelines instead of a round trip per request. Fewer
// concurrent round trips is what makes a 2-core machine with NATS and
// Redis on it go faster, measured in the services' benchmarks. Each
// request is recorded when the batch function answers it (request.go),
// so the endpoint's stats and histogram see the time it waited too.
type batcher struct {
	serve BatchFunc
	max   int
	queue <-chan *request // closed by the endpoint's stop
	// observe, when set, is told each batch's size.
	observe func(n int)
}

// run is one pipeline: it serves batches until the queue is closed and
// empty.
func (b *batcher) run() {
	batch := make([]micro.Request, 0, b.max)
	for req := range b.queue {
		batch = append(batch[:0], req)
	more:
		for len(batch) < b.max {
			select {
			case r, ok := <-b.queue:
				if !ok {
					break more
				}
				batch = append(batch, r)
			default:
				break more
			}
		}
		if b.observe != nil {
			b.observe(len(batch))
		}
		b.serve(batch)
		clear(batch) // let the answered requests go
	}
}

// BatchContext returns the context to serve reqs in: it ends budget
// after the first of them arrived, so a batch that queued behind a slow
// one (Redis hanging) still answers each request within budget of its
// arrival, instead of waiting a budget of its own on top. A request that
// is not this package's (Detached) counts as arriving now.
func BatchContext(reqs []micro.Request, budget time.Duration) (context.Context, context.CancelFunc) {
	first := time.Now()
	for _, r := range reqs {
		if rr, ok := r.(*request); ok && rr.received.Before(first) {
			first = rr.received
		}
	}
	return context.WithDeadline(context.Background(), first.Add(budget))
}

// Detached is a request that answers on the connection directly and
// records nothing: what a test hands a service's batch function to serve
// it without its endpoints.
type Detached struct {
	nc             *nats.Conn
	subject, reply string
	data           []byte
	headers        micro.Headers
}

// NewDetached makes a request for a test that hands a batch function
// requests of its own.
func NewDetached(nc *nats.Conn, subject, reply string, data []byte, headers micro.Headers) *Detached {
	return &Detached{nc: nc, subject: subject, reply: reply, data: data, headers: headers}
}

// Respond answers with data.
func (r *Detached) Respond(data []byte, opts ...micro.RespondOpt) error {
	return r.publish(&nats.Msg{Data: data}, opts)
}

// RespondJSON answers with v as JSON.
func (r *Detached) RespondJSON(v any, opts ...micro.RespondOpt) error {
	data, err := json.Marshal(v)
	if err != nil {
		return micro.ErrMarshalResponse
	}
	return r.Respond(data, opts...)
}

// Error answers with a micro service error: code and description in the
// headers, data as the body.
func (r *Detached) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	if code == "" || description == "" {
		return fmt.Errorf("%w: error code and description", micro.ErrArgRequired)
	}
	return r.publish(&nats.Msg{Data: data, Header: nats.Header{
		micro.ErrorHeader:     []string{description},
		micro.ErrorCodeHeader: []string{code},
	}}, opts)
}

func (r *Detached) publish(m *nats.Msg, opts []micro.RespondOpt) error {
	if r.reply == "" {
		return errors.New("service: the request has no reply subject")
	}
	for _, opt := range opts {
		opt(m)
	}
	m.Subject = r.reply
	if err := r.nc.PublishMsg(m); err != nil {
		return fmt.Errorf("%w: %w", micro.ErrRespond, err)
	}
	return nil
}

// Data is the request's body.
func (r *Detached) Data() []byte { return r.data }

// Headers are the request's headers.
func (r *Detached) Headers() micro.Headers { return r.headers }

// Subject is the subject the request was sent to.
func (r *Detached) Subject() string { return r.subject }

// Reply is the request's reply subject.
func (r *Detached) Reply() string { return r.reply }
