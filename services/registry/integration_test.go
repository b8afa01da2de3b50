//go:build integration

package registry

import (
	"github.com/allot/allot/pkg/testenv"
	"testing"
	"time"
)

// realBackend is the real Redis under a key prefix of its own. Time
// passes for real on it: the tests' TTLs are 2s.
func realBackend(t *testing.T) backend {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	return backend{rdb: rdb, prefix: prefix, elapse: time.Sleep}
}

// clusterBackend is the Redis Cluster of make cluster-test, under a key
// prefix of its own.
func clusterBackend(t *testing.T) backend {
	t.Helper()
	rdb, prefix := testenv.RedisCluster(t)
	return backend{rdb: rdb, prefix: prefix, elapse: time.Sleep}
}

// TestClusterBehaviour runs the behaviours on a Redis Cluster: each
// script's keys must hash to one slot, or Redis refuses it (CROSSSLOT).
func TestClusterBehaviour(t *testing.T) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) { b.fn(t, clusterBackend) })
	}
}

func TestIntegrationBehaviour(t *testing.T) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) { b.fn(t, realBackend) })
	}
}

// TestIntegrationFindGzip: the gzipped find on the real NATS and Redis.
func TestIntegrationFindGzip(t *testing.T) {
	testenv.NATS(t) // skips, or fails, when the real NATS does not answer
	rdb, prefix := testenv.Redis(t)
	testFindGzip(t, testenv.NATSURL(), rdb, prefix)
}
