package service_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/service"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// epochEnv is a stream on an embedded JetStream and a miniredis.
type epochEnv struct {
	mr     *miniredis.Miniredis
	rdb    *redis.Client
	js     jetstream.JetStream
	stream jetstream.Stream
	epoch  service.Epoch
}

func newEpochEnv(t *testing.T) *epochEnv {
	t.Helper()
	s := runNATS(t, server.Options{JetStream: true, StoreDir: t.TempDir()})
	js := jsOf(t, s.ClientURL())
	stream, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "EV", Subjects: []string{"ev.*"}})
	if err != nil {
		t.Fatal(err)
	}
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return &epochEnv{mr: mr, rdb: rdb, js: js, stream: stream, epoch: service.NewEpoch(rdb, "x:epoch")}
}

func (e *epochEnv) publish(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		if _, err := e.js.Publish(t.Context(), fmt.Sprintf("ev.%d", i%3), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEpochLost: an empty stream writes the marker (a new deployment);
// a missing marker beside events is a loss; Set ends it.
func TestEpochLost(t *testing.T) {
	e := newEpochEnv(t)
	ctx := t.Context()
	if lost, err := e.epoch.Lost(ctx, e.stream); err != nil || lost {
		t.Fatalf("empty stream: lost %v, %v", lost, err)
	}
	if _, ok, _ := e.epoch.Read(ctx); !ok {
		t.Fatal("the marker was not written for an empty stream")
	}
	e.publish(t, 3)
	if lost, err := e.epoch.Lost(ctx, e.stream); err != nil || lost {
		t.Fatalf("marker there: lost %v, %v", lost, err)
	}
	e.mr.FlushAll()
	if lost, err := e.epoch.Lost(ctx, e.stream); err != nil || !lost {
		t.Fatalf("marker gone, events in the stream: lost %v, %v", lost, err)
	}
	if err := e.epoch.MarkRebuilding(ctx); err != nil {
		t.Fatal(err)
	}
	if lost, _ := e.epoch.Lost(ctx, e.stream); !lost {
		t.Fatal("the rebuilding mark alone passed for the marker")
	}
	if err := e.epoch.Set(ctx, 3, time.Time{}); err != nil {
		t.Fatal(err)
	}
	seq, ok, err := e.epoch.Read(ctx)
	if err != nil || !ok || seq != 3 {
		t.Fatalf("after Set: %d, %v, %v", seq, ok, err)
	}
	// A rebuild that found the stream without its oldest events says
	// since when it holds the state; a whole one clears that.
	since := time.Now().Add(-time.Hour).Truncate(time.Millisecond).UTC()
	if err := e.epoch.Set(ctx, 3, since); err != nil {
		t.Fatal(err)
	}
	if m, err := e.epoch.ReadShare(ctx); err != nil || !m.HeldSince.Equal(since) {
		t.Fatalf("held since %v (%v), want %v", m.HeldSince, err, since)
	}
	if err := e.epoch.Set(ctx, 3, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if m, err := e.epoch.ReadAll(ctx); err != nil || !m.HeldSince.IsZero() {
		t.Fatalf("held since %v (%v) after a whole rebuild, want none", m.HeldSince, err)
	}
	e.mr.HSet("x:epoch", "held_since", "soon")
	if _, err := e.epoch.ReadAll(ctx); err == nil {
		t.Error("a held_since that is no time was read")
	}
	e.mr.HDel("x:epoch", "held_since")
	if r, _ := e.epoch.Rebuilding(ctx); r {
		t.Error("Set left the rebuilding mark")
	}
	// Withdraw: the mark and no seq, at once, over a whole state.
	if err := e.epoch.Withdraw(ctx); err != nil {
		t.Fatal(err)
	}
	if r, _ := e.epoch.Rebuilding(ctx); !r {
		t.Error("Withdraw left no rebuilding mark")
	}
	if lost, _ := e.epoch.Lost(ctx, e.stream); !lost {
		t.Error("a withdrawn marker passed for one")
	}
	if err := e.epoch.Set(ctx, 3, time.Time{}); err != nil {
		t.Fatal(err)
	}
	e.mr.SetError("LOADING")
	if _, err := e.epoch.Lost(ctx, e.stream); !errors.Is(err, service.ErrEpochRedis) {
		t.Errorf("Redis refusing: %v, want ErrEpochRedis", err)
	}
}

// TestEpochAdopt: state without a marker is kept, unless a rebuild's mark
// says it is a rebuild's half; nothing to adopt leaves the marker absent.
func TestEpochAdopt(t *testing.T) {
	has := func(v bool) func(context.Context) (bool, error) {
		return func(context.Context) (bool, error) { return v, nil }
	}
	for _, tc := range []struct {
		name    string
		setup   func(ctx context.Context, ep service.Epoch)
		state   bool
		want    service.EpochAtStart
		written bool
	}{
		{"nothing", func(context.Context, service.Epoch) {}, false, service.EpochThere, false},
		{"old state", func(context.Context, service.Epoch) {}, true, service.EpochAdopted, true},
		{"marker there", func(ctx context.Context, ep service.Epoch) { _, _ = ep.Init(ctx, 7) }, true, service.EpochThere, true},
		{"a rebuild cut short", func(ctx context.Context, ep service.Epoch) { _ = ep.MarkRebuilding(ctx) }, true, service.EpochCut, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEpochEnv(t)
			ctx := t.Context()
			tc.setup(ctx, e.epoch)
			got, err := e.epoch.Adopt(ctx, 0, has(tc.state))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Adopt = %v, want %v", got, tc.want)
			}
			if _, ok, _ := e.epoch.Read(ctx); ok != tc.written {
				t.Errorf("marker there: %v, want %v", ok, tc.written)
			}
		})
	}
}

// TestSlottedEpoch: with a marker per hash slot, the state is whole only
// while every one holds its seq; one slot's gone (its master came back
// empty) is a loss; Init writes the missing ones for an empty stream; Set
// and Withdraw write and remove them all; Adopt keeps a marker from
// before the slots' (writing them) but never a partial one.
func TestSlottedEpoch(t *testing.T) {
	e := newEpochEnv(t)
	ctx := t.Context()
	slots := []string{"x:{a}:epoch", "x:{b}:epoch", "x:{c}:epoch", "x:{d}:epoch"}
	ep := service.NewSlottedEpoch(e.rdb, "x:epoch", slots)
	if !ep.Slotted() || e.epoch.Slotted() {
		t.Fatal("Slotted is wrong")
	}
	if lost, err := ep.Lost(ctx, e.stream); err != nil || lost {
		t.Fatalf("empty stream: lost %v, %v", lost, err)
	}
	m, err := ep.ReadAll(ctx)
	if err != nil || !m.Whole() || !m.SlotsWritten || len(m.Slots) != 4 {
		t.Fatalf("after Init: %+v, %v", m, err)
	}
	e.publish(t, 3)
	e.mr.HDel("x:{b}:epoch", "seq")
	e.mr.HDel("x:{c}:epoch", "seq")
	// Each read reads a share of the slots' markers: within SlotShares
	// reads every one, once.
	seen, lostIn := map[int]int{}, 0
	for range service.SlotShares {
		m, err := ep.ReadShare(ctx)
		if err != nil || !m.OK {
			t.Fatal(m, err)
		}
		for slot := range slots {
			if m.WasRead(slot) {
				seen[slot]++
			}
		}
	}
	for range service.SlotShares {
		if lost, err := ep.Lost(ctx, e.stream); err != nil {
			t.Fatal(err)
		} else if lost {
			lostIn++
		}
	}
	if fmt.Sprint(seen) != "map[0:1 1:1 2:1 3:1]" {
		t.Errorf("slots read over %d reads: %v, want each once", service.SlotShares, seen)
	}
	if lostIn != 2 {
		t.Fatalf("two slots' markers gone: lost in %d of %d checks, want 2", lostIn, service.SlotShares)
	}
	if m, _ := ep.ReadAll(ctx); !m.OK || fmt.Sprint(m.Missing) != "[1 2]" {
		t.Fatalf("missing %v (marker %v), want [1 2]", m.Missing, m.OK)
	}
	// At start, a partial loss is not adopted.
	if at, err := ep.Adopt(ctx, 0, func(context.Context) (bool, error) { return true, nil }); err != nil || at != service.EpochThere {
		t.Fatalf("Adopt over a partial loss: %v, %v", at, err)
	}
	if m, _ := ep.ReadAll(ctx); m.Whole() {
		t.Fatal("a partial loss was adopted")
	}
	if err := ep.Set(ctx, 9, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if m, _ := ep.ReadAll(ctx); !m.Whole() || m.Seq != 9 || fmt.Sprint(m.Slots) != "[9 9 9 9]" {
		t.Fatalf("after Set(9): %+v", m)
	}
	if err := ep.Withdraw(ctx); err != nil {
		t.Fatal(err)
	}
	if m, _ := ep.ReadAll(ctx); m.OK || len(m.Missing) != 4 {
		t.Fatalf("after Withdraw: %+v", m)
	}
	if r, _ := ep.Rebuilding(ctx); !r {
		t.Error("Withdraw left no rebuilding mark")
	}

	// A marker from before the slots' gets them, at its seq.
	e.mr.FlushAll()
	e.mr.HSet("x:epoch", "seq", "5")
	if at, err := ep.Adopt(ctx, 0, func(context.Context) (bool, error) { return true, nil }); err != nil || at != service.EpochSlotsAdopted {
		t.Fatalf("Adopt of a marker without the slots': %v, %v", at, err)
	}
	if m, _ := ep.ReadAll(ctx); !m.Whole() || fmt.Sprint(m.Slots) != "[5 5 5 5]" {
		t.Fatalf("after adopting the slots: %+v", m)
	}
	// No marker at all beside state: adopted, as on one Redis.
	e.mr.FlushAll()
	if at, err := ep.Adopt(ctx, 4, func(context.Context) (bool, error) { return true, nil }); err != nil || at != service.EpochAdopted {
		t.Fatalf("Adopt of state without markers: %v, %v", at, err)
	}
	if m, _ := ep.ReadAll(ctx); !m.Whole() || m.Seq != 4 {
		t.Fatalf("after adopting: %+v", m)
	}
	e.mr.Del("x:{d}:epoch")
	if err := e.mr.Set("x:{d}:epoch", "not a hash"); err != nil {
		t.Fatal(err)
	}
	if _, err := ep.ReadAll(ctx); !errors.Is(err, service.ErrEpochRedis) {
		t.Errorf("a slot marker of the wrong type: %v, want ErrEpochRedis", err)
	}
	e.mr.HSet("x:{a}:epoch", "seq", "x")
	e.mr.Del("x:{d}:epoch")
	if _, err := ep.ReadAll(ctx); err == nil {
		t.Error("a slot marker holding no sequence was read")
	}
}

func TestSlotRanges(t *testing.T) {
	for _, c := range []struct {
		in   []int
		want string
	}{{nil, ""}, {[]int{3}, "3"}, {[]int{0, 1, 2, 5, 7, 8}, "0-2 5 7-8"}} {
		if got := service.SlotRanges(c.in); got != c.want {
			t.Errorf("SlotRanges(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestAnyKey(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	for i := range 3000 {
		mr.Set(fmt.Sprintf("p:{u%d}:x", i), "1")
	}
	for _, tc := range []struct {
		pattern string
		want    bool
	}{{"p:{*}:rle:*", false}, {"p:{*}:x", true}} {
		if got, err := service.AnyKey(t.Context(), rdb, tc.pattern); err != nil || got != tc.want {
			t.Errorf("AnyKey(%q) = %v, %v; want %v", tc.pattern, got, err, tc.want)
		}
	}
	mr.Set("p:{u9}:rle:api:e1", "1")
	if got, _ := service.AnyKey(t.Context(), rdb, "p:{*}:rle:*"); !got {
		t.Error("one matching key among 3000 not found")
	}
}

// TestReplay reads what the stream held when it began, from a time or
// from the start, in order, on one subject or all, in chunks.
func TestReplay(t *testing.T) {
	e := newEpochEnv(t)
	ctx := t.Context()
	e.publish(t, 10)
	mid := time.Now()
	time.Sleep(10 * time.Millisecond)
	e.publish(t, 20)
	late := true // the first replay publishes one more message as it starts
	read := func(opts service.ReplayOptions) ([]string, service.ReplayResult) {
		t.Helper()
		var got []string
		res, err := service.Replay(ctx, e.js, "EV", opts, func(_ context.Context, chunk []jetstream.Msg) error {
			if len(chunk) > max(opts.Batch, 1) && opts.Batch > 0 {
				t.Errorf("chunk of %d, batch %d", len(chunk), opts.Batch)
			}
			for _, m := range chunk {
				got = append(got, m.Subject()+"="+string(m.Data()))
			}
			// Published during the replay: not read.
			if late {
				late = false
				if _, err := e.js.Publish(ctx, "ev.9", []byte("late")); err != nil {
					t.Error(err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return got, res
	}
	all, res := read(service.ReplayOptions{Batch: 7})
	if len(all) != 30 || all[0] != "ev.0=0" || all[29] != "ev.1=19" {
		t.Errorf("whole stream: %d messages, %v ... ", len(all), all[:min(3, len(all))])
	}
	if diff := cmp.Diff(service.ReplayResult{FirstSeq: 1, LastSeq: 30, UpTo: 30, Events: 30}, res); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	later, _ := read(service.ReplayOptions{From: mid})
	if len(later) != 21 || later[0] != "ev.0=0" || later[1] != "ev.1=1" || later[20] != "ev.9=late" {
		t.Errorf("from the middle: %d messages, %v", len(later), later)
	}
	one, _ := read(service.ReplayOptions{Subject: "ev.1", Batch: 2})
	for _, m := range one {
		if m[:4] != "ev.1" {
			t.Errorf("another subject read: %s", m)
		}
	}
	if len(one) != 10 {
		t.Errorf("ev.1: %d messages, want 10", len(one))
	}
	fail := errors.New("boom")
	if _, err := service.Replay(ctx, e.js, "EV", service.ReplayOptions{}, func(context.Context, []jetstream.Msg) error { return fail }); !errors.Is(err, fail) {
		t.Errorf("fn's error: %v", err)
	}
}
