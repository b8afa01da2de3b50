//go:build integration

package ratelimit

import (
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/testenv"
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/redis/go-redis/v9"
)

// startRealEnv starts a rate limiter on the real NATS and Redis, under
// key prefixes and subjects of the test's own.
func startRealEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	nc := testenv.NATS(t)
	open, prefix := realFactory(t)
	cfg.Redis.KeyPrefix = prefix
	cfg.Subjects.RateLimit = prefix[:len(prefix)-1] + ".ratelimit"
	cfg.RateLimit.Timeout = 2 * time.Second
	e := startEnvOn(t, cfg, nc, open().(*redis.Client), nil)
	e.client, _ = events.NewClient(nc, events.ClientOptions{Timeout: 5 * time.Second, Subjects: cfg.Subjects})
	return e
}

// TestIntegrationGRPCSharesUIDWindow is TestGRPCSharesUIDWindow on the
// real Redis: 500 gRPC hits leave ratelimit.check.<uid> at 0.
func TestIntegrationGRPCSharesUIDWindow(t *testing.T) { testGRPCSharesUIDWindow(t, startRealEnv) }

// TestIntegrationGRPCEnvoyRequests sends Envoy's request shape to the
// front on the real Redis, where each descriptor's window is its own key
// under the test's prefix.
func TestIntegrationGRPCEnvoyRequests(t *testing.T) {
	e, rls, _ := grpcEnvOn(t, nil, startRealEnv)
	req := &rlv3.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{
		desc("remote_address", "10.0.0.1"), desc("generic_key", "api", "header_match", "admin"), desc("not_configured", "x")}}
	want := []rlv3.RateLimitResponse_Code{rlv3.RateLimitResponse_OK, rlv3.RateLimitResponse_OVER_LIMIT}
	for i, w := range want {
		got, err := rls.ShouldRateLimit(t.Context(), req)
		if err != nil || got.OverallCode != w || len(got.Statuses) != 3 || got.Statuses[2].CurrentLimit != nil || len(got.ResponseHeadersToAdd) != 3 {
			t.Fatalf("request %d = %v, %v; want %v", i, got, err, w)
		}
	}
	n, err := e.rdb.Exists(t.Context(), e.cfg.Redis.KeyPrefix+"{d.edge,remote_address=10.0.0.1}:rld:0", e.cfg.Redis.KeyPrefix+"{d.edge,remote_address=10.0.0.1}:rld:1").Result()
	if err != nil || n != 1 {
		t.Errorf("the descriptor's window keys: %d exist, %v; want 1", n, err)
	}
}

// TestIntegrationGRPCDenyUnmatched is TestGRPCDenyUnmatched on the real
// Redis.
func TestIntegrationGRPCDenyUnmatched(t *testing.T) { testGRPCDenyUnmatched(t, startRealEnv) }
