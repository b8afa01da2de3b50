package ratelimit

import (
	"errors"
	"fmt"
	"net"
	"sync"

	rlv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// grpcFront is the Envoy rate limit service front: a gRPC listener whose
// ShouldRateLimit decides each descriptor on the same windows and scripts
// as ratelimit.check, batched across requests as the NATS path is.
type grpcFront struct {
	rlv3.UnimplementedRateLimitServiceServer
	l        *Limiter
	cfg      GRPCSettings
	domains  envoyDomains
	metrics  *grpcMetrics
	batches  *batcher
	server   *grpc.Server
	health   *health.Server
	listener net.Listener
	served   sync.WaitGroup
}

// grpcMetrics are the front's series. domain takes the configured
// domains and "(unknown)", so its values are bounded by the config.
type grpcMetrics struct {
	requests    *prometheus.CounterVec
	descriptors *prometheus.CounterVec
}

func newGRPCMetrics(reg prometheus.Registerer) (*grpcMetrics, error) {
	m := &grpcMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_ratelimit_grpc_requests_total",
			Help: "ShouldRateLimit requests of the Envoy gRPC front, by domain ((unknown) for one not configured) and code: the overall code (OK, OVER_LIMIT) of an answer, or the gRPC status code of an error.",
		}, []string{"domain", "code"}),
		descriptors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_ratelimit_grpc_descriptors_total",
			Help: "Descriptors of answered ShouldRateLimit requests, by domain and result: limited (a limit decided it), unmatched (no configured limit; OK), unmatched_denied (no configured limit, denied by deny_unmatched), unmatched_shadow_denied (would have been unmatched_denied; OK under ratelimit.shadow), unlimited, replaced (another limit of the request replaced its own).",
		}, []string{"domain", "result"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.descriptors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// newGRPCFront compiles the domains of cfg.RateLimit.GRPC; it listens on
// nothing until start.
func newGRPCFront(l *Limiter, reg prometheus.Registerer) (*grpcFront, error) {
	g := l.cfg.RateLimit.GRPC
	domains, err := g.AllDomains()
	if err != nil {
		return nil, err
	}
	m, err := newGRPCMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &grpcFront{l: l, cfg: g, domains: compileEnvoy(domains, g.DenyUnmatched), metrics: m}, nil
}

// start listens on ratelimit.grpc.listen, if set, and serves there.
func (f *grpcFront) start() error {
	if f.cfg.Listen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", f.cfg.Listen)
	if err != nil {
		return fmt.Errorf("ratelimit: grpc: %w", err)
	}
	f.serve(ln)
	f.l.log.Info("envoy rate limit service listening", "addr", ln.Addr().String(), "domains", len(f.domains))
	return nil
}

// serve serves on ln (tests pass their own listener).
func (f *grpcFront) serve(ln net.Listener) {
	f.listener = ln
	f.batches = newBatcher(f.l, f.l.cfg.RateLimit.Pipelines)
	f.server = grpc.NewServer(grpc.MaxRecvMsgSize(f.cfg.MaxRecvBytes))
	rlv3.RegisterRateLimitServiceServer(f.server, f)
	f.health = health.NewServer()
	f.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	f.health.SetServingStatus(rlv3.RateLimitService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(f.server, f.health)
	reflection.Register(f.server)
	f.served.Add(1)
	go func() {
		defer f.served.Done()
		if err := f.server.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			f.l.log.Error("grpc server stopped", "err", err)
		}
	}()
}

// Addr is the listener's address, nil when the front is off.
func (f *grpcFront) addr() net.Addr {
	if f == nil || f.listener == nil {
		return nil
	}
	return f.listener.Addr()
}

// stop says NOT_SERVING, lets the requests being answered finish and
// stops the batcher.
func (f *grpcFront) stop() {
	if f == nil || f.server == nil {
		return
	}
	f.health.Shutdown()
	f.server.GracefulStop()
	f.served.Wait()
	f.batches.stop()
}

// GRPCAddr is the address the Envoy gRPC front listens on, or "" when
// it is off (ratelimit.grpc.listen unset).
func (l *Limiter) GRPCAddr() string {
	if a := l.grpc.addr(); a != nil {
		return a.String()
	}
	return ""
}

// statusError is an error answer, counted under domain.
func (f *grpcFront) statusError(domain string, code codes.Code, format string, args ...any) error {
	f.metrics.requests.WithLabelValues(domain, code.String()).Inc()
	return status.Errorf(code, format, args...)
}
