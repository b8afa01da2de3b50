package bench_test

import (
	"cmp"
	"context"
	"crypto/rand"
	mrand "math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/allot/allot/pkg/mutex"
)

const (
	ttl = 10 * time.Second
	// Contended runs: 16 x GOMAXPROCS goroutines (32 on 2 cores) on one name.
	parallelism = 16
	// Every library waits between attempts with the same bounds.
	minRetry, maxRetry = time.Millisecond, 32 * time.Millisecond
)

// redisClient connects to ALLOT_BENCH_REDIS_URL, else ALLOT_TEST_REDIS_URL,
// else redis://127.0.0.1:6379/0, and skips the benchmark if nothing answers.
func redisClient(b *testing.B) *redis.Client {
	b.Helper()
	url := cmp.Or(os.Getenv("ALLOT_BENCH_REDIS_URL"), os.Getenv("ALLOT_TEST_REDIS_URL"), "redis://127.0.0.1:6379/0")
	opts, err := redis.ParseURL(url)
	if err != nil {
		b.Fatalf("Redis URL %q: %v", url, err)
	}
	opts.PoolSize = 64 // room for the contended runs' 32 goroutines
	c := redis.NewClient(opts)
	b.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(b.Context(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		b.Skipf("Redis at %s unreachable: %v", url, err)
	}
	return c
}

// keyPrefix returns a prefix of its own for the benchmark and deletes the
// keys under it afterwards.
func keyPrefix(b *testing.B, c *redis.Client) string {
	b.Helper()
	prefix := "allotbench-" + rand.Text()[:12] + ":"
	b.Cleanup(func() {
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			_ = c.Del(ctx, iter.Val()).Err()
		}
	})
	return prefix
}

func reportOpsPerSecond(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// jittered is the wait schedule allot uses, for redsync: the bound doubles
// from minRetry to maxRetry, the wait is drawn from [bound/2, bound).
func jittered(tries int) time.Duration {
	bound := maxRetry
	if tries < 16 && minRetry<<tries < maxRetry {
		bound = minRetry << tries
	}
	return bound/2 + mrand.N(bound/2)
}

func newAllot(b *testing.B, c *redis.Client, prefix string) *mutex.Locker {
	b.Helper()
	// With metrics on, as in production.
	l, err := mutex.New(c, mutex.Options{Prefix: prefix, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	if err := l.Preload(b.Context()); err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkUncontended: one goroutine takes and releases one lock, over and
// over: the cost of a lock when nobody else wants it (two round trips).
func BenchmarkUncontended(b *testing.B) {
	b.Run("lib=allot", func(b *testing.B) {
		c := redisClient(b)
		l := newAllot(b, c, keyPrefix(b, c))
		ctx := b.Context()
		opts := mutex.LockOptions{TTL: ttl}
		b.ReportAllocs()
		for b.Loop() {
			lk, err := l.TryAcquire(ctx, "bench", opts)
			if err != nil {
				b.Fatal(err)
			}
			if err := lk.Release(ctx); err != nil {
				b.Fatal(err)
			}
		}
		reportOpsPerSecond(b)
	})
	b.Run("lib=redislock", func(b *testing.B) {
		c := redisClient(b)
		key := keyPrefix(b, c) + "bench"
		locker := redislock.New(c)
		ctx := b.Context()
		b.ReportAllocs()
		for b.Loop() {
			lk, err := locker.Obtain(ctx, key, ttl, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := lk.Release(ctx); err != nil {
				b.Fatal(err)
			}
		}
		reportOpsPerSecond(b)
	})
	b.Run("lib=redsync", func(b *testing.B) {
		c := redisClient(b)
		rs := redsync.New(goredis.NewPool(c))
		m := rs.NewMutex(keyPrefix(b, c)+"bench", redsync.WithExpiry(ttl), redsync.WithTries(1))
		ctx := b.Context()
		b.ReportAllocs()
		for b.Loop() {
			if err := m.LockContext(ctx); err != nil {
				b.Fatal(err)
			}
			if ok, err := m.UnlockContext(ctx); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
		reportOpsPerSecond(b)
	})
}

// BenchmarkContended: 32 goroutines (on 2 cores) take and release one lock
// name; ops/s counts locks taken. Waiting is by polling with backoff in all
// three libraries, so the figure depends on the wait bounds as much as on
// the library: all use 1ms to 32ms (redislock without jitter, which it does
// not offer).
func BenchmarkContended(b *testing.B) {
	b.Run("lib=allot", func(b *testing.B) {
		c := redisClient(b)
		l := newAllot(b, c, keyPrefix(b, c))
		opts := mutex.LockOptions{TTL: ttl, MinRetry: minRetry, MaxRetry: maxRetry}
		b.SetParallelism(parallelism)
		b.RunParallel(func(pb *testing.PB) {
			ctx := context.Background()
			for pb.Next() {
				lk, err := l.Acquire(ctx, "bench", opts)
				if err != nil {
					b.Error(err)
					return
				}
				if err := lk.Release(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportOpsPerSecond(b)
	})
	b.Run("lib=redislock", func(b *testing.B) {
		c := redisClient(b)
		key := keyPrefix(b, c) + "bench"
		locker := redislock.New(c)
		b.SetParallelism(parallelism)
		b.RunParallel(func(pb *testing.PB) {
			ctx := context.Background()
			for pb.Next() {
				// The strategy counts attempts, so it is made per Obtain.
				lk, err := locker.Obtain(ctx, key, ttl, &redislock.Options{
					RetryStrategy: redislock.ExponentialBackoff(minRetry, maxRetry),
				})
				if err != nil {
					b.Error(err)
					return
				}
				if err := lk.Release(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportOpsPerSecond(b)
	})
	b.Run("lib=redsync", func(b *testing.B) {
		c := redisClient(b)
		rs := redsync.New(goredis.NewPool(c))
		name := keyPrefix(b, c) + "bench"
		b.SetParallelism(parallelism)
		b.RunParallel(func(pb *testing.PB) {
			ctx := context.Background()
			// A redsync Mutex holds the value of its last Lock: one per goroutine.
			m := rs.NewMutex(name, redsync.WithExpiry(ttl), redsync.WithTries(1<<30), redsync.WithRetryDelayFunc(jittered))
			for pb.Next() {
				if err := m.LockContext(ctx); err != nil {
					b.Error(err)
					return
				}
				if ok, err := m.UnlockContext(ctx); !ok || err != nil {
					b.Error(ok, err)
					return
				}
			}
		})
		reportOpsPerSecond(b)
	})
}
