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

func TestIntegrationBehaviour(t *testing.T) {
	for _, b := range behaviours {
		if b.name == "ScriptReloadsAfterFlush" {
			continue // SCRIPT FLUSH would disturb whatever else uses this Redis
		}
		t.Run(b.name, func(t *testing.T) { b.fn(t, realBackend) })
		t.Run(b.name+"/OneScriptPerCheck", func(t *testing.T) { b.fn(t, perCheck(realBackend)) })
	}
}
