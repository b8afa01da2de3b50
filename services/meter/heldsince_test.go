package meter

import (
	"testing"
	"time"

	"github.com/allot/allot/pkg/usage"
	"github.com/allot/allot/services/meter/internal/store"
	"github.com/nats-io/nats.go/jetstream"
	"strconv"
)

// A rebuild from a stream that lost its oldest events (retention, or by
// hand) says since when the state holds usage, in the marker and in the
// credit replies of the grants whose period began before: never a
// silent low number.
func TestRebuildFromAShortStreamSaysSo(t *testing.T) {
	testRebuildFromAShortStreamSaysSo(t, startEnv(t, lossConfig()))
}

func testRebuildFromAShortStreamSaysSo(t *testing.T, e *env) {
	ctx := t.Context()
	e.publish(ev("u-1", "photo_daily_total", 1, "p1"))
	e.publish(ev("u-1", "photo_daily_total", 2, "p2"))
	e.publish(ev("u-1", "photo_daily_total", 4, "p3"))
	e.waitIdle()
	if c, err := e.client.Credit(ctx, "u-1", "photo_daily_total"); err != nil || c.Used != 7 || !c.CountedSince.IsZero() {
		t.Fatalf("credit before: %+v, %v", c, err)
	}
	stream, err := e.js.Stream(ctx, e.cfg.Streams.Usage)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(3)); err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil || info.State.FirstSeq != 3 {
		t.Fatalf("stream after the purge: %+v, %v", info.State, err)
	}
	held := info.State.FirstTime.UTC().Truncate(time.Millisecond)
	e.wipe()
	eventually(t, "the rebuild from the short stream", func() bool {
		c, err := e.client.Credit(ctx, "u-1", "photo_daily_total")
		return err == nil && c.Used == 4 && c.CountedSince.Equal(held)
	})
	if got := e.rdb.HGet(ctx, e.keys().MeterEpoch(), "held_since").Val(); got != strconv.FormatInt(held.UnixMilli(), 10) {
		t.Errorf("the marker's held_since is %q, want %d", got, held.UnixMilli())
	}
}

// countedSince names held_since exactly when usage before it may count in
// the grant's current period.
func TestCountedSince(t *testing.T) {
	now := time.Date(2031, 5, 14, 15, 0, 0, 0, time.UTC) // pure arithmetic: no server clock involved
	held := now.Add(-3 * time.Hour)
	day := func(align string) usage.MetricConfig {
		return usage.MetricConfig{Style: usage.StyleGrant, Period: usage.PeriodDay, Align: align}.Normalized()
	}
	running := func(start time.Time) store.RawGrant {
		return store.RawGrant{Started: true, Used: 1, Start: start, End: start.Add(24 * time.Hour)}
	}
	m := &Meter{}
	for _, c := range []struct {
		name string
		mc   usage.MetricConfig
		raw  store.RawGrant
		want bool
	}{
		{"calendar day begun before", day(usage.AlignCalendar), running(now.Truncate(24 * time.Hour)), true},
		{"calendar day, none running", day(usage.AlignCalendar), store.RawGrant{}, true},
		{"calendar hour begun after", usage.MetricConfig{Style: usage.StyleGrant, Period: usage.PeriodHour, Align: usage.AlignCalendar}.Normalized(),
			store.RawGrant{Started: true, Start: now.Truncate(time.Hour), End: now.Truncate(time.Hour).Add(time.Hour)}, false},
		{"rolling day begun before", day(usage.AlignRolling), running(held.Add(-time.Minute)), true},
		{"rolling day begun after, within a day", day(usage.AlignRolling), running(held.Add(time.Hour)), true},
		{"rolling day, none running", day(usage.AlignRolling), store.RawGrant{}, true},
		{"indefinite", usage.MetricConfig{Style: usage.StyleGrant, Period: usage.PeriodIndefinite}.Normalized(), running(now), true},
	} {
		m.heldSince.Store(held.UnixMilli())
		got := m.countedSince(c.mc, c.raw, now)
		if got.IsZero() == c.want || (c.want && !got.Equal(held)) {
			t.Errorf("%s: %v, want set %v", c.name, got, c.want)
		}
		m.heldSince.Store(0)
		if got := m.countedSince(c.mc, c.raw, now); !got.IsZero() {
			t.Errorf("%s with a whole state: %v", c.name, got)
		}
	}
	// A rolling day begun more than a day after held_since counts none of
	// what was lost.
	m.heldSince.Store(held.Add(-48 * time.Hour).UnixMilli())
	if got := m.countedSince(day(usage.AlignRolling), running(held.Add(-time.Hour)), now); !got.IsZero() {
		t.Errorf("a rolling day begun two days after held_since: %v", got)
	}
}
