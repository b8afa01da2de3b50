package testenv

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// BenchTurns is how long each phase of an interleaved benchmark runs
// (ALLOT_BENCH_DURATION, default 2s) and for how many rounds the phases
// take turns (ALLOT_BENCH_ROUNDS, default 3): the knobs every
// side-by-side benchmark reads, so a longer run on a quiet machine is one
// pair of variables for all of them. A value that does not parse, or is
// not positive, keeps the default.
func BenchTurns() (d time.Duration, rounds int) {
	d, rounds = 2*time.Second, 3
	if v, err := time.ParseDuration(os.Getenv("ALLOT_BENCH_DURATION")); err == nil && v > 0 {
		d = v
	}
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	return d, rounds
}

// BenchRedis returns a client of the Redis a benchmark's figures come
// from: the real one at ALLOT_BENCH_REDIS_URL, else a miniredis of its
// own; and a random key prefix whose keys are deleted, and the client
// closed, at the end of tb.
func BenchRedis(tb testing.TB) (*redis.Client, string) {
	tb.Helper()
	var rdb *redis.Client
	if url := os.Getenv("ALLOT_BENCH_REDIS_URL"); url != "" {
		opts, err := redis.ParseURL(url)
		if err != nil {
			tb.Fatalf("ALLOT_BENCH_REDIS_URL: %v", err)
		}
		rdb = redis.NewClient(opts)
	} else {
		rdb = redis.NewClient(&redis.Options{Addr: Miniredis(tb).Addr()})
	}
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb, KeyPrefix(tb, rdb)
}
