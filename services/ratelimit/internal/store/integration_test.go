//go:build integration

package store

import (
	"github.com/allot/allot/pkg/testenv"
	"testing"

	"github.com/redis/go-redis/v9"
)

// realBackend is the real Redis under a key prefix of its own.
func realBackend(t *testing.T) (redis.UniversalClient, string) {
	t.Helper()
	return testenv.Redis(t)
}

func TestIntegrationBehaviour(t *testing.T) {
	for _, b := range behaviours {
		if b.name == "ScriptReloadsAfterFlush" {
			continue // SCRIPT FLUSH would disturb whatever else uses this Redis
		}
		t.Run(b.name, func(t *testing.T) { b.fn(t, realBackend) })
	}
}
