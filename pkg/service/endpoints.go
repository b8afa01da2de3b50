package service

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
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
	// Many, with Batch and a Subject ending in ".*" (the uid), also
	// serves the endpoint's batch messages on <Many>.<scope> below the
	// group (e.g. "credit_many"): each request a batch carries joins the
	// endpoint's own queue as if it had come alone (many.go).
	Many string
}

// EndpointsConfig names a service's micro service and sizes it.
type EndpointsConfig struct {
	Name        string // micro service name and queue group, e.g. "meter"
	Version     string // a semantic version; empty: this build's (Build)
	Description string
	Group       string // the subject prefix, e.g. cfg.Subjects.Meter
	// Instance names this process in the service's metadata (the
	// runtime's instance: the host or pod name); empty, the hostname.
	Instance string
	// Handlers is how many requests of each endpoint with a Handler are
	// served at once, and how many subscriptions take each endpoint's
	// requests in.
	Handlers int
	// Pipelines is how many batches of each batched endpoint are served
	// at once (default 2): one can be in Redis while the next gathers.
	Pipelines int
	// MaxBatch caps a batch (default DefaultMaxBatch).
	MaxBatch int
	// ObserveBatch, when set, is told the size of every batch served.
	ObserveBatch func(endpoint string, n int)
	// Registerer, when set, receives allot_request_duration_seconds
	// for this service (RequestDurations).
	Registerer prometheus.Registerer
}

// Endpoints is one allot service's request endpoints as this process
// serves them: one micro service instance, whatever the concurrency. Each
// endpoint has Handlers queue subscriptions (queue group: the service's
// name) that hand requests to Handlers workers, or to Pipelines batchers
// for a batched endpoint. allot answers the micro protocol's $SRV.PING, INFO
// and STATS itself (control.go): nats.go's micro package times only its
// handler's call and counts only errors answered inside it, which a
// request handed to a worker or a batch has not been. Here every request
// is recorded when it is answered (request.go), from whichever goroutine
// answers it, with the time since it arrived.
type Endpoints struct {
	nc        *nats.Conn
	log       *slog.Logger
	identity  micro.ServiceIdentity
	desc      string
	started   time.Time
	endpoints []*endpoint
	control   []*nats.Subscription
	stopOnce  sync.Once
}

// nameRE is what micro accepts as a service or endpoint name.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9\-_]+$`)

// StartEndpoints starts serving eps on nc as one micro service instance.
// On error it stops what it started.
func StartEndpoints(nc *nats.Conn, cfg EndpointsConfig, eps []Endpoint, log *slog.Logger) (*Endpoints, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	version := cmp.Or(cfg.Version, Build().Version)
	switch {
	case !nameRE.MatchString(cfg.Name):
		return nil, fmt.Errorf("service: endpoints: invalid service name %q", cfg.Name)
	case !semverRE.MatchString(version):
		return nil, fmt.Errorf("%s: endpoints: version %q is not a semantic version", cfg.Name, version)
	}
	handlers, pipelines := max(cfg.Handlers, 1), max(cmp.Or(cfg.Pipelines, 2), 1)
	durations, err := RequestDurations(cfg.Registerer, cfg.Name)
	if err != nil {
		return nil, err
	}
	e := &Endpoints{nc: nc, log: log, desc: cfg.Description, started: time.Now().UTC(),
		identity: micro.ServiceIdentity{Name: cfg.Name, ID: nuid.Next(), Version: version,
			Metadata: instanceMetadata(cfg.Instance, handlers, pipelines, eps)}}
	for _, ep := range eps {
		if err := e.add(cfg, ep, handlers, pipelines, durations); err != nil {
			e.Stop()
			return nil, err
		}
	}
	if err := e.subscribeControl(); err != nil {
		e.Stop()
		return nil, fmt.Errorf("%s: endpoints: %w", cfg.Name, err)
	}
	// Serving means the server has every subscription: a request from
	// another connection right after Start must find them.
	if err := nc.Flush(); err != nil {
		e.Stop()
		return nil, fmt.Errorf("%s: endpoints: %w", cfg.Name, err)
	}
	return e, nil
}

// add starts serving one endpoint.
func (e *Endpoints) add(cfg EndpointsConfig, ep Endpoint, handlers, pipelines int, durations *prometheus.HistogramVec) error {
	switch {
	case !nameRE.MatchString(ep.Name):
		return fmt.Errorf("%s: invalid endpoint name %q", cfg.Name, ep.Name)
	case ep.Batch != nil && ep.Handler != nil:
		return fmt.Errorf("%s: endpoint %s has both a handler and a batch function", cfg.Name, ep.Name)
	case ep.Batch == nil && ep.Handler == nil:
		return fmt.Errorf("%s: endpoint %s has neither a handler nor a batch function", cfg.Name, ep.Name)
	case ep.Many != "" && (ep.Batch == nil || !strings.HasSuffix(ep.Subject, ".*") || !nameRE.MatchString(ep.Many)):
		return fmt.Errorf("%s: endpoint %s: batch messages (%q) need a batch function, a subject ending in .* and a name", cfg.Name, ep.Name, ep.Many)
	}
	subject := ep.Subject
	if cfg.Group != "" {
		subject = cfg.Group + "." + ep.Subject
	}
	p := &endpoint{name: ep.Name, subject: subject, queueGroup: cfg.Name, nc: e.nc, durations: observersOf(durations, ep.Name)}
	if ep.Batch != nil {
		var observe func(int)
		if cfg.ObserveBatch != nil {
			observe = func(n int) { cfg.ObserveBatch(ep.Name, n) }
		}
		p.batched = true
		p.queue = make(chan *request, batchQueue)
		b := &batcher{serve: ep.Batch, max: cfg.MaxBatch, queue: p.queue, observe: observe}
		if b.max < 1 {
			b.max = DefaultMaxBatch
		}
		p.start(pipelines, b.run)
	} else {
		p.queue = make(chan *request, handlers)
		p.start(handlers, func() {
			for r := range p.queue {
				ep.Handler(r)
			}
		})
	}
	e.endpoints = append(e.endpoints, p)
	if err := e.subscribe(cfg, p, handlers); err != nil {
		return err
	}
	if ep.Many == "" {
		return nil
	}
	return e.addMany(cfg, ep, p, handlers, durations)
}

// subscribe takes p's requests in.
func (e *Endpoints) subscribe(cfg EndpointsConfig, p *endpoint, handlers int) error {
	// Handlers subscriptions in the queue group take the requests in, as
	// many goroutines; they only hand them on, to the workers or the
	// batcher, whose queue and the subscriptions' pending buffers hold
	// what waits.
	for range handlers {
		sub, err := e.nc.QueueSubscribe(p.subject, cfg.Name, p.receive)
		if err != nil {
			return fmt.Errorf("%s: endpoint %s: %w", cfg.Name, p.name, err)
		}
		p.subs = append(p.subs, sub)
	}
	return nil
}

// instanceMetadata is what $SRV.PING, INFO and STATS say about this
// process besides its id and version: the instance (host or pod), the
// build's revision and how many requests each endpoint serves at once.
func instanceMetadata(instance string, handlers, pipelines int, eps []Endpoint) map[string]string {
	if instance == "" {
		instance, _ = os.Hostname()
	}
	b := Build()
	md := map[string]string{
		"instance": instance,
		"revision": cmp.Or(b.Revision, "unknown"),
		"handlers": strconv.Itoa(handlers),
	}
	for _, ep := range eps {
		if ep.Batch != nil {
			md["pipelines"] = strconv.Itoa(pipelines)
		}
	}
	return md
}

// ID is this instance's micro id, as $SRV.PING answers it.
func (e *Endpoints) ID() string { return e.identity.ID }

// Stop stops taking requests: the subscriptions drain, so what the
// server has delivered is still served; requests being handled or queued
// are answered; a request that comes after gets a 503. It returns when
// every endpoint is idle.
func (e *Endpoints) Stop() {
	e.stopOnce.Do(func() {
		for _, p := range e.endpoints {
			p.drain(e.log)
		}
		for _, p := range e.endpoints {
			p.waitDrained(e.log)
		}
		for _, p := range e.endpoints {
			p.stop()
		}
		for _, sub := range e.control {
			if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
				e.log.Warn("stopping endpoints", "subject", sub.Subject, "err", err)
			}
		}
	})
}
