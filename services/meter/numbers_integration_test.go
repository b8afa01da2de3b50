//go:build integration

package meter

import (
	"testing"

	"github.com/allot/allot/pkg/testenv"
)

// TestIntegrationNumbersThroughTheEdges is TestNumbersThroughTheEdges on
// the real Redis: the same cases, the same answers.
func TestIntegrationNumbersThroughTheEdges(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	cfg := numbersConfig()
	cfg.Redis.KeyPrefix = prefix
	testNumbersThroughTheEdges(t, startEnvOn(t, cfg, rdb, nil))
}
