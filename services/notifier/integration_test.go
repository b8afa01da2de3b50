//go:build integration

package notifier

import (
	"testing"

	"github.com/allot/allot/pkg/testenv"
)

// The behaviours again, on the real Redis (asynq's Lua included) and the
// real NATS: subjects, streams, keys and queues of their own, removed at
// the end.
func TestIntegrationBehaviour(t *testing.T) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) { b.fn(t, realEnv) })
	}
}

func realEnv(t testing.TB) *env {
	t.Helper()
	rdb, _ := testenv.Redis(t)
	testenv.NATS(t)
	return realEnvAt(t, testenv.NATSURL(), rdb)
}
