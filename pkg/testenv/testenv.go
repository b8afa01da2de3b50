// Package testenv is the test support allot's modules share: the real
// Redis and NATS the integration tests run against, under names of their
// own that are cleaned up afterwards, and an embedded NATS for unit tests.
//
// The servers come from ALLOT_TEST_REDIS_URL (default
// redis://127.0.0.1:6379/0) and ALLOT_TEST_NATS_URL (default
// nats://127.0.0.1:4222). A server that does not answer skips the test,
// unless ALLOT_REQUIRE_INTEGRATION=1 (as in CI), which fails it. The Redis
// Cluster of the cluster tests is ALLOT_TEST_REDIS_CLUSTER, its nodes'
// addresses (tools/cluster test-env); unset, those tests are skipped, unless
// ALLOT_REQUIRE_CLUSTER=1 (make cluster-test).
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// Unavailable skips t, or fails it when ALLOT_REQUIRE_INTEGRATION=1.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("ALLOT_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// RedisURL is the real Redis's URL.
func RedisURL() string { return envOr("ALLOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0") }

// NATSURL is the real NATS's URL.
func NATSURL() string { return envOr("ALLOT_TEST_NATS_URL", "nats://127.0.0.1:4222") }

// RedisOptions returns the client options of the real Redis, once it has
// answered a PING.
func RedisOptions(t testing.TB) *redis.Options {
	t.Helper()
	opts, err := redis.ParseURL(RedisURL())
	if err != nil {
		t.Fatalf("ALLOT_TEST_REDIS_URL: %v", err)
	}
	probe := redis.NewClient(opts)
	defer probe.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := probe.Ping(ctx).Err(); err != nil {
		Unavailable(t, "no real Redis at %s: %v", RedisURL(), err)
	}
	return opts
}

// Redis returns a client of the real Redis and a random key prefix; every
// key under the prefix is deleted and the client closed at the end of t.
func Redis(t testing.TB) (*redis.Client, string) {
	t.Helper()
	rdb := redis.NewClient(RedisOptions(t))
	// Cleanups run last-in first-out: the keys go before the client.
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb, KeyPrefix(t, rdb)
}

// KeyPrefix returns "allot-it-<random>:" and deletes every key under it
// through rdb at the end of t: call it after registering rdb's own close,
// so the keys are deleted first.
func KeyPrefix(t testing.TB, rdb redis.UniversalClient) string {
	t.Helper()
	var r [4]byte
	_, _ = rand.Read(r[:])
	prefix := "allot-it-" + hex.EncodeToString(r[:]) + ":"
	t.Cleanup(func() { DeleteKeys(rdb, prefix) })
	return prefix
}

// DeleteKeys deletes every key that starts with prefix.
func DeleteKeys(rdb redis.UniversalClient, prefix string) {
	ctx := context.Background()
	keys, _ := Keys(ctx, rdb, prefix+"*")
	for _, k := range keys {
		rdb.Del(ctx, k)
	}
}

// Keys lists the keys matching pattern, on every master of a Redis
// Cluster (a SCAN sees one node's keys only).
func Keys(ctx context.Context, rdb redis.UniversalClient, pattern string) ([]string, error) {
	var mu sync.Mutex
	var out []string
	scan := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			out = append(out, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, rdb)
	}
	return out, err
}

// RedisCluster returns a client of the Redis Cluster at
// ALLOT_TEST_REDIS_CLUSTER and a random key prefix; every key under the
// prefix is deleted and the client closed at the end of t. Without the
// variable the test is skipped (failed with ALLOT_REQUIRE_CLUSTER=1).
func RedisCluster(t testing.TB) (*redis.ClusterClient, string) {
	t.Helper()
	addrs := os.Getenv("ALLOT_TEST_REDIS_CLUSTER")
	if addrs == "" {
		if os.Getenv("ALLOT_REQUIRE_CLUSTER") == "1" {
			t.Fatal("ALLOT_TEST_REDIS_CLUSTER is not set (tools/cluster up; eval \"$(tools/cluster test-env)\")")
		}
		t.Skip("no Redis Cluster: ALLOT_TEST_REDIS_CLUSTER is not set (make cluster-test sets it)")
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(addrs, ",")})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error { return c.Ping(ctx).Err() }); err != nil {
		t.Fatalf("the Redis Cluster at %s: %v", addrs, err)
	}
	return rdb, KeyPrefix(t, rdb)
}

// NATS returns a connection to the real NATS, closed at the end of t.
func NATS(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(NATSURL(), nats.Timeout(2*time.Second))
	if err != nil {
		Unavailable(t, "no real NATS at %s: %v", NATSURL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// EmbeddedNATS starts an in-process nats-server with JetStream on a free
// port of 127.0.0.1, stopped when the test ends, and returns its URL. Unit
// tests use it so that a plain "go test" needs nothing running.
func EmbeddedNATS(t testing.TB) string { return embeddedNATS(t, true) }

// EmbeddedCoreNATS is EmbeddedNATS without JetStream, which
// request/reply does not need and which starts faster.
func EmbeddedCoreNATS(t testing.TB) string { return embeddedNATS(t, false) }

func embeddedNATS(t testing.TB, jetStream bool) string {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true}
	if jetStream {
		opts.JetStream, opts.StoreDir = true, t.TempDir()
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("testenv: embedded nats-server: %v", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		t.Fatal("testenv: embedded nats-server not ready within 10s")
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns.ClientURL()
}
