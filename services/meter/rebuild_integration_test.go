//go:build integration

package meter

import (
	"testing"

	"github.com/allot/allot/pkg/testenv"
)

// The rebuild tests on the real Redis, under a key prefix of their own:
// the same events, the same state, key by key.
func TestIntegrationRebuild(t *testing.T) {
	for _, tc := range []struct {
		name string
		test func(*testing.T, *env)
	}{
		{"RestoresEveryKey", testRebuildRestoresEveryKey},
		{"PublishesOnlyNoticesNeverSent", testRebuildPublishesOnlyNoticesNeverSent},
		{"OneUID", testRebuildOneUID},
		{"OneUIDOverLiveState", testRebuildOneUIDOverLiveState},
		{"DryRunAudits", testRebuildDryRunAudits},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb, prefix := testenv.Redis(t)
			cfg := testConfig()
			cfg.Redis.KeyPrefix = prefix
			tc.test(t, publishRebuildMix(startEnvOn(t, cfg, rdb, nil)))
		})
	}
}

// TestIntegrationLossIsDetectedAndRebuilt is the loss of every key of
// the meter's prefix under two replicas, on the real Redis.
func TestIntegrationLossIsDetectedAndRebuilt(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	cfg := lossConfig()
	cfg.Redis.KeyPrefix = prefix
	testLossIsDetectedAndRebuilt(t, startEnvOn(t, cfg, rdb, nil))
}

// TestIntegrationOlderStateIsRebuilt is a restore from an older snapshot
// on the real Redis.
func TestIntegrationOlderStateIsRebuilt(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	cfg := lossConfig()
	cfg.Redis.KeyPrefix = prefix
	testOlderStateIsRebuilt(t, startEnvOn(t, cfg, rdb, nil))
}

// TestIntegrationRebuildFromAShortStreamSaysSo is the same on the real
// Redis.
func TestIntegrationRebuildFromAShortStreamSaysSo(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	cfg := lossConfig()
	cfg.Redis.KeyPrefix = prefix
	testRebuildFromAShortStreamSaysSo(t, startEnvOn(t, cfg, rdb, nil))
}

// TestIntegrationRebuildInStreamDedupMode is the stream-position mode's
// rebuild on the real Redis.
func TestIntegrationRebuildInStreamDedupMode(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	cfg := testConfig()
	cfg.Redis.KeyPrefix = prefix
	cfg.Meter.DedupIDs = false
	testRebuildInStreamDedupMode(t, publishRebuildMix(startEnvOn(t, cfg, rdb, nil)))
}
