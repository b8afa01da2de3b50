//go:build integration

package store

import (
	"context"
	"errors"
	"fmt"
	"github.com/allot/allot/pkg/testenv"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/usage"
	"github.com/redis/go-redis/v9"
)

// realBackend is the real Redis under a key prefix of its own.
func realBackend(t *testing.T) (redis.UniversalClient, string) {
	t.Helper()
	return testenv.Redis(t)
}

func TestIntegrationBehaviour(t *testing.T) {
	for _, b := range behaviours {
		if b.name == "ScriptsReloadAfterFlush" {
			continue // SCRIPT FLUSH would disturb whatever else uses this Redis
		}
		t.Run(b.name, func(t *testing.T) { b.fn(t, realBackend) })
		t.Run(b.name+"/ClusterPath", func(t *testing.T) { b.fn(t, clusterPath(realBackend)) })
	}
}

// clusterBackend is the Redis Cluster of make cluster-test, under a key
// prefix of its own: every script and read on a ClusterClient, which
// also makes the store take one script call per event.
func clusterBackend(t *testing.T) (redis.UniversalClient, string) {
	t.Helper()
	return testenv.RedisCluster(t)
}

// TestClusterBehaviour runs the behaviours on a Redis Cluster: each
// script's keys must hash to one slot, or Redis refuses it (CROSSSLOT).
func TestClusterBehaviour(t *testing.T) {
	for _, b := range behaviours {
		if b.name == "ScriptsReloadAfterFlush" {
			continue
		}
		t.Run(b.name, func(t *testing.T) { b.fn(t, clusterBackend) })
	}
}

// TestIntegrationSlotMarkers runs the markers per hash slot on the real
// Redis, through the Cluster's path.
func TestIntegrationSlotMarkers(t *testing.T) { testSlotMarkers(t, realBackend) }

// TestIntegrationCreditsOnRedisClock is TestCreditsOnRedisClock on the
// real Redis, both paths.
func TestIntegrationCreditsOnRedisClock(t *testing.T) {
	testCreditsOnRedisClock(t, realBackend)
	testCreditsOnRedisClock(t, clusterPath(realBackend))
}

// TestClusterCreditsOnRedisClock is the same on the Redis Cluster: a
// reading of the clock on each master serving a uid of the batch.
func TestClusterCreditsOnRedisClock(t *testing.T) { testCreditsOnRedisClock(t, clusterBackend) }

// TestClusterSlotMarkers runs them on the Redis Cluster, where each
// marker lives in its own slot and each apply call touches its slot's.
func TestClusterSlotMarkers(t *testing.T) { testSlotMarkers(t, clusterBackend) }

// TestIntegrationMemory measures what one dedup record and one (uid,
// grant) cost in Redis, for the README.
func TestIntegrationMemory(t *testing.T) {
	rdb, prefix := realBackend(t)
	ctx := t.Context()
	// A prefix as long as the default "allot:", so key sizes match a real
	// install; realBackend's cleanup deletes under it too.
	short := prefix[len(prefix)-6:]
	t.Cleanup(func() {
		iter := rdb.Scan(context.Background(), 0, short+"*", 1000).Iterator()
		for iter.Next(context.Background()) {
			rdb.Del(context.Background(), iter.Val())
		}
	})
	s, err := New(ctx, rdb, Options{Keys: keys.New(short), DedupTTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	cfg := grantCfg(usage.PeriodDay, usage.AlignRolling, 80, 100)
	ops := make([]Op, 0, n)
	for i := range n {
		ops = append(ops, Op{ID: fmt.Sprintf("0193a6f4-8c3e-7d2a-9b1f-%012d", i), UID: fmt.Sprintf("u-%06d", i), Metric: "photo_daily_total", Config: cfg, Limit: 200, Value: 1})
	}
	before := usedMemory(t, rdb)
	if _, err := s.Apply(ctx, ops); err != nil {
		t.Fatal(err)
	}
	after := usedMemory(t, rdb)
	set, _ := s.DedupRecord(ops[1])
	dedup, _ := rdb.MemoryUsage(ctx, set, 0).Result()
	grant, _ := rdb.MemoryUsage(ctx, s.Keys().Grant("u-000001", "photo_daily_total")).Result()
	t.Logf("MEMORY USAGE: dedup SET of %d records %d bytes (%d a record), (uid, grant) hash %d bytes; used_memory grew %d bytes for %d events = %d bytes per (dedup + grant)",
		n, dedup, dedup/n, grant, after-before, n, (after-before)/n)
}

func usedMemory(t *testing.T, rdb redis.UniversalClient) int64 {
	t.Helper()
	var v int64
	info, err := rdb.Info(t.Context(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Sscanf(info[indexOf(info, "used_memory:"):], "used_memory:%d", &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return 0
}

// TestIntegrationAggregatedEqualsPerEvent is the equivalence of chunked
// and one-at-a-time application on 100,000 random events, on the real
// Redis, on both paths.
func TestIntegrationAggregatedEqualsPerEvent(t *testing.T) {
	t.Run("SingleRedis", func(t *testing.T) { testAggregatedEqualsPerEvent(t, realBackend, 100_000) })
	t.Run("ClusterPath", func(t *testing.T) { testAggregatedEqualsPerEvent(t, clusterPath(realBackend), 100_000) })
	t.Run("Poison", func(t *testing.T) { testPoisonEvents(t, realBackend) })
	t.Run("SingleRedis/StreamDedup", func(t *testing.T) { testAggregatedEqualsPerEventIn(t, realBackend, 30_000, true) })
	t.Run("ClusterPath/StreamDedup", func(t *testing.T) { testAggregatedEqualsPerEventIn(t, clusterPath(realBackend), 30_000, true) })
	t.Run("StreamRedeliveries", func(t *testing.T) { testStreamDedup(t, realBackend) })
	t.Run("StreamRedeliveries/ClusterPath", func(t *testing.T) { testStreamDedup(t, clusterPath(realBackend)) })
	t.Run("StreamRedeliveries/Partitioned", func(t *testing.T) { testPartitionedStreamDedup(t, realBackend) })
	t.Run("StreamRedeliveries/Partitioned/ClusterPath", func(t *testing.T) { testPartitionedStreamDedup(t, clusterPath(realBackend)) })
}

// TestClusterAggregatedEqualsPerEvent is the same on the Redis Cluster,
// where each chunk is one call per hash tag.
func TestClusterAggregatedEqualsPerEvent(t *testing.T) {
	testAggregatedEqualsPerEvent(t, clusterBackend, 20_000)
	testAggregatedEqualsPerEventIn(t, clusterBackend, 10_000, true)
	testPoisonEvents(t, clusterBackend)
	testStreamDedup(t, clusterBackend)
	testPartitionedStreamDedup(t, clusterBackend)
}

// TestClusterWaitReplicas: on a Redis Cluster with one replica per
// master (make cluster-test's), WaitReplicas 1 applies a chunk spanning
// every master and authorizes, each master's writes waited for on its
// own connection; WaitReplicas 2 asks for more replicas than there are
// and fails.
func TestClusterWaitReplicas(t *testing.T) {
	rdb, prefix := clusterBackend(t)
	ctx := t.Context()
	one := waitStore(t, rdb, prefix, 1)
	one.waitTimeout = 2 * time.Second // a loaded machine's replication
	ops := manyTagOps(60)
	res := apply(t, one, ops...)
	for i, r := range res {
		if !r.Applied {
			t.Errorf("event %d not applied", i)
		}
	}
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar)
	d, err := one.Authorize(ctx, AuthorizeOp{ID: "a1", UID: "u-1", Metric: "photo_daily_total", Config: grant, Limit: 1e6, Amount: 1})
	if err != nil || !d.Allowed || d.Grant.Used != 2 {
		t.Errorf("Authorize = %+v, %v; want allowed, used 2", d, err)
	}
	two := waitStore(t, rdb, prefix, 2)
	if _, err := two.Apply(ctx, manyTagOps(3)); !errors.Is(err, ErrNotReplicated) {
		t.Errorf("Apply waiting for 2 replicas of 1 = %v, want ErrNotReplicated", err)
	}
}
