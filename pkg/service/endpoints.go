package service

import (
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
}

// EndpointsConfig names a service's micro service and sizes it.
type EndpointsConfig struct {
	Name        string // micro service name and queue group, e.g. "meter"
	Version     string
	Description string
	Group       string // the subject prefix, e.g. cfg.Subjects.Meter
	Handlers    int    // instances in the queue group
}

// Endpoints are the micro service instances that serve one allot
// service's endpoints: Handlers copies in one queue group, each with its
// own subscription and goroutine, so one slow request never holds up the
// rest. $SRV.PING, INFO and STATS answer for each.
type Endpoints struct {
	services []micro.Service
	log      *slog.Logger
}

// StartEndpoints starts cfg.Handlers instances serving eps on nc. On error
// it stops what it started.
func StartEndpoints(nc *nats.Conn, cfg EndpointsConfig, eps []Endpoint, log *slog.Logger) (*Endpoints, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Endpoints{log: log}
	for i := range max(cfg.Handlers, 1) {
		svc, err := micro.AddService(nc, micro.Config{
			Name:        cfg.Name,
			Version:     cfg.Version,
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
		for _, ep := range eps {
			if err := g.AddEndpoint(ep.Name, ep.Handler, micro.WithEndpointSubject(ep.Subject)); err != nil {
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

// Stop stops taking requests; requests being handled finish.
func (e *Endpoints) Stop() {
	for _, svc := range e.services {
		if err := svc.Stop(); err != nil {
			e.log.Warn("stopping endpoints", "err", err)
		}
	}
	e.services = nil
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
