//go:build integration

package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// realBackend connects to ALLOT_TEST_REDIS_URL (default the local Redis)
// under a random key prefix and deletes every key under it afterwards. It
// skips when Redis does not answer, unless ALLOT_REQUIRE_INTEGRATION=1.
// Time passes for real on it: the tests' TTLs are 2s.
func realBackend(t *testing.T) backend {
	t.Helper()
	url := os.Getenv("ALLOT_TEST_REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
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
		iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
		_ = rdb.Close()
	})
	return backend{rdb: rdb, prefix: prefix, elapse: time.Sleep}
}

func TestIntegrationBehaviour(t *testing.T) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) { b.fn(t, realBackend) })
	}
}
