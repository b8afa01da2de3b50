//go:build integration

package mutex_test

import (
	"cmp"
	"context"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// realRedis connects to the Redis named by ALLOT_TEST_REDIS_URL (default
// redis://127.0.0.1:6379/0). If it cannot be reached the test is skipped,
// unless ALLOT_REQUIRE_INTEGRATION=1, which makes that a failure.
func realRedis(t *testing.T) backend {
	t.Helper()
	url := cmp.Or(os.Getenv("ALLOT_TEST_REDIS_URL"), "redis://127.0.0.1:6379/0")
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("ALLOT_TEST_REDIS_URL=%q: %v", url, err)
	}
	newClient := func(t *testing.T) *redis.Client {
		t.Helper()
		c := redis.NewClient(opts)
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if err := newClient(t).Ping(ctx).Err(); err != nil {
		if os.Getenv("ALLOT_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("Redis at %s unreachable and ALLOT_REQUIRE_INTEGRATION=1: %v", url, err)
		}
		t.Skipf("Redis at %s unreachable (set ALLOT_REQUIRE_INTEGRATION=1 to fail instead): %v", url, err)
	}
	return backend{
		newClient: newClient,
		// The real server's clock is the wall clock.
		advance: func(t *testing.T, d time.Duration) { time.Sleep(d) },
	}
}

func TestIntegrationMutex(t *testing.T) {
	runBehaviours(t, realRedis(t))
}
