//go:build integration

package meter

import (
	"testing"

	"github.com/allot/allot/pkg/testenv"
)

// TestIntegrationStatsCountBatchedErrors is TestStatsCountBatchedErrors on
// the real Redis, which stays up: the 400s, 404s and 429s.
func TestIntegrationStatsCountBatchedErrors(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	cfg := testConfig()
	cfg.Redis.KeyPrefix = prefix
	testStatsCountBatchedErrors(t, startEnvOn(t, cfg, rdb, nil), nil)
}
