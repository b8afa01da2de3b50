package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
	"unicode"

	"github.com/allot/allot/loadtest/internal/report"
	"github.com/allot/allot/pkg/events"
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// The grpc scenario asks ShouldRateLimit of an Envoy RLS front
// (envoy.service.ratelimit.v3.RateLimitService) as Envoy asks it: one
// descriptor per request, whose key is -grpc-descriptor and whose value
// is a uid drawn at random from the run's -uids, hits_addend 1, in
// -grpc-domain. The front is the in-process stack's own (the rate
// limiter's gRPC listener), or the one at -grpc: any implementation of
// the service, such as an envoyproxy/ratelimit someone runs beside the
// harness, so both can be put under the same load. Nothing in the
// requests is allot's: only the domain and the key must match the
// front's config.

// rlsFront is a few client connections to one front, as a few Envoy
// workers hold them.
type rlsFront struct {
	name, what  string // the phase
	addr        string
	domain, key string
	conns       []*grpc.ClientConn
	clients     []rlv3.RateLimitServiceClient
}

func dialFront(addr, domain, key string, n int) (*rlsFront, error) {
	f := &rlsFront{addr: addr, domain: domain, key: key}
	for range n {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			f.close()
			return nil, fmt.Errorf("the gRPC front at %s: %w", addr, err)
		}
		f.conns = append(f.conns, conn)
		f.clients = append(f.clients, rlv3.NewRateLimitServiceClient(conn))
	}
	return f, nil
}

func (f *rlsFront) close() {
	for _, c := range f.conns {
		_ = c.Close()
	}
}

// request is one decision for uid.
func (f *rlsFront) request(uid string) *rlv3.RateLimitRequest {
	return &rlv3.RateLimitRequest{Domain: f.domain, HitsAddend: 1, Descriptors: []*rlcommon.RateLimitDescriptor{{
		Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: f.key, Value: uid}}}}}
}

// probeGRPC sends one request to the front at addr before the run
// relies on it, so that a wrong address, domain or key is one clear
// error at the start instead of a report full of errors (or, against a
// front that answers OK to what it has no limit for, as
// envoyproxy/ratelimit does for an unknown domain, a report full of
// decisions that decided nothing).
func (t *target) probeGRPC(ctx context.Context, o Options, addr string) error {
	f, err := dialFront(addr, o.GRPCDomain, o.GRPCDescriptor, 1)
	if err != nil {
		return err
	}
	defer f.close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	desc := fmt.Sprintf("domain %q, descriptor %s=%s", f.domain, f.key, t.uid(0))
	resp, err := f.clients[0].ShouldRateLimit(pctx, f.request(t.uid(0)))
	switch code := status.Code(err); code {
	case codes.OK:
	case codes.Unavailable, codes.DeadlineExceeded:
		return fmt.Errorf("cannot reach the gRPC front at %s: %s", addr, status.Convert(err).Message())
	case codes.NotFound:
		return fmt.Errorf("the gRPC front at %s does not know domain %q (-grpc-domain): %s", addr, f.domain, status.Convert(err).Message())
	case codes.Unimplemented:
		return fmt.Errorf("%s does not serve envoy.service.ratelimit.v3.RateLimitService: %s", addr, status.Convert(err).Message())
	default:
		return fmt.Errorf("the gRPC front at %s refused the first request (%s): %s: %s", addr, desc, code, status.Convert(err).Message())
	}
	if st := resp.GetStatuses(); len(st) != 1 || st[0].GetCurrentLimit() == nil {
		return fmt.Errorf("the gRPC front at %s has no limit for %s: its answer (%s) carries no current_limit, as a front answers a domain or key its config does not have; check -grpc-domain and -grpc-descriptor against its config",
			addr, desc, resp.GetOverallCode())
	}
	return nil
}

// grpcFronts are the fronts the grpc scenario loads, one phase each: the
// one at -grpc (default the stack's) as phase grpc, and with -grpc on
// the inprocess target the stack's own too, as grpc.allot, under the
// same load in the same run.
func (h *harness) grpcFronts() []rlsFront {
	load := fmt.Sprintf(", one descriptor %s=<uid of %d at random>, hits_addend 1", h.o.GRPCDescriptor, h.o.UIDs)
	if h.o.GRPC == "" {
		return []rlsFront{{name: "grpc", addr: h.t.grpcAddr, domain: h.o.GRPCDomain, key: h.o.GRPCDescriptor,
			what: "ShouldRateLimit on the stack's Envoy RLS front, domain " + h.o.GRPCDomain + load}}
	}
	fs := []rlsFront{{name: "grpc", addr: h.o.GRPC, domain: h.o.GRPCDomain, key: h.o.GRPCDescriptor,
		what: "ShouldRateLimit on the Envoy RLS front at " + h.o.GRPC + ", domain " + h.o.GRPCDomain + load}}
	if h.t.grpcAddr != "" {
		fs = append(fs, rlsFront{name: "grpc.allot", addr: h.t.grpcAddr, domain: "allot", key: "uid",
			what: "ShouldRateLimit on the stack's own front, domain allot, the same load"})
	}
	return fs
}

// grpcPhases runs a phase per front of d each; false when the run ended.
func (h *harness) grpcPhases(ctx context.Context, step func(func() report.Phase) bool, d time.Duration) bool {
	for _, spec := range h.grpcFronts() {
		ok := step(func() report.Phase {
			f, err := dialFront(spec.addr, spec.domain, spec.key, clientConns)
			if err != nil {
				return report.Phase{Name: spec.name, What: spec.what, Incomplete: err.Error()}
			}
			defer f.close()
			return h.requests(ctx, reqSpec{name: spec.name, what: spec.what, op: h.opGRPC(f),
				rate: h.o.ReqRate, concurrency: h.o.Concurrency, dur: d})
		})
		if !ok {
			return false
		}
	}
	return true
}

// errOverallCode is an answer that is neither OK nor OVER_LIMIT.
var errOverallCode = errors.New("an overall_code neither OK nor OVER_LIMIT")

// opGRPC asks f for a uid drawn at random; its outcomes are ok and
// over_limit, answers both; a gRPC error is counted by its code.
func (h *harness) opGRPC(f *rlsFront) reqOp {
	return func(ctx context.Context, _ *events.Client, i int64) (string, error) {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		resp, err := f.clients[int(i%int64(len(f.clients)))].ShouldRateLimit(rctx, f.request(h.t.uid(rand.IntN(h.o.UIDs))))
		if err != nil {
			return "", err
		}
		switch resp.GetOverallCode() {
		case rlv3.RateLimitResponse_OK:
			return "ok", nil
		case rlv3.RateLimitResponse_OVER_LIMIT:
			return "over_limit", nil
		}
		return "", fmt.Errorf("%w: %s", errOverallCode, resp.GetOverallCode())
	}
}

// grpcErrKind names a gRPC status for the report: grpc_unavailable,
// grpc_deadline_exceeded, ...; "" for an error that carries none.
func grpcErrKind(err error) string {
	if errors.Is(err, errOverallCode) {
		return "grpc_unknown_overall_code"
	}
	var gs interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &gs) {
		return ""
	}
	var b strings.Builder
	b.WriteString("grpc")
	for i, r := range status.Code(err).String() {
		if unicode.IsUpper(r) || i == 0 {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// grpcHeadlines sets each grpc phase beside the raw responder, beside
// ratelimit.check over NATS and, with two fronts, allot's beside the
// other, all from the same run.
func grpcHeadlines(by map[string]report.Phase) []report.Headline {
	var out []report.Headline
	vs := func(name, label, baseName, baseWhat string, latency bool, pick func(report.Phase) float64) {
		p, ok := by[name]
		if !ok || pick(p) == 0 {
			return
		}
		h := report.Headline{Name: name + " " + label, Value: pick(p), Unit: "req/s"}
		if latency {
			h.Unit = "ms"
		}
		if b, ok := by[baseName]; ok && pick(b) > 0 {
			h.Baseline, h.BaseVal, h.Ratio = baseWhat, pick(b), pick(p)/pick(b)
			if latency {
				h.Ratio = pick(b) / pick(p)
			}
		}
		out = append(out, h)
	}
	rate := func(p report.Phase) float64 { return p.Throughput }
	q := func(f func(s reportSummary) float64) func(report.Phase) float64 {
		return func(p report.Phase) float64 {
			if p.Latency == nil {
				return 0
			}
			return f(*p.Latency)
		}
	}
	p50 := q(func(s reportSummary) float64 { return s.P50 })
	p99 := q(func(s reportSummary) float64 { return s.P99 })
	raw, check := "raw request/reply, one Redis GET", "ratelimit.check over NATS"
	for _, name := range []string{"grpc", "grpc.allot"} {
		vs(name, "throughput", "request.raw", raw, false, rate)
		vs(name, "p50", "request.raw", raw, true, p50)
		vs(name, "p99", "request.raw", raw, true, p99)
		if _, ok := by["ratelimit"]; ok {
			vs(name, "throughput vs ratelimit", "ratelimit", check, false, rate)
			vs(name, "p50 vs ratelimit", "ratelimit", check, true, p50)
			vs(name, "p99 vs ratelimit", "ratelimit", check, true, p99)
		}
	}
	if _, ok := by["grpc.allot"]; ok {
		other := "the front at -grpc, the same load"
		vs("grpc.allot", "throughput vs grpc", "grpc", other, false, rate)
		vs("grpc.allot", "p99 vs grpc", "grpc", other, true, p99)
	}
	return out
}
