package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allot/allot/loadtest/internal/hist"
	"github.com/allot/allot/loadtest/internal/report"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/services/ratelimit"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// smallLimit is what domain small allows each uid per minute.
const smallLimit = 3

// startFront starts a rate limiter on an embedded NATS and miniredis,
// its gRPC front serving, beside the default domain allot, domain small:
// descriptor uid, smallLimit a minute. It returns the front's address
// and a harness on the same NATS and Redis (no stack, no baseline).
func startFront(t *testing.T, o Options) (string, *harness) {
	t.Helper()
	nc, err := nats.Connect(testenv.EmbeddedCoreNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Miniredis(t).Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	cfg := ratelimit.DefaultConfig()
	cfg.Instance = "loadtest"
	cfg.RateLimit.GRPC.Listen = "127.0.0.1:0"
	cfg.RateLimit.GRPC.Domains = []ratelimit.EnvoyDomain{{Domain: "small", Descriptors: []ratelimit.EnvoyDescriptor{{
		Key: "uid", RateLimit: &ratelimit.EnvoyRateLimit{Unit: "minute", RequestsPerUnit: smallLimit}}}}}
	l, err := ratelimit.Start(t.Context(), cfg, ratelimit.Deps{NATS: nc, Redis: rdb, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Stop(context.Background()) })
	h := &harness{o: o, log: slog.New(slog.DiscardHandler), start: time.Now(), ledger: newLedger(),
		t: &target{runID: newRunID(), kind: targetInProcess, cfg: service.Default(), conns: []*nats.Conn{nc}, rdb: rdb}}
	return l.GRPCAddr(), h
}

func smallOptions() Options {
	o := baseOptions(noEnv)
	o.UIDs, o.Concurrency, o.GRPCDomain, o.GRPCDescriptor = 5, 4, "small", "uid"
	return o
}

// counted wraps op to count the requests it makes.
func counted(op reqOp, n *atomic.Int64) reqOp {
	return func(ctx context.Context, c *events.Client, i int64) (string, error) {
		n.Add(1)
		return op(ctx, c, i)
	}
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// The grpc load, briefly, on a limit of 3 a minute over 5 uids: every
// request is an ok, an over_limit or an error, over_limit shows once the
// uids are past their limit, and no more were allowed than the limit.
func TestGRPCLoadCountsAddUp(t *testing.T) {
	addr, h := startFront(t, smallOptions())
	if err := h.t.probeGRPC(t.Context(), h.o, addr); err != nil {
		t.Fatal(err)
	}
	f, err := dialFront(addr, "small", "uid", 2)
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	var sent atomic.Int64
	p := h.requests(t.Context(), reqSpec{name: "grpc", op: counted(h.opGRPC(f), &sent), concurrency: 4, dur: 300 * time.Millisecond})
	ok, over, errs := p.Counts["ok"], p.Counts["over_limit"], sum(p.Errors)
	if sent.Load() == 0 || sent.Load() != ok+over+errs || p.Ops != ok+over || p.Latency.Count != p.Ops {
		t.Errorf("requests %d, ok %d + over_limit %d + errors %d (%v); ops %d, latencies %d", sent.Load(), ok, over, errs, p.Errors, p.Ops, p.Latency.Count)
	}
	if over == 0 || errs != 0 {
		t.Errorf("over_limit %d, errors %v: want over_limit past %d a uid and no errors", over, p.Errors, smallLimit)
	}
	// The probe spent one; a minute's window may turn once in the phase.
	if ok > 2*5*smallLimit {
		t.Errorf("ok %d, more than 5 uids x %d in two windows", ok, smallLimit)
	}
}

// Errors are counted by their gRPC code, not as answers.
func TestGRPCLoadCountsErrorsByCode(t *testing.T) {
	addr, h := startFront(t, smallOptions())
	f, err := dialFront(addr, "nope", "uid", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	var sent atomic.Int64
	p := h.requests(t.Context(), reqSpec{name: "grpc", op: counted(h.opGRPC(f), &sent), concurrency: 2, dur: 50 * time.Millisecond})
	if p.Ops != 0 || p.Errors["grpc_not_found"] == 0 || p.Errors["grpc_not_found"] != sent.Load() {
		t.Errorf("ops %d, errors %v of %d requests: want every one grpc_not_found", p.Ops, p.Errors, sent.Load())
	}
}

// The probe turns each likely mistake into one clear error.
func TestGRPCProbeRefusesBadInput(t *testing.T) {
	addr, h := startFront(t, smallOptions())
	for _, tc := range []struct {
		name, addr, domain, key, want string
	}{
		{"unreachable", "127.0.0.1:1", "small", "uid", "cannot reach the gRPC front at 127.0.0.1:1"},
		{"unknown domain", addr, "nope", "uid", `does not know domain "nope" (-grpc-domain)`},
		{"no limit for the key", addr, "small", "user", `has no limit for domain "small", descriptor user=`},
		{"not a gRPC server", strings.TrimPrefix(h.t.conns[0].ConnectedUrl(), "nats://"), "small", "uid", "cannot reach the gRPC front at 127.0.0.1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := h.o
			o.GRPCDomain, o.GRPCDescriptor = tc.domain, tc.key
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			err := h.t.probeGRPC(ctx, o, tc.addr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("probe = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	o := h.o
	o.GRPCDomain = "allot" // the default domain, a uid's own limit
	if err := h.t.probeGRPC(t.Context(), o, addr); err != nil {
		t.Errorf("probe of domain allot: %v", err)
	}
}

// A run against an unreachable front ends in setup, before any process
// starts, with the probe's error.
func TestGRPCRunRefusesAnUnreachableFront(t *testing.T) {
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	code := run(ctx, []string{"-scenarios", "grpc", "-grpc", "127.0.0.1:1", "-duration", "2s", "-out", out}, &stdout, &stderr, noEnv)
	if code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	r := readReport(t, out)
	if r.Complete || len(r.Incomplete) == 0 || !strings.Contains(r.Incomplete[0], "setup failed: cannot reach the gRPC front at 127.0.0.1:1") {
		t.Errorf("report: complete %v, incomplete %q", r.Complete, r.Incomplete)
	}
}

func TestGRPCErrKind(t *testing.T) {
	for err, want := range map[error]string{
		status.Error(codes.Unavailable, "down"):                             "grpc_unavailable",
		fmt.Errorf("wrapped: %w", status.Error(codes.DeadlineExceeded, "")): "grpc_deadline_exceeded",
		fmt.Errorf("%w: UNKNOWN", errOverallCode):                           "grpc_unknown_overall_code",
		events.ErrTimeout:   "timeout",
		errors.New("plain"): "other",
	} {
		if got := errKind(err); got != want {
			t.Errorf("errKind(%v) = %q, want %q", err, got, want)
		}
	}
}

// Each grpc phase is set beside the raw responder, ratelimit.check and,
// with two fronts, allot's beside the other, as ratios where above 1 is
// better.
func TestGRPCHeadlines(t *testing.T) {
	phase := func(name string, rate, p99 float64) report.Phase {
		return report.Phase{Name: name, Throughput: rate, Latency: &hist.Summary{Count: 1, P50: p99 / 2, P99: p99}}
	}
	hs := headlines([]report.Phase{phase("request.raw", 20000, 2), phase("ratelimit", 10000, 4), phase("grpc", 5000, 8), phase("grpc.allot", 15000, 4)})
	got := map[string]float64{}
	for _, h := range hs {
		got[h.Name] = h.Ratio
	}
	for name, want := range map[string]float64{
		"grpc throughput": 0.25, "grpc p99": 0.25, "grpc throughput vs ratelimit": 0.5, "grpc p99 vs ratelimit": 0.5,
		"grpc.allot throughput": 0.75, "grpc.allot throughput vs ratelimit": 1.5, "grpc.allot throughput vs grpc": 3, "grpc.allot p99 vs grpc": 2,
	} {
		if got[name] != want {
			t.Errorf("%s ratio = %v, want %v (all: %v)", name, got[name], want, got)
		}
	}
}
