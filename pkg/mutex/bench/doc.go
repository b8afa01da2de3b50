// Package bench holds benchmarks of allot's mutex side by side with
// github.com/bsm/redislock and github.com/go-redsync/redsync/v4, against a
// real Redis. It is its own module so that the peers stay benchmark-only
// dependencies, out of pkg/mutex's go.mod. See bench_test.go and
// ../README.md for the figures.
package bench
