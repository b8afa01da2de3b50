//go:build integration

package store

import (
	"testing"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/redis/go-redis/v9"
)

// realBackend is the real Redis under a key prefix of its own.
func realBackend(t *testing.T) (redis.UniversalClient, Options) {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	return rdb, Options{Keys: keys.New(prefix)}
}

// clusterBackend is the Redis Cluster of make cluster-test, under a key
// prefix of its own; the store takes one script call per check there.
func clusterBackend(t *testing.T) (redis.UniversalClient, Options) {
	t.Helper()
	rdb, prefix := testenv.RedisCluster(t)
	return rdb, Options{Keys: keys.New(prefix)}
}

// TestClusterBehaviour runs the behaviours on a Redis Cluster: each
// script's keys must hash to one slot, or Redis refuses it (CROSSSLOT).
func TestClusterBehaviour(t *testing.T) {
	for _, b := range behaviours {
		if b.name == "ScriptReloadsAfterFlush" {
			continue
		}
		t.Run(b.name, func(t *testing.T) { b.fn(t, clusterBackend) })
	}
}

func TestIntegrationBehaviour(t *testing.T) {
	for _, b := range behaviours {
		if b.name == "ScriptReloadsAfterFlush" {
			continue // SCRIPT FLUSH would disturb whatever else uses this Redis
		}
		t.Run(b.name, func(t *testing.T) { b.fn(t, realBackend) })
		t.Run(b.name+"/OneScriptPerCheck", func(t *testing.T) { b.fn(t, perCheck(realBackend)) })
	}
}
