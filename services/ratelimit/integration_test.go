//go:build integration

package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// realFactory opens clients to ALLOT_TEST_REDIS_URL (default the local
// Redis) under a random key prefix, and deletes every key under it
// afterwards. It skips when Redis does not answer, unless
// ALLOT_REQUIRE_INTEGRATION=1.
func realFactory(t *testing.T) (func() redis.UniversalClient, string) {
	t.Helper()
	url := os.Getenv("ALLOT_TEST_REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opts.ContextTimeoutEnabled = true
	admin := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := admin.Ping(ctx).Err(); err != nil {
		_ = admin.Close()
		if os.Getenv("ALLOT_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("real Redis at %s: %v", url, err)
		}
		t.Skipf("no real Redis at %s: %v", url, err)
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	prefix := "allot-it-" + hex.EncodeToString(r[:]) + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		iter := admin.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			admin.Del(ctx, iter.Val())
		}
		_ = admin.Close()
	})
	return func() redis.UniversalClient {
		rdb := redis.NewClient(opts)
		t.Cleanup(func() { _ = rdb.Close() })
		return rdb
	}, prefix
}

// TestIntegrationAccuracy runs the three-worker accuracy test on the real
// Redis.
func TestIntegrationAccuracy(t *testing.T) { testAccuracy(t, realFactory) }
