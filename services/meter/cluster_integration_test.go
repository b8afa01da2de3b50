//go:build integration

package meter

import (
	"fmt"
	"testing"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestClusterSlotLossIsRebuilt: on the Redis Cluster one master loses the
// meter's data (every key under the test's prefix on it deleted, as a
// restart without persistence would), wherever the marker itself lives:
// the markers of that master's slots are gone, the meter takes the state
// for lost and rebuilds it, and every credit is what it was. Then one
// slot's marker is taken below what the meter applied in it (a replica
// promoted without the write): an older state, rebuilt too.
func TestClusterSlotLossIsRebuilt(t *testing.T) {
	rdb, prefix := testenv.RedisCluster(t)
	cfg := lossConfig()
	cfg.Redis.KeyPrefix = prefix
	e := startEnvOn(t, cfg, rdb, nil)
	ctx := t.Context()
	const uids = 30
	for i := range uids {
		e.publish(ev(fmt.Sprintf("u-%d", i), "photo_daily_total", 1, fmt.Sprintf("a%d", i)))
		e.publish(ev(fmt.Sprintf("u-%d", i), "photo_daily_total", 2, fmt.Sprintf("b%d", i)))
	}
	e.waitIdle()
	creditsAre := func(want float64) bool {
		for i := range uids {
			c, err := e.client.Credit(ctx, fmt.Sprintf("u-%d", i), "photo_daily_total")
			if err != nil || c.Used != want {
				return false
			}
		}
		return true
	}
	if !creditsAre(3) {
		t.Fatal("credits before the loss are not 3")
	}
	rebuilds := func() float64 { return testutil.ToFloat64(e.meter.metrics.rebuilds.WithLabelValues("done")) }

	// The master of u-0's slot loses every key of the test.
	master, err := rdb.MasterForKey(ctx, e.keys().Grant("u-0", "photo_daily_total"))
	if err != nil {
		t.Fatal(err)
	}
	// Found first, deleted at once: the meter rebuilds as soon as it
	// sees the loss, and must not see its rebuild deleted too.
	var lost []string
	iter := master.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		lost = append(lost, iter.Val())
	}
	if err := iter.Err(); err != nil || len(lost) == 0 {
		t.Fatalf("found %d keys on %s: %v", len(lost), master.Options().Addr, err)
	}
	pipe := master.Pipeline()
	for _, k := range lost {
		pipe.Del(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the lost slots are noticed and rebuilt", func() bool { return rebuilds() >= 1 && creditsAre(3) })
	before := rebuilds()

	// An older state of one slot: its marker below what the meter applied.
	slot := keys.Slot(keys.UserTag("u-1"))
	applied := e.meter.store.AppliedSlots()[slot]
	if applied == 0 {
		t.Fatal("the meter applied nothing in u-1's slot")
	}
	if err := rdb.HSet(ctx, e.meter.store.Keys().MeterEpochSlots()[slot], "seq", applied-1).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the older slot is noticed and rebuilt", func() bool {
		return testutil.ToFloat64(e.meter.metrics.rollbacks) == 1 && rebuilds() > before && creditsAre(3)
	})
	e.publish(ev("u-1", "photo_daily_total", 1, "c1"))
	e.waitIdle()
	if c, err := e.client.Credit(ctx, "u-1", "photo_daily_total"); err != nil || c.Used != 4 {
		t.Errorf("u-1 after the rebuilds: %+v, %v; want 4 used", c, err)
	}
}
