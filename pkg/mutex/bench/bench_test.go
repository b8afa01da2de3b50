package bench_test

import (
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
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

// lib is one lock library under test.
type lib struct {
	name string
	// worker returns a function that takes the lock and releases it again,
	// waiting for it (with the shared retry bounds) if wait is set. Each
	// goroutine makes its own worker.
	worker func(wait bool) func(ctx context.Context) error
}

// libs returns allot, redislock and redsync on one client, each with a lock
// name of its own under prefix.
func libs(b *testing.B, c *redis.Client, prefix string) []lib {
	b.Helper()
	// With metrics on, as in production.
	locker, err := mutex.New(c, mutex.Options{Prefix: prefix, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	if err := locker.Preload(b.Context()); err != nil {
		b.Fatal(err)
	}
	rl := redislock.New(c)
	rs := redsync.New(goredis.NewPool(c))

	return []lib{
		{"allot", func(wait bool) func(ctx context.Context) error {
			opts := mutex.LockOptions{TTL: ttl, MinRetry: minRetry, MaxRetry: maxRetry}
			acquire := locker.TryAcquire
			if wait {
				acquire = locker.Acquire
			}
			return func(ctx context.Context) error {
				lk, err := acquire(ctx, "bench", opts)
				if err != nil {
					return err
				}
				return lk.Release(ctx)
			}
		}},
		{"redislock", func(wait bool) func(ctx context.Context) error {
			key := prefix + "redislock"
			return func(ctx context.Context) error {
				var opts *redislock.Options
				if wait {
					// The strategy counts attempts, so it is made per Obtain.
					opts = &redislock.Options{RetryStrategy: redislock.ExponentialBackoff(minRetry, maxRetry)}
				}
				lk, err := rl.Obtain(ctx, key, ttl, opts)
				if err != nil {
					return err
				}
				return lk.Release(ctx)
			}
		}},
		{"redsync", func(wait bool) func(ctx context.Context) error {
			// A redsync Mutex keeps the value of its last Lock: one per worker.
			m := rs.NewMutex(prefix+"redsync", redsync.WithExpiry(ttl), redsync.WithTries(1))
			if wait {
				m = rs.NewMutex(prefix+"redsync", redsync.WithExpiry(ttl), redsync.WithTries(1<<30), redsync.WithRetryDelayFunc(jittered))
			}
			return func(ctx context.Context) error {
				if err := m.LockContext(ctx); err != nil {
					return err
				}
				if ok, err := m.UnlockContext(ctx); !ok || err != nil {
					return fmt.Errorf("unlock: %v, %w", ok, err)
				}
				return nil
			}
		}},
	}
}

// warmUp runs every library for a moment before anything is timed: without
// it the first sub-benchmark ran measurably slower than the same code run
// later (connections, scripts, the CPU's clock), whichever library it was.
func warmUp(b *testing.B, all []lib) {
	b.Helper()
	for _, l := range all {
		op := l.worker(false)
		for range 2000 {
			if err := op(b.Context()); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkUncontended: one goroutine takes and releases a lock, over and
// over: the cost of a lock nobody else wants (two round trips).
func BenchmarkUncontended(b *testing.B) {
	c := redisClient(b)
	all := libs(b, c, keyPrefix(b, c))
	warmUp(b, all)
	for _, l := range all {
		b.Run("lib="+l.name, func(b *testing.B) {
			op := l.worker(false)
			ctx := b.Context()
			b.ReportAllocs()
			cpu0, _ := processCPU()
			for b.Loop() {
				if err := op(ctx); err != nil {
					b.Fatal(err)
				}
			}
			reportOpsPerSecond(b)
			// The client's CPU per op (Redis runs in another process):
			// steadier than wall time on a shared machine.
			if cpu1, ok := processCPU(); ok {
				b.ReportMetric(float64((cpu1-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
			}
		})
	}
}

// BenchmarkContended: 32 goroutines (on 2 cores) take and release one lock
// name; ops/s counts locks taken. All three wait by polling with backoff, so
// the figure depends on the wait bounds as much as on the library: all use
// 1ms to 32ms (redislock without jitter, which it does not offer).
func BenchmarkContended(b *testing.B) {
	c := redisClient(b)
	all := libs(b, c, keyPrefix(b, c))
	warmUp(b, all)
	for _, l := range all {
		b.Run("lib="+l.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(parallelism)
			b.RunParallel(func(pb *testing.PB) {
				op := l.worker(true)
				ctx := context.Background()
				for pb.Next() {
					if err := op(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportOpsPerSecond(b)
		})
	}
}

// BenchmarkInterleaved runs the three libraries in turns of a few
// milliseconds (who goes first rotates), so that all see the same load on a
// shared machine, and reports each one's ops/s and allot's ratio to the
// others over the same stretch of time. ns/op is per turn of all three.
func BenchmarkInterleaved(b *testing.B) {
	c := redisClient(b)
	all := libs(b, c, keyPrefix(b, c))

	b.Run("mode=uncontended", func(b *testing.B) {
		const chunk = 100 // ops per library per turn
		ops := make([]func(context.Context) error, len(all))
		for i, l := range all {
			ops[i] = l.worker(false)
		}
		ctx := b.Context()
		spent := make([]time.Duration, len(all))
		cpu := make([]time.Duration, len(all))
		done := make([]int, len(all))
		for round := 0; b.Loop(); round++ {
			for j := range all {
				k := (round + j) % len(all)
				cpu0, _ := processCPU()
				start := time.Now()
				for range chunk {
					if err := ops[k](ctx); err != nil {
						b.Fatal(err)
					}
				}
				spent[k] += time.Since(start)
				cpu1, _ := processCPU()
				cpu[k] += cpu1 - cpu0
				done[k] += chunk
			}
		}
		reportInterleaved(b, all, spent, done)
		if _, ok := processCPU(); ok {
			for i, l := range all {
				b.ReportMetric(float64(cpu[i].Nanoseconds())/float64(done[i]), l.name+"-cpu-ns/op")
			}
		}
	})

	b.Run("mode=contended", func(b *testing.B) {
		const window = 100 * time.Millisecond // per library per turn
		goroutines := parallelism * runtime.GOMAXPROCS(0)
		spent := make([]time.Duration, len(all))
		done := make([]int, len(all))
		for round := 0; b.Loop(); round++ {
			for j := range all {
				k := (round + j) % len(all)
				start := time.Now()
				end := start.Add(window)
				var (
					wg    sync.WaitGroup
					count atomic.Int64
				)
				for range goroutines {
					op := all[k].worker(true)
					wg.Go(func() {
						ctx := context.Background()
						for time.Now().Before(end) {
							if err := op(ctx); err != nil {
								b.Error(err)
								return
							}
							count.Add(1)
						}
					})
				}
				wg.Wait()
				spent[k] += time.Since(start)
				done[k] += int(count.Load())
			}
		}
		reportInterleaved(b, all, spent, done)
	})
}

func reportInterleaved(b *testing.B, all []lib, spent []time.Duration, done []int) {
	b.Helper()
	rate := make([]float64, len(all))
	for i, l := range all {
		rate[i] = float64(done[i]) / spent[i].Seconds()
		b.ReportMetric(rate[i], l.name+"-ops/s")
	}
	for i := 1; i < len(all); i++ {
		b.ReportMetric(rate[0]/rate[i], all[0].name+"/"+all[i].name)
	}
}
