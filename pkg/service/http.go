package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
)

// checkTimeout bounds all readiness checks of one /readyz request.
const checkTimeout = 2 * time.Second

// HTTPServer is the HTTP server every service runs, for Kubernetes probes
// and Prometheus:
//
//   - GET /metrics: the service's registry, and allot_dependency_up
//     from the readiness checks (Gatherer);
//   - GET /healthz: liveness, 200 while the process serves;
//   - GET /readyz: readiness, 200 only once SetReady(true) and while every
//     check passes within 2s, else 503 with a JSON body naming what fails.
//
// Other methods get 405, other paths 404. Handle adds routes.
type HTTPServer struct {
	log   *slog.Logger
	mux   *http.ServeMux
	srv   *http.Server
	ready atomic.Bool
	// failing is whether the last readiness checks failed, so only changes
	// are logged.
	failing atomic.Bool

	// gatherer is what /metrics serves: the service's registry and own,
	// which holds allot_dependency_up.
	gatherer prometheus.Gatherers

	mu     sync.Mutex
	checks []check
	ln     net.Listener
	served chan struct{} // closed when Serve returns
}

// check is one named readiness check.
type check struct {
	name string
	fn   func(context.Context) error
}

// NewHTTPServer returns a server for addr (host:port; port 0 picks a free
// one) serving reg on /metrics, with allot_dependency_up beside it. It
// listens only once Start is called, and reports not ready until
// SetReady(true).
func NewHTTPServer(addr string, reg *prometheus.Registry, log *slog.Logger) *HTTPServer {
	log = orDiscard(log)
	s := &HTTPServer{log: log, mux: http.NewServeMux()}
	own := prometheus.NewRegistry()
	if err := own.Register(newDependencyCollector(s)); err != nil {
		// A fresh registry holds no collector to collide with.
		log.Error("allot_dependency_up not registered", "err", err)
	}
	s.gatherer = prometheus.Gatherers{reg, own}
	s.srv = &http.Server{
		Addr:              addr,
		Handler:           s.mux,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	metrics := promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      reg,
	})
	s.mux.Handle("GET /metrics", promhttp.InstrumentMetricHandler(reg, metrics))
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	return s
}

// Gatherer is what /metrics serves: the registry NewHTTPServer was given
// and allot_dependency_up.
func (s *HTTPServer) Gatherer() prometheus.Gatherer { return s.gatherer }

// Handle adds a route, with a net/http ServeMux pattern such as
// "GET /debug/info".
func (s *HTTPServer) Handle(pattern string, handler http.Handler) {
	s.mux.Handle(pattern, handler)
}

// ServeHTTP serves the routes without a listener, for tests and for
// mounting them in another server.
func (s *HTTPServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// AddCheck adds a readiness check, or replaces the one of the same name.
// fn must return nil when the dependency works and should return when
// its ctx ends.
func (s *HTTPServer) AddCheck(name string, fn func(context.Context) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, c := range s.checks {
		if c.name == name {
			s.checks[i].fn = fn
			return
		}
	}
	s.checks = append(s.checks, check{name, fn})
}

// SetReady marks the service ready (once started) or not (when shutting
// down, so traffic drains before the dependencies close).
func (s *HTTPServer) SetReady(ready bool) {
	s.ready.Store(ready)
}

// Start listens on the address at once, so Addr reports the real port,
// and serves in the background until Shutdown.
func (s *HTTPServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return errors.New("service: http: already started")
	}
	ln, err := net.Listen("tcp", s.srv.Addr)
	if err != nil {
		return fmt.Errorf("service: http: listen on %s: %w", s.srv.Addr, err)
	}
	s.ln = ln
	s.served = make(chan struct{})
	go func() {
		defer close(s.served)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http server stopped", "error", err)
		}
	}()
	s.log.Info("http listening", "addr", ln.Addr().String())
	return nil
}

// Addr returns the address listened on once started, else the one
// configured.
func (s *HTTPServer) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.srv.Addr
}

// Shutdown marks the service not ready, stops accepting connections and
// waits, within ctx, for the requests in flight.
func (s *HTTPServer) Shutdown(ctx context.Context) error {
	s.SetReady(false)
	s.mu.Lock()
	served := s.served
	s.mu.Unlock()
	if served == nil {
		return nil
	}
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("service: http: shutdown: %w", err)
	}
	<-served
	return nil
}

// readiness is the JSON body of /healthz and /readyz.
type readiness struct {
	Status string `json:"status"` // "ok", "ready" or "not ready"
	// Reason says why a service not marked ready is not.
	Reason string `json:"reason,omitempty"`
	// Failing maps each failing check to its error.
	Failing map[string]string `json:"failing,omitempty"`
}

func (s *HTTPServer) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, readiness{Status: "ok"})
}

func (s *HTTPServer) readyz(w http.ResponseWriter, r *http.Request) {
	if !s.ready.Load() {
		writeJSON(w, http.StatusServiceUnavailable, readiness{Status: "not ready", Reason: "starting or shutting down"})
		return
	}
	s.mu.Lock()
	checks := append([]check(nil), s.checks...)
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
	defer cancel()
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() { errs[i] = runCheck(ctx, c.fn) })
	}
	wg.Wait()

	failing := map[string]string{}
	for i, err := range errs {
		if err != nil {
			failing[checks[i].name] = err.Error()
		}
	}
	wasFailing := s.failing.Swap(len(failing) > 0)
	switch {
	case len(failing) > 0 && !wasFailing:
		s.log.Warn("readiness checks failing", "failing", failing)
	case len(failing) == 0 && wasFailing:
		s.log.Info("readiness checks pass again")
	}
	if len(failing) > 0 {
		writeJSON(w, http.StatusServiceUnavailable, readiness{Status: "not ready", Failing: failing})
		return
	}
	writeJSON(w, http.StatusOK, readiness{Status: "ready"})
}

// dependencyCollector runs every readiness check of s at each scrape, at
// once and within checkTimeout, and exports each result as
// allot_dependency_up{dependency=<check>}: the outage alerts read it, so
// a service that has lost Redis or NATS says so on its own /metrics.
type dependencyCollector struct {
	s    *HTTPServer
	desc *prometheus.Desc
}

func newDependencyCollector(s *HTTPServer) dependencyCollector {
	return dependencyCollector{s: s, desc: prometheus.NewDesc("allot_dependency_up",
		"1 when the readiness check of a dependency (nats, redis) passes at this scrape, 0 when it fails or takes over 2s.",
		[]string{"dependency"}, nil)}
}

func (c dependencyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c dependencyCollector) Collect(ch chan<- prometheus.Metric) {
	c.s.mu.Lock()
	checks := append([]check(nil), c.s.checks...)
	c.s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	up := make([]float64, len(checks))
	var wg sync.WaitGroup
	for i, chk := range checks {
		wg.Go(func() {
			if runCheck(ctx, chk.fn) == nil {
				up[i] = 1
			}
		})
	}
	wg.Wait()
	for i, chk := range checks {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, up[i], chk.name)
	}
}

// runCheck runs fn, giving up when ctx ends even if fn does not return.
func runCheck(ctx context.Context, fn func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("service: check abandoned: %w", context.Cause(ctx))
	}
}

func writeJSON(w http.ResponseWriter, code int, v readiness) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	// The client may be gone; nothing to do about a failed write.
	_ = json.NewEncoder(w).Encode(v)
}

// NATSCheck is a readiness check that passes while nc is connected and
// answers a round trip to the server.
func NATSCheck(nc *nats.Conn) func(context.Context) error {
	return func(ctx context.Context) error {
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("service: nats: %s", st)
		}
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, checkTimeout)
			defer cancel()
		}
		if err := nc.FlushWithContext(ctx); err != nil {
			return fmt.Errorf("service: nats: round trip: %w", err)
		}
		return nil
	}
}

// RedisCheck is a readiness check that passes while rdb answers PING.
// Any go-redis client will do.
func RedisCheck(rdb interface {
	Ping(ctx context.Context) *redis.StatusCmd
}) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := rdb.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("service: redis: ping: %w", err)
		}
		return nil
	}
}
