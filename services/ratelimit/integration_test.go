//go:build integration

package ratelimit

import (
	"github.com/allot/allot/pkg/testenv"
	"testing"

	"github.com/redis/go-redis/v9"
)

// realFactory opens clients to the real Redis under a key prefix of its
// own.
func realFactory(t *testing.T) (func() redis.UniversalClient, string) {
	t.Helper()
	opts := testenv.RedisOptions(t)
	opts.ContextTimeoutEnabled = true
	admin := redis.NewClient(opts)
	t.Cleanup(func() { _ = admin.Close() })
	prefix := testenv.KeyPrefix(t, admin)
	return func() redis.UniversalClient {
		rdb := redis.NewClient(opts)
		t.Cleanup(func() { _ = rdb.Close() })
		return rdb
	}, prefix
}

// TestIntegrationAccuracy runs the three-worker accuracy test on the real
// Redis.
func TestIntegrationAccuracy(t *testing.T) { testAccuracy(t, realFactory) }
