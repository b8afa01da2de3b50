package store

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/usage"
	"github.com/redis/go-redis/v9"
)

// waitStore is a store on rdb under prefix that waits for n replicas.
func waitStore(t testing.TB, rdb redis.UniversalClient, prefix string, n int) *Store {
	t.Helper()
	s, err := New(t.Context(), rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, WaitReplicas: n, WaitTimeout: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A write fewer replicas acknowledged than WaitReplicas fails with
// ErrNotReplicated (and ErrRedis, so it is retried); the retry, as the
// worker and the client make it, counts the event and the authorization
// once, though the master had them already. miniredis's WAIT answers 0
// replicas: a master without any.
func TestWaitReplicasShortFailsAndRetryCountsOnce(t *testing.T) {
	rdb, prefix := miniBackend(t)
	ctx := t.Context()
	waiting, plain := waitStore(t, rdb, prefix, 1), waitStore(t, rdb, prefix, 0)
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar)
	ev := Op{ID: "e1", UID: "u-1", Metric: "photo_daily_total", Config: grant, Limit: 100, Value: 3}
	_, err := waiting.Apply(ctx, []Op{ev})
	if !errors.Is(err, ErrNotReplicated) || !errors.Is(err, ErrRedis) {
		t.Fatalf("Apply with no replica = %v, want ErrNotReplicated wrapped in ErrRedis", err)
	}
	res := apply(t, plain, ev)
	if res[0].Applied {
		t.Error("the retried event was applied again")
	}
	auth := AuthorizeOp{ID: "a1", UID: "u-1", Metric: "photo_daily_total", Config: grant, Limit: 100, Amount: 1}
	if _, err := waiting.Authorize(ctx, auth); !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("Authorize with no replica = %v, want ErrNotReplicated", err)
	}
	d, err := plain.Authorize(ctx, auth)
	if err != nil || !d.Allowed || !d.Repeated || d.Grant.Used != 4 {
		t.Errorf("the retried authorization = %+v, %v; want allowed, repeated, used 4 (3 + 1, each once)", d, err)
	}
}

func TestNewRefusesNegativeWaitReplicas(t *testing.T) {
	rdb, prefix := miniBackend(t)
	if _, err := New(t.Context(), rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, WaitReplicas: -1}); err == nil {
		t.Error("New took WaitReplicas -1")
	}
}

// manyTagOps is n grant events of n uids: on a Cluster they span the
// masters.
func manyTagOps(n int) []Op {
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar)
	ops := make([]Op, n)
	for i := range ops {
		ops[i] = Op{ID: fmt.Sprintf("w%d", i), UID: fmt.Sprintf("u-%d", i), Metric: "photo_daily_total", Config: grant, Limit: 1e6, Value: 1}
	}
	return ops
}
