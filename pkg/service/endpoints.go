package service

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
)

// Endpoint is one request/reply endpoint of a service.
type Endpoint struct {
	Name    string // the micro endpoint name, e.g. "credit"
	Subject string // below the group, e.g. "credit.*"
	Handler micro.HandlerFunc
	// Batch, set instead of Handler, serves the requests that arrive
	// together in one call (see BatchFunc).
	Batch BatchFunc
}

// EndpointsConfig names a service's micro service and sizes it.
type EndpointsConfig struct {
	Name        string // micro service name and queue group, e.g. "meter"
	Version     string // a semantic version; empty: this build's (Build)
	Description string
	Group       string // the subject prefix, e.g. cfg.Subjects.Meter
	Handlers    int    // instances in the queue group
	// Pipelines is how many batches of each batched endpoint are served
	// at once (default 2): one can be in Redis while the next gathers.
	Pipelines int
	// MaxBatch caps a batch (default DefaultMaxBatch).
	MaxBatch int
	// ObserveBatch, when set, is told the size of every batch served.
	ObserveBatch func(endpoint string, n int)
}

// Endpoints are the micro service instances that serve one allot
// service's endpoints: Handlers copies in one queue group, each with its
// own subscription and goroutine, so one slow request never holds up the
// rest. $SRV.PING, INFO and STATS answer for each. A batched endpoint's
// instances all feed one batcher.
type Endpoints struct {
	services []micro.Service
	batchers []*batcher
	log      *slog.Logger
}

// StartEndpoints starts cfg.Handlers instances serving eps on nc. On error
// it stops what it started.
func StartEndpoints(nc *nats.Conn, cfg EndpointsConfig, eps []Endpoint, log *slog.Logger) (*Endpoints, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Endpoints{log: log}
	handlers := make([]micro.HandlerFunc, len(eps))
	for i, ep := range eps {
		switch {
		case ep.Batch != nil && ep.Handler != nil:
			e.Stop()
			return nil, fmt.Errorf("%s: endpoint %s has both a handler and a batch function", cfg.Name, ep.Name)
		case ep.Batch != nil:
			var observe func(int)
			if cfg.ObserveBatch != nil {
				name := ep.Name
				observe = func(n int) { cfg.ObserveBatch(name, n) }
			}
			b := newBatcher(nc, ep.Batch, cmp.Or(cfg.Pipelines, 2), cfg.MaxBatch, observe)
			e.batchers = append(e.batchers, b)
			handlers[i] = b.handle
		default:
			handlers[i] = ep.Handler
		}
	}
	for i := range max(cfg.Handlers, 1) {
		svc, err := micro.AddService(nc, micro.Config{
			Name:        cfg.Name,
			Version:     cmp.Or(cfg.Version, Build().Version),
			Description: cfg.Description,
			QueueGroup:  cfg.Name,
			Metadata:    map[string]string{"handler": fmt.Sprint(i)},
		})
		if err != nil {
			e.Stop()
			return nil, fmt.Errorf("%s: endpoints: %w", cfg.Name, err)
		}
		e.services = append(e.services, svc)
		g := svc.AddGroup(cfg.Group, micro.WithGroupQueueGroup(cfg.Name))
		for j, ep := range eps {
			if err := g.AddEndpoint(ep.Name, handlers[j], micro.WithEndpointSubject(ep.Subject)); err != nil {
				e.Stop()
				return nil, fmt.Errorf("%s: endpoint %s: %w", cfg.Name, ep.Name, err)
			}
		}
	}
	// Serving means the server has every subscription: a request from
	// another connection right after Start must find them.
	if err := nc.Flush(); err != nil {
		e.Stop()
		return nil, fmt.Errorf("%s: endpoints: %w", cfg.Name, err)
	}
	return e, nil
}

// Len is the number of instances serving.
func (e *Endpoints) Len() int { return len(e.services) }

// Stop stops taking requests; requests being handled or queued for a
// batch are answered first.
func (e *Endpoints) Stop() {
	for _, svc := range e.services {
		if err := svc.Stop(); err != nil {
			e.log.Warn("stopping endpoints", "err", err)
		}
	}
	e.services = nil
	for _, b := range e.batchers {
		b.stop()
	}
	e.batchers = nil
}

// Replier answers requests in the contract's form and counts each
// outcome in Requests by endpoint and result ("ok" or an error code).
type Replier struct {
	Requests *prometheus.CounterVec
	Log      *slog.Logger
	// Classify maps a service's own errors (a backend down, a conflict) to
	// a reply error, or returns nil to leave err to the defaults: a
	// *events.ServiceError as it is, a validation error a 400 naming the
	// field, anything else a 500 that is logged.
	Classify func(error) *events.ServiceError
}

// Reply answers req with v as JSON, or with err.
func (r Replier) Reply(req micro.Request, endpoint string, v any, err error) {
	if err == nil {
		var data []byte
		if data, err = json.Marshal(v); err == nil {
			r.ReplyBytes(req, endpoint, data, nil)
			return
		}
	}
	r.ReplyBytes(req, endpoint, nil, err)
}

// ReplyBytes answers req with data, already encoded, or with err.
func (r Replier) ReplyBytes(req micro.Request, endpoint string, data []byte, err error) {
	if err == nil {
		r.count(endpoint, "ok")
		_ = req.Respond(data)
		return
	}
	serr := r.classify(req, endpoint, err)
	r.count(endpoint, string(serr.Code))
	_ = events.RespondError(req, serr)
}

func (r Replier) classify(req micro.Request, endpoint string, err error) *events.ServiceError {
	var serr *events.ServiceError
	if r.Classify != nil {
		if s := r.Classify(err); s != nil {
			return s
		}
	}
	switch {
	case errors.As(err, &serr):
		return serr
	case errors.Is(err, events.ErrInvalid):
		return events.BadRequest(err)
	}
	if r.Log != nil {
		r.Log.Error("request failed", "endpoint", endpoint, "subject", req.Subject(), "err", err)
	}
	return events.NewServiceError(events.CodeInternal, "", "%v", err)
}

func (r Replier) count(endpoint, result string) {
	if r.Requests != nil {
		r.Requests.WithLabelValues(endpoint, result).Inc()
	}
}
