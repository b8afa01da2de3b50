package ratelimit

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// edgeConfig is an envoyproxy/ratelimit config file as its users write
// them: per-value limits, a nested limit that replaces its parent's,
// a wildcard that is unlimited and a limit in shadow mode.
const edgeConfig = `
domain: edge
descriptors:
  - key: remote_address
    rate_limit:
      unit: minute
      requests_per_unit: 2
  - key: generic_key
    value: api
    rate_limit:
      name: api
      unit: second
      requests_per_unit: 5
    descriptors:
      - key: header_match
        value: admin
        detailed_metric: true
        rate_limit:
          name: admin
          replaces:
            - name: api
          unit: MINUTE
          requests_per_unit: 1
  - key: path
    value: /static/*
    rate_limit:
      unlimited: true
  - key: database
    value: users
    shadow_mode: true
    rate_limit:
      unit: hour
      requests_per_unit: 1
`

// grpcEnv starts a rate limiter with its gRPC front on a free port,
// serving edgeConfig beside the default domain, and a client to it.
func grpcEnv(t *testing.T, edit func(*Config)) (*env, rlv3.RateLimitServiceClient, *grpc.ClientConn) {
	return grpcEnvOn(t, edit, startEnv)
}

// grpcEnvOn is grpcEnv with start starting the rate limiter.
func grpcEnvOn(t *testing.T, edit func(*Config), start func(*testing.T, Config) *env) (*env, rlv3.RateLimitServiceClient, *grpc.ClientConn) {
	t.Helper()
	cfg := testConfig()
	cfg.RateLimit.GRPC.Listen = "127.0.0.1:0"
	edge, err := ReadEnvoyDomain([]byte(edgeConfig))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RateLimit.GRPC.Domains = []EnvoyDomain{edge}
	if edit != nil {
		edit(&cfg)
	}
	e := start(t, cfg)
	rls, conn := dialGRPC(t, e.lim.GRPCAddr())
	return e, rls, conn
}

func dialGRPC(t testing.TB, addr string) (rlv3.RateLimitServiceClient, *grpc.ClientConn) {
	t.Helper()
	if addr == "" {
		t.Fatal("the gRPC front is not listening")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return rlv3.NewRateLimitServiceClient(conn), conn
}

// desc is a request descriptor of key, value pairs.
func desc(kv ...string) *rlcommon.RateLimitDescriptor {
	d := &rlcommon.RateLimitDescriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return d
}

func limited(code rlv3.RateLimitResponse_Code, name string, rpu uint32, unit rlv3.RateLimitResponse_RateLimit_Unit, remaining uint32, reset time.Duration) *rlv3.RateLimitResponse_DescriptorStatus {
	return &rlv3.RateLimitResponse_DescriptorStatus{Code: code, CurrentLimit: &rlv3.RateLimitResponse_RateLimit{Name: name, RequestsPerUnit: rpu, Unit: unit},
		LimitRemaining: remaining, DurationUntilReset: durationpb.New(reset)}
}

func headers(limit, remaining, reset string) []*corev3.HeaderValue {
	return []*corev3.HeaderValue{{Key: HeaderLimit, Value: limit}, {Key: HeaderRemaining, Value: remaining}, {Key: HeaderReset, Value: reset}}
}

// TestGRPCSharesUIDWindow spends a uid's whole limit (the "ratelimit"
// grant, 500) through the gRPC front; ratelimit.check.<uid> over NATS
// then finds that very window empty, and the next gRPC hit is over.
func TestGRPCSharesUIDWindow(t *testing.T) { testGRPCSharesUIDWindow(t, startEnv) }

func testGRPCSharesUIDWindow(t *testing.T, start func(*testing.T, Config) *env) {
	e, rls, _ := grpcEnvOn(t, nil, start)
	req := &rlv3.RateLimitRequest{Domain: "allot", Descriptors: []*rlcommon.RateLimitDescriptor{desc("uid", "u-500")}}
	for i := range 500 {
		resp, err := rls.ShouldRateLimit(t.Context(), req)
		if err != nil {
			t.Fatalf("hit %d: %v", i, err)
		}
		if resp.OverallCode != rlv3.RateLimitResponse_OK || resp.Statuses[0].LimitRemaining != uint32(499-i) {
			t.Fatalf("hit %d: %v", i, resp)
		}
	}
	if r := e.check("u-500", "", events.Cost(0)); r.Allowed || r.Limit != 500 || r.Remaining != 0 {
		t.Errorf("ratelimit.check.u-500 cost 0 after 500 gRPC hits = %+v, want limit 500 remaining 0 refused", r)
	}
	resp, err := rls.ShouldRateLimit(t.Context(), req)
	if err != nil || resp.OverallCode != rlv3.RateLimitResponse_OVER_LIMIT {
		t.Errorf("hit 501 = %v, %v; want OVER_LIMIT", resp, err)
	}
	if r := e.check("u-500", "", nil); r.Allowed {
		t.Errorf("NATS check after the limit = %+v", r)
	}
}

// TestGRPCEnvoyRequests sends what Envoy sends for a route with several
// rate_limits actions (one descriptor each, headers mode) and checks
// every status, the overall code and the headers.
func TestGRPCEnvoyRequests(t *testing.T) {
	e, rls, _ := grpcEnv(t, nil)
	req := &rlv3.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{
		desc("remote_address", "10.0.0.1"),
		desc("generic_key", "api"),
		desc("generic_key", "api", "header_match", "admin"),
		desc("path", "/static/app.js"),
		desc("not_configured", "x"),
		desc("database", "users"),
	}}
	ok, over := rlv3.RateLimitResponse_OK, rlv3.RateLimitResponse_OVER_LIMIT
	unmatched := &rlv3.RateLimitResponse_DescriptorStatus{Code: ok}
	unlimited := &rlv3.RateLimitResponse_DescriptorStatus{Code: ok, LimitRemaining: math.MaxUint32}
	hour := rlv3.RateLimitResponse_RateLimit_HOUR
	minute := rlv3.RateLimitResponse_RateLimit_MINUTE
	want := []*rlv3.RateLimitResponse{{
		OverallCode: ok,
		Statuses: []*rlv3.RateLimitResponse_DescriptorStatus{
			limited(ok, "", 2, minute, 1, time.Minute),
			unmatched, // replaced by admin
			limited(ok, "admin", 1, minute, 0, time.Minute),
			unlimited, unmatched,
			limited(ok, "", 1, hour, 0, time.Hour),
		},
		ResponseHeadersToAdd: headers("1", "0", "60"),
	}, {
		OverallCode: over,
		Statuses: []*rlv3.RateLimitResponse_DescriptorStatus{
			limited(ok, "", 2, minute, 0, time.Minute),
			unmatched,
			limited(over, "admin", 1, minute, 0, time.Minute),
			unlimited, unmatched,
			limited(ok, "", 1, hour, 0, time.Hour), // shadow mode: over, yet OK
		},
		ResponseHeadersToAdd: headers("1", "0", "60"),
	}}
	// windowStart is on a minute but maybe not on an hour.
	now := e.clock.Now()
	untilHour := now.Truncate(time.Hour).Add(time.Hour).Sub(now)
	for _, w := range want {
		w.Statuses[5].DurationUntilReset = durationpb.New(untilHour)
	}
	for i, w := range want {
		got, err := rls.ShouldRateLimit(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(w, got, protocmp.Transform()); diff != "" {
			t.Errorf("request %d (-want +got):\n%s", i, diff)
		}
	}
	// Another address has its own window; hits_addend over the limit is
	// over, not an error.
	got, err := rls.ShouldRateLimit(t.Context(), &rlv3.RateLimitRequest{Domain: "edge", HitsAddend: 3,
		Descriptors: []*rlcommon.RateLimitDescriptor{desc("remote_address", "10.0.0.2")}})
	if err != nil || got.OverallCode != over || got.Statuses[0].LimitRemaining != 2 {
		t.Errorf("hits_addend 3 of 2 = %v, %v", got, err)
	}
	// A descriptor's own hits_addend takes precedence over the request's.
	d := desc("remote_address", "10.0.0.3")
	d.HitsAddend = wrapperspb.UInt64(2)
	got, err = rls.ShouldRateLimit(t.Context(), &rlv3.RateLimitRequest{Domain: "edge", HitsAddend: 5, Descriptors: []*rlcommon.RateLimitDescriptor{d}})
	if err != nil || got.OverallCode != ok || got.Statuses[0].LimitRemaining != 0 {
		t.Errorf("descriptor hits_addend 2 = %v, %v", got, err)
	}
	if n := testutil.ToFloat64(e.lim.grpc.metrics.requests.WithLabelValues("edge", "OVER_LIMIT")); n != 2 {
		t.Errorf("OVER_LIMIT requests counted %v, want 2", n)
	}
	if n := testutil.ToFloat64(e.lim.metrics.decisions.WithLabelValues("(envoy:edge)", "shadow_denied")); n != 1 {
		t.Errorf("shadow denials counted %v, want 1", n)
	}
	if n := testutil.ToFloat64(e.lim.metrics.decisions.WithLabelValues("(envoy:edge:generic_key=api.header_match=admin)", "denied")); n != 1 {
		t.Errorf("detailed_metric denials counted %v, want 1", n)
	}
}

// TestGRPCBadInput checks that every malformed or oversized request gets
// a clear status code, counted, and that the server goes on answering.
func TestGRPCBadInput(t *testing.T) {
	e, rls, conn := grpcEnv(t, nil)
	many := make([]*rlcommon.RateLimitDescriptor, 10_000)
	for i := range many {
		many[i] = desc("remote_address", "10.0.0.1")
	}
	huge := desc("remote_address", strings.Repeat("x", 10<<20))
	overHits := desc("remote_address", "10.0.0.1")
	overHits.HitsAddend = wrapperspb.UInt64(1 << 32)
	tests := []struct {
		name string
		req  *rlv3.RateLimitRequest
		code codes.Code
		msg  string
	}{
		{"no domain", &rlv3.RateLimitRequest{Descriptors: []*rlcommon.RateLimitDescriptor{desc("uid", "u-1")}}, codes.InvalidArgument, "domain is required"},
		{"no descriptors", &rlv3.RateLimitRequest{Domain: "allot"}, codes.InvalidArgument, "at least one is required"},
		{"empty descriptor", &rlv3.RateLimitRequest{Domain: "allot", Descriptors: []*rlcommon.RateLimitDescriptor{{}}}, codes.InvalidArgument, "descriptors[0]: at least one entry"},
		{"empty key", &rlv3.RateLimitRequest{Domain: "allot", Descriptors: []*rlcommon.RateLimitDescriptor{desc("", "v")}}, codes.InvalidArgument, "descriptors[0].entries[0]"},
		{"long value", &rlv3.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{desc("k", strings.Repeat("v", 1025))}}, codes.InvalidArgument, "value at most 1024"},
		{"bad uid", &rlv3.RateLimitRequest{Domain: "allot", Descriptors: []*rlcommon.RateLimitDescriptor{desc("uid", "u 1")}}, codes.InvalidArgument, "uid: must be"},
		{"unknown domain", &rlv3.RateLimitRequest{Domain: "nope", Descriptors: []*rlcommon.RateLimitDescriptor{desc("uid", "u-1")}}, codes.NotFound, `unknown domain "nope"`},
		{"10,000 descriptors", &rlv3.RateLimitRequest{Domain: "edge", Descriptors: many}, codes.ResourceExhausted, "max_descriptors (64)"},
		{"10 MB", &rlv3.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{huge}}, codes.ResourceExhausted, "larger than max"},
		{"hits_addend over 2^31", &rlv3.RateLimitRequest{Domain: "edge", HitsAddend: 1 << 31, Descriptors: []*rlcommon.RateLimitDescriptor{desc("remote_address", "10.0.0.1")}}, codes.InvalidArgument, "hits_addend: 2147483648"},
		{"descriptor hits_addend 2^32", &rlv3.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{overHits}}, codes.InvalidArgument, "descriptors[0].hits_addend"},
		{"limit override in months", &rlv3.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{{
			Entries: desc("k", "v").Entries, Limit: &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1, Unit: 5}}}}, codes.InvalidArgument, "MONTH is not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := rls.ShouldRateLimit(t.Context(), tt.req)
			if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("err = %v, want %v containing %q", err, tt.code, tt.msg)
			}
		})
	}
	if n := testutil.ToFloat64(e.lim.grpc.metrics.requests.WithLabelValues("(unknown)", "NotFound")); n != 1 {
		t.Errorf("unknown domain counted %v, want 1", n)
	}
	// Still serving, and healthy.
	if _, err := rls.ShouldRateLimit(t.Context(), &rlv3.RateLimitRequest{Domain: "allot", Descriptors: []*rlcommon.RateLimitDescriptor{desc("uid", "u-1")}}); err != nil {
		t.Fatal(err)
	}
	h, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{Service: "envoy.service.ratelimit.v3.RateLimitService"})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, %v", h, err)
	}
}

// TestGRPCLimitOverride applies the limit Envoy sends with a descriptor
// in place of the configured one, on the descriptor's own window.
func TestGRPCLimitOverride(t *testing.T) {
	_, rls, _ := grpcEnv(t, nil)
	d := desc("remote_address", "10.9.9.9")
	d.Limit = &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1, Unit: 3} // HOUR
	req := &rlv3.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{d}}
	for i, want := range []rlv3.RateLimitResponse_Code{rlv3.RateLimitResponse_OK, rlv3.RateLimitResponse_OVER_LIMIT} {
		got, err := rls.ShouldRateLimit(t.Context(), req)
		if err != nil || got.OverallCode != want || got.Statuses[0].CurrentLimit.GetUnit() != rlv3.RateLimitResponse_RateLimit_HOUR {
			t.Errorf("request %d = %v, %v; want %v", i, got, err, want)
		}
	}
}

// TestGRPCOff checks that no listener starts without ratelimit.grpc.listen.
func TestGRPCOff(t *testing.T) {
	e := startEnv(t, testConfig())
	if a := e.lim.GRPCAddr(); a != "" {
		t.Errorf("GRPCAddr = %q, want none", a)
	}
}

// TestGRPCDenyUnmatched checks ratelimit.grpc.deny_unmatched and a
// domain's allot_deny_unmatched on a request with one matched and one
// unmatched descriptor: the matched one is spent either way.
func TestGRPCDenyUnmatched(t *testing.T) { testGRPCDenyUnmatched(t, startEnv) }

func testGRPCDenyUnmatched(t *testing.T, start func(*testing.T, Config) *env) {
	ok, over := rlv3.RateLimitResponse_OK, rlv3.RateLimitResponse_OVER_LIMIT
	no, yes := false, true
	tests := []struct {
		name   string
		global bool // ratelimit.grpc.deny_unmatched
		shadow bool // ratelimit.shadow
		edge   *bool
		// The answers and counted results of edge and of the default
		// domain allot, each asked once with an unmatched descriptor.
		edgeCode, allotCode     rlv3.RateLimitResponse_Code
		edgeResult, allotResult string
	}{
		{"default: OK as envoyproxy/ratelimit", false, false, nil, ok, ok, "unmatched", "unmatched"},
		{"deny_unmatched", true, false, nil, over, over, "unmatched_denied", "unmatched_denied"},
		{"deny_unmatched under ratelimit.shadow", true, true, nil, ok, ok, "unmatched_shadow_denied", "unmatched_shadow_denied"},
		{"a domain allows what the setting denies", true, false, &no, ok, over, "unmatched", "unmatched_denied"},
		{"a domain denies what the setting allows", false, false, &yes, over, ok, "unmatched_denied", "unmatched"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, rls, _ := grpcEnvOn(t, func(c *Config) {
				c.RateLimit.GRPC.DenyUnmatched = tt.global
				c.RateLimit.Shadow = tt.shadow
				c.RateLimit.GRPC.Domains[0].AllotDenyUnmatched = tt.edge
			}, start)
			got, err := rls.ShouldRateLimit(t.Context(), &rlv3.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{
				desc("remote_address", "10.0.0.1"), desc("generic_key", "api", "header_match", "user")}})
			if err != nil {
				t.Fatal(err)
			}
			if got.OverallCode != tt.edgeCode || len(got.Statuses) != 2 {
				t.Fatalf("edge = %v, want overall %v", got, tt.edgeCode)
			}
			if s := got.Statuses[0]; s.Code != ok || s.CurrentLimit.GetRequestsPerUnit() != 2 || s.LimitRemaining != 1 {
				t.Errorf("the matched descriptor = %v, want OK, spent to 1 of 2", s)
			}
			if diff := cmp.Diff(&rlv3.RateLimitResponse_DescriptorStatus{Code: tt.edgeCode}, got.Statuses[1], protocmp.Transform()); diff != "" {
				t.Errorf("the unmatched descriptor (-want +got):\n%s", diff)
			}
			if h := got.ResponseHeadersToAdd; len(h) != 3 || h[0].Value != "2" || h[1].Value != "1" {
				t.Errorf("headers = %v, want the matched descriptor's", h)
			}
			got, err = rls.ShouldRateLimit(t.Context(), &rlv3.RateLimitRequest{Domain: "allot", Descriptors: []*rlcommon.RateLimitDescriptor{desc("user", "u-1")}})
			if err != nil {
				t.Fatal(err)
			}
			want := &rlv3.RateLimitResponse{OverallCode: tt.allotCode, Statuses: []*rlv3.RateLimitResponse_DescriptorStatus{{Code: tt.allotCode}}}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("allot (-want +got):\n%s", diff)
			}
			m := e.lim.grpc.metrics
			for _, c := range []struct{ domain, result string }{{"edge", tt.edgeResult}, {"allot", tt.allotResult}} {
				if n := testutil.ToFloat64(m.descriptors.WithLabelValues(c.domain, c.result)); n != 1 {
					t.Errorf("%s descriptors counted %s: %v, want 1", c.domain, c.result, n)
				}
			}
			if n := testutil.ToFloat64(m.requests.WithLabelValues("edge", tt.edgeCode.String())); n != 1 {
				t.Errorf("edge requests counted %v: %v, want 1", tt.edgeCode, n)
			}
			// An unknown domain is an error still.
			_, err = rls.ShouldRateLimit(t.Context(), &rlv3.RateLimitRequest{Domain: "nope", Descriptors: []*rlcommon.RateLimitDescriptor{desc("k", "v")}})
			if status.Code(err) != codes.NotFound {
				t.Errorf("unknown domain = %v, want NotFound", err)
			}
		})
	}
}
