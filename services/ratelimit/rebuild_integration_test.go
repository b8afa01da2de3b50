//go:build integration

package ratelimit

import (
	"testing"

	"github.com/allot/allot/pkg/testenv"
)

// realLossBackend keeps the live and the reference windows on the real
// Redis, under key prefixes of their own; the wipe deletes every key of
// the live prefix, as a Redis restarted empty would (the rebuild lock
// and the marker included), and leaves whatever else the server holds.
func realLossBackend(t *testing.T) lossBackend {
	live, livePrefix := testenv.Redis(t)
	ref, refPrefix := testenv.Redis(t)
	return lossBackend{live: live, ref: ref, livePrefix: livePrefix, refPrefix: refPrefix, wipe: func(t *testing.T) {
		t.Helper()
		iter := live.Scan(t.Context(), 0, livePrefix+"*", 1000).Iterator()
		var doomed []string
		for iter.Next(t.Context()) {
			doomed = append(doomed, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		if len(doomed) > 0 {
			if err := live.Del(t.Context(), doomed...).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}}
}

// The loss of the windows of hits on the real Redis: detected by both
// replicas, rebuilt by one, equal to a rate limiter's that lost nothing.
func TestIntegrationHitWindowsLostAreRebuilt(t *testing.T) {
	testHitWindowsRebuilt(t, realLossBackend(t))
}

// A rebuild cut short on the real Redis is run again at the next start.
func TestIntegrationRebuildCutShortIsRedone(t *testing.T) {
	testRebuildCutShortIsRedone(t, realLossBackend(t))
}
