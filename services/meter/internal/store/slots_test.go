package store

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/usage"
	"github.com/redis/go-redis/v9"
)

// On a Cluster every apply call checks and raises the epoch marker of its
// own hash slot: a slot whose marker is gone (its master came back empty)
// refuses its events, and only those; a marker is found below what this
// store applied in its slot after a rollback. On miniredis and the real
// Redis through the Cluster's path, and on the real Redis Cluster.
func TestSlotMarkers(t *testing.T) { testSlotMarkers(t, miniBackend) }

func testSlotMarkers(t *testing.T, open backend) {
	rdb, prefix := open(t)
	ctx := t.Context()
	s, err := New(ctx, rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, Guard: true, Cluster: true})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Slotted() || s.TracksSeq() {
		t.Fatalf("a guarded Cluster store: slotted %v, tracks the one seq %v", s.Slotted(), s.TracksSeq())
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		// keys.Slot is the slot Redis Cluster gives a key.
		for _, slot := range []int{0, 1, 5460, 5461, 10923, keys.Slots - 1} {
			if got, err := cc.ClusterKeySlot(ctx, s.slotEpochs[slot]).Result(); err != nil || got != int64(slot) {
				t.Errorf("CLUSTER KEYSLOT %s = %d (%v), want %d", s.slotEpochs[slot], got, err, slot)
			}
		}
		if got := cc.ClusterKeySlot(ctx, s.Keys().Grant("u-1", "c")).Val(); got != int64(keys.Slot(keys.UserTag("u-1"))) {
			t.Errorf("CLUSTER KEYSLOT of u-1's grant = %d, keys.Slot says %d", got, keys.Slot(keys.UserTag("u-1")))
		}
	}
	counter := counterCfg(usage.StyleCounter, usage.ScopeUser)
	op := func(uid, id string, seq uint64) Op {
		return Op{ID: id, UID: uid, Metric: "c", Config: counter, Value: 1, Field: "f", Seq: seq}
	}
	if _, err := s.Apply(ctx, []Op{op("u-1", "a", 1)}); !errors.Is(err, ErrLost) {
		t.Fatalf("apply before any marker: %v, want ErrLost", err)
	}
	if _, err := s.InitEpoch(ctx, 0); err != nil {
		t.Fatal(err)
	}
	one, two := keys.Slot(keys.UserTag("u-1")), keys.Slot(keys.UserTag("u-2"))
	if one == two {
		t.Fatal("u-1 and u-2 share a slot")
	}
	marks := func() (map[int]uint64, []int) {
		t.Helper()
		m, err := s.EpochMarks(ctx)
		if err != nil || !m.OK || len(m.Slots) != keys.Slots {
			t.Fatalf("EpochMarks: %+v, %v", m.OK, err)
		}
		nonzero := map[int]uint64{}
		for slot, seq := range m.Slots {
			if seq != 0 {
				nonzero[slot] = seq
			}
		}
		return nonzero, m.Missing
	}
	if got, missing := marks(); len(got) != 0 || len(missing) != 0 {
		t.Fatalf("after InitEpoch(0): raised %v, missing %v", got, missing)
	}
	apply(t, s, op("u-1", "a", 5), op("u-2", "b", 7), op("u-1", "c", 3))
	want := map[int]uint64{one: 5, two: 7}
	if got, missing := marks(); fmt.Sprint(got) != fmt.Sprint(want) || len(missing) != 0 {
		t.Fatalf("slot markers %v (missing %v), want %v", got, missing, want)
	}
	if applied := s.AppliedSlots(); applied[one] != 5 || applied[two] != 7 {
		t.Errorf("AppliedSlots: %d, %d; want 5, 7", applied[one], applied[two])
	}

	// u-2's master lost its data: only u-2's events are refused.
	rdb.HDel(ctx, s.slotEpochs[two], "seq")
	if _, missing := marks(); fmt.Sprint(missing) != fmt.Sprint([]int{two}) {
		t.Fatalf("missing %v, want [%d]", missing, two)
	}
	if _, err := s.Apply(ctx, []Op{op("u-2", "d", 8)}); !errors.Is(err, ErrLost) {
		t.Fatalf("apply into the lost slot: %v, want ErrLost", err)
	}
	if v, err := rdb.HGet(ctx, s.Keys().Values(keys.UserTag("u-2"), "c"), "f").Result(); err != nil || v != "1" {
		t.Errorf("u-2's counter %q (%v) after the refused apply, want 1", v, err)
	}
	apply(t, s, op("u-1", "e", 9))
	if got, _ := marks(); got[one] != 9 {
		t.Errorf("u-1's slot marker %d, want 9", got[one])
	}

	// DropSlotEpoch drops only the seq it was given.
	if dropped, err := s.DropSlotEpoch(ctx, one, 5); err != nil || dropped {
		t.Fatalf("dropped a slot marker that moved: %v, %v", dropped, err)
	}
	if dropped, err := s.DropSlotEpoch(ctx, one, 9); err != nil || !dropped {
		t.Fatalf("drop: %v, %v", dropped, err)
	}

	// A rebuild withdraws every marker and sets every one.
	if err := s.MarkRebuilding(ctx); err != nil {
		t.Fatal(err)
	}
	if m, err := s.EpochMarks(ctx); err != nil || m.OK || len(m.Missing) != keys.Slots {
		t.Fatalf("after MarkRebuilding: marker %v, %d slots missing, %v", m.OK, len(m.Missing), err)
	}
	if err := s.SetEpoch(ctx, 20, time.Time{}); err != nil {
		t.Fatal(err)
	}
	m, err := s.EpochMarks(ctx)
	if err != nil || !m.Whole() || m.Seq != 20 || m.Slots[0] != 20 || m.Slots[keys.Slots-1] != 20 {
		t.Fatalf("after SetEpoch(20): %v, seq %d, %v", m.Whole(), m.Seq, err)
	}
	apply(t, s, op("u-2", "d", 21))
}

// A store of a version from before the markers per slot (its marker
// alone) gets them at start (AdoptEpoch), at the marker's seq; a marker
// with some slots' markers there and others gone is a loss, never
// adopted; no marker at all beside state is adopted, as on one Redis.
func TestAdoptSlotMarkers(t *testing.T) {
	rdb, prefix := miniBackend(t)
	ctx := t.Context()
	s, err := New(ctx, rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, Guard: true, Cluster: true})
	if err != nil {
		t.Fatal(err)
	}
	at := func(seq uint64, want service.EpochAtStart) {
		t.Helper()
		got, err := s.AdoptEpoch(ctx, seq)
		if err != nil || got != want {
			t.Fatalf("AdoptEpoch: %v, %v; want %v", got, err, want)
		}
	}
	rdb.HSet(ctx, s.Keys().MeterEpoch(), "seq", "12")
	at(0, service.EpochSlotsAdopted)
	m, err := s.EpochMarks(ctx)
	if err != nil || !m.Whole() || m.Slots[77] != 12 {
		t.Fatalf("after adopting the slots: whole %v, slot 77 at %d, %v", m.Whole(), m.Slots[77], err)
	}
	at(0, service.EpochThere)

	rdb.HDel(ctx, s.Keys().MeterEpoch(), "seq")
	rdb.HDel(ctx, s.slotEpochs[5], "seq")
	rdb.HSet(ctx, s.Keys().Grant("u-1", "photo_daily_total"), "u", "1")
	at(0, service.EpochThere) // some slots' markers there: a loss, not adopted
	if m, _ := s.EpochMarks(ctx); m.OK {
		t.Fatal("a partial loss was adopted")
	}

	flushPrefix(t, rdb, prefix)
	rdb.HSet(ctx, s.Keys().Grant("u-1", "photo_daily_total"), "u", "1")
	at(30, service.EpochAdopted)
	if m, _ := s.EpochMarks(ctx); !m.Whole() || m.Seq != 30 || m.Slots[0] != 30 {
		t.Fatalf("adopted at 30: whole %v, seq %d, slot 0 %d", m.Whole(), m.Seq, m.Slots[0])
	}
}

func flushPrefix(t *testing.T, rdb redis.UniversalClient, prefix string) {
	t.Helper()
	iter := rdb.Scan(t.Context(), 0, prefix+"*", 10000).Iterator()
	for iter.Next(t.Context()) {
		rdb.Del(t.Context(), iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
}

// Credits read on Redis's own clock: on a Cluster each master serving a
// uid of the batch is asked for it (a script on that uid's key), on one
// Redis one TIME. Either way every read's time is Redis's now (as TIME
// says it) and the state read is the uids' own. On miniredis and the real Redis through
// both paths, and on the real Redis Cluster.
func TestCreditsOnRedisClock(t *testing.T) {
	testCreditsOnRedisClock(t, miniBackend)
	testCreditsOnRedisClock(t, clusterPath(miniBackend))
}

func testCreditsOnRedisClock(t *testing.T, open backend) {
	rdb, prefix := open(t)
	ctx := t.Context()
	s, err := New(ctx, rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, Cluster: strings.HasSuffix(prefix, clusterSuffix)})
	if err != nil {
		t.Fatal(err)
	}
	grant := grantCfg(usage.PeriodDay, usage.AlignRolling)
	var qs []CreditQuery
	for i := range 12 {
		uid := fmt.Sprintf("u-%d", i)
		apply(t, s, Op{ID: "e" + uid, UID: uid, Metric: "photo_daily_total", Config: grant, Limit: 200, Value: float64(i + 1)})
		qs = append(qs, CreditQuery{UID: uid, Metrics: []string{"photo_daily_total"}})
	}
	// Redis's clock, not the test's: a real Redis is not moved by
	// testenv.ClockShift, a miniredis is.
	before, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	reads, errs := s.ReadCredits(ctx, qs)
	for i, r := range reads {
		if errs[i] != nil {
			t.Fatalf("query %d: %v", i, errs[i])
		}
		if d := r.Now.Sub(before); d < -time.Second || d > 5*time.Second {
			t.Errorf("query %d read at %v, %v from Redis's TIME before it", i, r.Now, d)
		}
		if g := r.Grants["photo_daily_total"]; !g.Started || g.Used != float64(i+1) {
			t.Errorf("query %d: %+v, want used %d", i, g, i+1)
		}
	}
}
