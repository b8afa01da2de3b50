//go:build integration

package ratelimit

import (
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/testenv"
	"github.com/nats-io/nats.go"
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

// TestIntegrationConcurrentChecks sends 3x the limit of checks at once
// through the real NATS to a rate limiter on the real Redis: batched,
// exactly the limit is admitted and the rest refused with a retry time.
func TestIntegrationConcurrentChecks(t *testing.T) {
	const limit = 50
	nc := testenv.NATS(t)
	open, prefix := realFactory(t)
	cfg := testConfig()
	cfg.Redis.KeyPrefix = prefix
	cfg.Subjects.RateLimit = prefix[:len(prefix)-1] + ".ratelimit" // a subject of this test's own
	cfg.RateLimit.Timeout = 2 * time.Second
	cfg.RateLimit.Services["burst"] = Service{Limit: ptr(limit), Interval: time.Minute}
	clock := &fakeClock{t: windowStart(time.Minute)}
	l, err := Start(t.Context(), cfg, Deps{NATS: nc, Redis: open(), Log: testLog(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Stop(t.Context()) })
	client, _ := events.NewClient(nc, events.ClientOptions{Timeout: 5 * time.Second, Subjects: cfg.Subjects})

	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for range 3 * limit {
		wg.Go(func() {
			r, err := client.Check(t.Context(), "u-1", events.CheckRequest{Service: "burst"})
			switch {
			case err != nil:
				t.Error(err)
			case r.Allowed:
				mu.Lock()
				allowed++
				mu.Unlock()
			case r.RetryAfterMs <= 0 || r.Limit != limit:
				t.Errorf("refused without a retry time: %+v", r)
			}
		})
	}
	wg.Wait()
	if allowed != limit {
		t.Errorf("%d allowed of %d, want exactly %d", allowed, 3*limit, limit)
	}
}

// TestIntegrationCostsThroughTheEdge is TestCostsThroughTheEdge on the
// real Redis: the same cases, the same answers.
func TestIntegrationCostsThroughTheEdge(t *testing.T) {
	nc, err := nats.Connect(startNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	open, prefix := realFactory(t)
	cfg := testConfig()
	cfg.Redis.KeyPrefix = prefix
	testCostsThroughTheEdge(t, startEnvOn(t, cfg, nc, open().(*redis.Client), nil))
}
