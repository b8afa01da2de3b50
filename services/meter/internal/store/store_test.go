package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/pkg/usage"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
)

// fakeClock is the grant clock of a test: scripts get its time as "now".
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// backend opens a Redis client and a unique key prefix.
type backend func(t *testing.T) (redis.UniversalClient, string)

func miniBackend(t *testing.T) (redis.UniversalClient, string) {
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb, "allot:"
}

// newStore opens a store on open's backend whose scripts take the time
// from the returned clock. The clock starts at the real now (moved by
// testenv.ClockShift), never at a calendar date: the grant keys the
// scripts write expire on the server's own clock.
func newStore(t *testing.T, open backend) (*Store, *fakeClock, redis.UniversalClient) {
	t.Helper()
	rdb, prefix := open(t)
	clock := &fakeClock{t: testenv.Now(t)}
	s, err := New(t.Context(), rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, Now: clock.Now, GrantStates: true,
		Cluster: strings.HasSuffix(prefix, clusterSuffix)})
	if err != nil {
		t.Fatal(err)
	}
	return s, clock, rdb
}

func grantCfg(period, align string, notify ...float64) usage.MetricConfig {
	return usage.MetricConfig{Style: usage.StyleGrant, Period: period, Align: align, Notify: notify}.Normalized()
}

func counterCfg(style, scope string) usage.MetricConfig {
	return usage.MetricConfig{Style: style, Scope: scope}.Normalized()
}

func apply(t *testing.T, s *Store, ops ...Op) []Result {
	t.Helper()
	res, err := s.Apply(t.Context(), ops)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("op %d: %v", i, r.Err)
		}
	}
	return res
}

// The behaviour tests run on miniredis here and, gated, on the real Redis.
var behaviours = []struct {
	name string
	fn   func(t *testing.T, open backend)
}{
	{"CountersAndGauges", testCountersAndGauges},
	{"GrantRollingPeriod", testGrantRollingPeriod},
	{"CalendarBoundsMatchGo", testCalendarBoundsMatchGo},
	{"AuthorizeAdmitsUpToTheLimit", testAuthorize},
	{"OverridesApplyAtOnce", testOverridesApplyAtOnce},
	{"NoticesOncePerThresholdPerPeriod", testNotices},
	{"ScriptErrorFailsOnlyItsOp", testScriptErrorFailsOnlyItsOp},
	{"ScriptsReloadAfterFlush", testScriptsReload},
	{"SumsAreExact", testSumsAreExact},
	{"NumbersAtTheEdges", testNumbersAtTheEdges},
	{"SumsStopAtTheLargestNumber", testSumsStopAtTheLargestNumber},
	{"OlderStateIsRead", testOlderStateIsRead},
	{"CounterWholeNumbers", testCounterWholeNumbers},
	{"GrantStatesOnlyWhenAsked", testGrantStatesOnlyWhenAsked},
}

// Sums are exact decimals, whatever the order of integers and fractions,
// for counters, grants and authorize: 0.1 + 0.2 is 0.3, not the
// 0.30000000000000004 of float64, and a sum reaches 1e15 exactly.
func testSumsAreExact(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open)
	ctx := t.Context()
	counter := counterCfg(usage.StyleCounter, usage.ScopeUser)
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar)
	var ops []Op
	for i, v := range []float64{1, 0.5, 2, 0.5, 3, 1e6, 0.1, 0.2, 0.7, 999999998999992} {
		ops = append(ops,
			Op{ID: fmt.Sprintf("c%d", i), UID: "u-1", Metric: "c", Config: counter, Value: v, Field: "f"},
			Op{ID: fmt.Sprintf("g%d", i), UID: "u-1", Metric: "photo_daily_total", Config: grant, Limit: 1e15, Value: v})
	}
	// The chunk's grant state is on its last event: stop after 0.1 and
	// 0.2, then the rest.
	res := apply(t, s, ops[:16]...)
	if got := res[15].Grant; got == nil || got.Used != 1000007.3 {
		t.Errorf("grant after 0.1 and 0.2 = %+v, want used 1000007.3", got)
	}
	res = apply(t, s, ops[16:]...)
	if got, err := rdb.HGet(ctx, s.Keys().Values(keys.UserTag("u-1"), "c"), "f").Result(); err != nil || got != "1000000000000000" {
		t.Errorf("counter holds %q (%v), want exactly 1000000000000000", got, err)
	}
	if g := res[len(res)-1].Grant; g == nil || g.Used != 1e15 {
		t.Errorf("grant = %+v, want used 1e15", g)
	}
	// Authorize after a fraction, then an integer.
	for i, amount := range []float64{0.25, 1, 0.1, 0.2, 0.45, 2} {
		if _, err := s.Authorize(ctx, AuthorizeOp{ID: fmt.Sprintf("a%d", i), UID: "u-2", Metric: "email_daily_total", Config: grant, Limit: 10, Amount: amount}); err != nil {
			t.Fatal(err)
		}
	}
	if d, err := s.Authorize(ctx, AuthorizeOp{ID: "a9", UID: "u-2", Metric: "email_daily_total", Config: grant, Limit: 10, Amount: 6}); err != nil || !d.Allowed || d.Grant.Used != 10 {
		t.Errorf("authorize to exactly the limit after mixed amounts: %+v, %v", d, err)
	}
	if got, _ := rdb.HGet(ctx, s.Keys().Grant("u-2", "email_daily_total"), "u").Result(); got != "10" {
		t.Errorf("used holds %q, want 10", got)
	}
}

// clusterSuffix on a backend's prefix makes newStore send one script per
// hash tag, with dedup SETs per tag: the path a Redis Cluster takes.
const clusterSuffix = "cl:"

func clusterPath(open backend) backend {
	return func(t *testing.T) (redis.UniversalClient, string) {
		rdb, prefix := open(t)
		return rdb, prefix + clusterSuffix
	}
}

func TestBehaviourMiniredis(t *testing.T) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) { b.fn(t, miniBackend) })
		t.Run(b.name+"/ClusterPath", func(t *testing.T) { b.fn(t, clusterPath(miniBackend)) })
	}
}

func testCountersAndGauges(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open)
	ctx := t.Context()
	k := s.Keys()
	ops := []Op{
		{ID: "e1", UID: "u-1", Metric: "api_calls_total", Config: counterCfg(usage.StyleCounter, usage.ScopeUser), Value: 2, Field: "resource=photo"},
		{ID: "e2", UID: "u-1", Metric: "api_calls_total", Config: counterCfg(usage.StyleCounter, usage.ScopeUser), Value: 0.5, Field: "resource=photo"},
		{ID: "e2", UID: "u-1", Metric: "api_calls_total", Config: counterCfg(usage.StyleCounter, usage.ScopeUser), Value: 0.5, Field: "resource=photo"}, // duplicate in the same batch
		{ID: "e3", UID: "u-2", Source: "web-1", Metric: "queue_depth", Config: counterCfg(usage.StyleGauge, usage.ScopeInstance), Value: 7},
		{ID: "e4", UID: "u-3", Source: "web-1", Metric: "queue_depth", Config: counterCfg(usage.StyleGauge, usage.ScopeInstance), Value: 3},
		{ID: "e5", UID: "u-3", Metric: "jobs_total", Config: counterCfg(usage.StyleCounter, usage.ScopeGlobal), Value: 1},
	}
	res := apply(t, s, ops...)
	var applied []bool
	for _, r := range res {
		applied = append(applied, r.Applied)
	}
	if diff := cmp.Diff([]bool{true, true, false, true, true, true}, applied); diff != "" {
		t.Errorf("applied (-want +got):\n%s", diff)
	}
	// The same ids again in a later batch change nothing.
	for _, r := range apply(t, s, ops...) {
		if r.Applied {
			t.Errorf("a redelivered event was applied twice")
		}
	}
	for key, want := range map[string]map[string]string{
		k.Values(keys.UserTag("u-1"), "api_calls_total"):   {"resource=photo": "2.5"},
		k.Values(keys.InstanceTag("web-1"), "queue_depth"): {"": "3"},
		k.Values(keys.GlobalTag, "jobs_total"):             {"": "1"},
	} {
		got, err := rdb.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", key, diff)
		}
	}
	// The dedup record is in a SET of the state's hash tag on a Cluster,
	// of the shared dedup tag on a single Redis.
	for _, op := range []Op{{ID: "e3", Source: "web-1", Config: counterCfg(usage.StyleGauge, usage.ScopeInstance)},
		{ID: "e5", Config: counterCfg(usage.StyleCounter, usage.ScopeGlobal)}} {
		set, member := s.DedupRecord(op)
		if ok, err := rdb.SIsMember(ctx, set, member).Result(); err != nil || !ok {
			t.Errorf("dedup record %q in %s: %v, %v", member, set, ok, err)
		}
		want := keys.DedupTag
		if s.cluster {
			want = Tag(op)
		}
		if tag, _ := k.TagOf(set); tag != want {
			t.Errorf("dedup SET %s has tag %q, want %q", set, tag, want)
		}
	}
}

func testGrantRollingPeriod(t *testing.T, open backend) {
	s, clock, _ := newStore(t, open)
	t0 := clock.Now()
	cfg := grantCfg(usage.PeriodDay, usage.AlignRolling)
	op := func(id string, v float64) Op {
		return Op{ID: id, UID: "u-1", Metric: "photo_daily_total", Config: cfg, Limit: 3, Value: v}
	}
	r := apply(t, s, op("a", 1), op("b", 1))
	g := r[1].Grant
	if g.Used != 2 || g.Limit != 3 || !g.Start.Equal(t0) || !g.End.Equal(t0.Add(24*time.Hour)) {
		t.Errorf("after two events: %+v", g)
	}
	// Events are facts: used may pass the limit.
	clock.Add(time.Hour)
	r = apply(t, s, op("c", 5))
	if g := r[0].Grant; g.Used != 7 || !g.Start.Equal(t0) {
		t.Errorf("past the limit: %+v", g)
	}
	// A day after first use, a new period starts at the next use.
	clock.Set(t0.Add(30 * time.Hour))
	r = apply(t, s, op("d", 1))
	if g := r[0].Grant; g.Used != 1 || !g.Start.Equal(t0.Add(30*time.Hour)) || !g.End.Equal(t0.Add(54*time.Hour)) {
		t.Errorf("new period: %+v", g)
	}
	raw, err := s.ReadCredit(t.Context(), "u-1", []string{"photo_daily_total", "video_daily_total"})
	if err != nil {
		t.Fatal(err)
	}
	if got := raw.Grants["photo_daily_total"]; !got.Started || got.Used != 1 {
		t.Errorf("credit read: %+v", got)
	}
	if got := raw.Grants["video_daily_total"]; got.Started {
		t.Errorf("an unused grant reads as started: %+v", got)
	}
	// An indefinite grant never resets.
	ind := Op{ID: "i1", UID: "u-1", Metric: "albums", Config: grantCfg(usage.PeriodIndefinite, usage.AlignRolling), Limit: 10, Value: 2}
	apply(t, s, ind)
	clock.Add(400 * 24 * time.Hour)
	ind.ID = "i2"
	if g := apply(t, s, ind)[0].Grant; g.Used != 4 || !g.End.IsZero() {
		t.Errorf("indefinite grant: %+v", g)
	}
}

func testCalendarBoundsMatchGo(t *testing.T, open backend) {
	s, clock, _ := newStore(t, open)
	rng := rand.New(rand.NewPCG(1, 2))
	times := []time.Time{
		time.Date(2024, 2, 29, 23, 59, 59, 999e6, time.UTC), // leap day
		time.Date(2026, 1, 31, 12, 0, 0, 0, time.UTC),       // rolling month clamps to Feb 28
		time.Date(2026, 12, 31, 23, 0, 0, 0, time.UTC),      // year end
		time.Date(2027, 1, 4, 0, 0, 0, 0, time.UTC),         // a Monday at midnight
		time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC),
	}
	for range 40 {
		times = append(times, time.UnixMilli(rng.Int64N(4102444800000)).UTC()) // 1970..2100
	}
	n := 0
	for _, now := range times {
		for _, align := range []string{usage.AlignRolling, usage.AlignCalendar} {
			for _, period := range []string{usage.PeriodHour, usage.PeriodDay, usage.PeriodWeek, usage.PeriodMonth} {
				n++
				clock.Set(now)
				op := Op{ID: fmt.Sprint("b", n), UID: fmt.Sprint("u", n), Metric: "m", Config: grantCfg(period, align), Limit: 1, Value: 1}
				g := apply(t, s, op)[0].Grant
				ws, we := Bounds(period, align, now)
				if !g.Start.Equal(ws) || !g.End.Equal(we) {
					t.Errorf("%s %s at %s: Lua [%s, %s), Go [%s, %s)", align, period, now, g.Start, g.End, ws, we)
				}
			}
		}
	}
}

func testAuthorize(t *testing.T, open backend) {
	s, _, _ := newStore(t, open)
	ctx := t.Context()
	cfg := grantCfg(usage.PeriodDay, usage.AlignCalendar)
	auth := func(id string, amount float64) Decision {
		t.Helper()
		d, err := s.Authorize(ctx, AuthorizeOp{ID: id, UID: "u-1", Metric: "email_daily_total", Config: cfg, Limit: 3, Amount: amount})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := auth("r1", 2); !d.Allowed || d.Grant.Used != 2 {
		t.Errorf("first: %+v", d)
	}
	if d := auth("r2", 2); d.Allowed || d.Grant.Used != 2 {
		t.Errorf("past the limit must be refused and record nothing: %+v", d)
	}
	if d := auth("r1", 2); !d.Allowed || !d.Repeated || d.Grant.Used != 2 {
		t.Errorf("same id again must be the same answer without a second charge: %+v", d)
	}
	if d := auth("r3", 1); !d.Allowed || d.Grant.Used != 3 {
		t.Errorf("exactly to the limit: %+v", d)
	}
	// An event with an authorized id counts once.
	r := apply(t, s, Op{ID: "r3", UID: "u-1", Metric: "email_daily_total", Config: cfg, Limit: 3, Value: 1})
	if r[0].Applied {
		t.Errorf("event with an authorized id was counted again")
	}
}

func testOverridesApplyAtOnce(t *testing.T, open backend) {
	s, _, _ := newStore(t, open)
	ctx := t.Context()
	cfg := grantCfg(usage.PeriodDay, usage.AlignRolling)
	authorize := func(id string) bool {
		d, err := s.Authorize(ctx, AuthorizeOp{ID: id, UID: "u-9", Metric: "sms_daily_total", Config: cfg, Limit: 1, Amount: 1})
		if err != nil {
			t.Fatal(err)
		}
		return d.Allowed
	}
	if !authorize("a") || authorize("b") {
		t.Fatal("default limit of 1 not applied")
	}
	got, err := s.SetOverrides(ctx, "u-9", map[string]float64{"sms_daily_total": 2.5, "custom": 7}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]float64{"sms_daily_total": 2.5, "custom": 7}, got); diff != "" {
		t.Errorf("overrides (-want +got):\n%s", diff)
	}
	if !authorize("c") {
		t.Error("raising the grant mid-period did not apply at once")
	}
	if got, _ := s.SetOverrides(ctx, "u-9", nil, []string{"sms_daily_total", "absent"}); len(got) != 1 {
		t.Errorf("after unset: %v", got)
	}
	if authorize("d") {
		t.Error("unset did not restore the default")
	}
}

func testNotices(t *testing.T, open backend) {
	s, clock, _ := newStore(t, open)
	ctx := t.Context()
	cfg := grantCfg(usage.PeriodDay, usage.AlignCalendar, 80, 100)
	n := 0
	ev := func(v float64) Result {
		n++
		return apply(t, s, Op{ID: fmt.Sprint("n", n), UID: "u-1", Metric: "photo_daily_total", Config: cfg, Limit: 10, Value: v})[0]
	}
	if r := ev(7); len(r.Notices) != 0 {
		t.Errorf("70%%: %+v", r.Notices)
	}
	r := ev(1)
	if len(r.Notices) != 1 || r.Notices[0].Threshold != 80 || r.Notices[0].Used != 8 || r.Notices[0].Limit != 10 {
		t.Fatalf("crossing 80%%: %+v", r.Notices)
	}
	// Until confirmed, the notice is returned again, also for a duplicate.
	dup := apply(t, s, Op{ID: fmt.Sprint("n", n), UID: "u-1", Metric: "photo_daily_total", Config: cfg, Limit: 10, Value: 1})[0]
	if dup.Applied || len(dup.Notices) != 1 {
		t.Errorf("duplicate must return the unpublished notice: %+v", dup)
	}
	if err := s.ConfirmAll(ctx, []Confirmation{{UID: "u-1", Metric: "photo_daily_total", Notices: r.Notices}}); err != nil {
		t.Fatal(err)
	}
	if r := ev(1); len(r.Notices) != 0 {
		t.Errorf("80%% notified twice: %+v", r.Notices)
	}
	r = ev(5)
	if len(r.Notices) != 1 || r.Notices[0].Threshold != 100 {
		t.Fatalf("crossing 100%%: %+v", r.Notices)
	}
	_ = s.ConfirmAll(ctx, []Confirmation{{UID: "u-1", Metric: "photo_daily_total", Notices: r.Notices}})
	// A new day notifies again; both thresholds at once when jumping past.
	clock.Add(24 * time.Hour)
	r = ev(20)
	if next, _ := Bounds(usage.PeriodDay, usage.AlignCalendar, clock.Now()); len(r.Notices) != 2 || !r.Notices[0].Start.Equal(next) {
		t.Errorf("next period (starting %s): %+v", next, r.Notices)
	}
	// Several uids' notices are cleared in one call.
	other := apply(t, s, Op{ID: "o-1", UID: "u-2", Metric: "photo_daily_total", Config: cfg, Limit: 10, Value: 9})[0]
	if len(other.Notices) != 1 {
		t.Fatalf("u-2 crossing: %+v", other.Notices)
	}
	if err := s.ConfirmAll(ctx, []Confirmation{
		{UID: "u-1", Metric: "photo_daily_total", Notices: r.Notices},
		{UID: "u-9", Metric: "photo_daily_total"}, // nothing to clear
		{UID: "u-2", Metric: "photo_daily_total", Notices: other.Notices},
	}); err != nil {
		t.Fatal(err)
	}
	for _, uid := range []string{"u-1", "u-2"} {
		id := map[string]string{"u-1": fmt.Sprint("n", n), "u-2": "o-1"}[uid]
		if dup := apply(t, s, Op{ID: id, UID: uid, Metric: "photo_daily_total", Config: cfg, Limit: 10, Value: 1})[0]; len(dup.Notices) != 0 {
			t.Errorf("%s: cleared notices returned again: %+v", uid, dup.Notices)
		}
	}
}

func testScriptErrorFailsOnlyItsOp(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open)
	ctx := t.Context()
	bad := s.Keys().Values(keys.UserTag("u-1"), "api_calls_total")
	if err := rdb.Set(ctx, bad, "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	ops := []Op{
		{ID: "x1", UID: "u-1", Metric: "api_calls_total", Config: counterCfg(usage.StyleCounter, usage.ScopeUser), Value: 1},
		{ID: "x2", UID: "u-2", Metric: "api_calls_total", Config: counterCfg(usage.StyleCounter, usage.ScopeUser), Value: 1},
	}
	res, err := s.Apply(ctx, ops)
	if err != nil {
		t.Fatalf("a script error must not fail the batch: %v", err)
	}
	if res[0].Err == nil || !res[1].Applied || res[1].Err != nil {
		t.Errorf("results = %+v", res)
	}
	if set, member := s.DedupRecord(ops[0]); rdb.SIsMember(ctx, set, member).Val() {
		t.Errorf("a failed event left its dedup record: it would never be applied")
	}
}

func testScriptsReload(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open)
	if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	apply(t, s, Op{ID: "f1", UID: "u-1", Metric: "c", Config: counterCfg(usage.StyleCounter, usage.ScopeUser), Value: 1})
	// A batch of authorizations after Redis forgot the scripts: every op
	// is sent again once they are loaded, each decided once.
	if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	cfg := grantCfg(usage.PeriodDay, usage.AlignCalendar)
	ops := []AuthorizeOp{
		{ID: "r1", UID: "u-1", Metric: "email_daily_total", Config: cfg, Limit: 2, Amount: 1},
		{ID: "r2", UID: "u-1", Metric: "email_daily_total", Config: cfg, Limit: 2, Amount: 1},
		{ID: "r3", UID: "u-1", Metric: "email_daily_total", Config: cfg, Limit: 2, Amount: 1},
	}
	ds, errs := s.AuthorizeMany(t.Context(), ops)
	for i, want := range []bool{true, true, false} {
		if errs[i] != nil || ds[i].Allowed != want {
			t.Errorf("op %d after SCRIPT FLUSH: %+v, %v; want allowed=%v", i, ds[i], errs[i], want)
		}
	}
	if ds[1].Grant.Used != 2 {
		t.Errorf("used %v after the batch, want 2", ds[1].Grant.Used)
	}
}

func TestRedisDown(t *testing.T) {
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	s, err := New(t.Context(), rdb, Options{Keys: keys.New("allot:"), DedupTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	mr.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err = s.Apply(ctx, []Op{{ID: "a", UID: "u", Metric: "c", Config: counterCfg(usage.StyleCounter, usage.ScopeUser), Value: 1}})
	if !errors.Is(err, ErrRedis) {
		t.Errorf("Apply with Redis down = %v, want ErrRedis", err)
	}
	if _, err := s.ReadCredit(ctx, "u", []string{"m"}); !errors.Is(err, ErrRedis) {
		t.Errorf("ReadCredit with Redis down = %v, want ErrRedis", err)
	}
	if _, err := New(ctx, nil, Options{DedupTTL: time.Hour}); err == nil {
		t.Error("New(nil) succeeded")
	}
}

func TestBoundsGo(t *testing.T) {
	for _, tc := range []struct {
		period, align string
		now, start    time.Time
		end           time.Time
	}{
		{"month", "rolling", time.Date(2026, 1, 31, 8, 0, 0, 0, time.UTC), time.Date(2026, 1, 31, 8, 0, 0, 0, time.UTC), time.Date(2026, 2, 28, 8, 0, 0, 0, time.UTC)},
		{"month", "calendar", time.Date(2026, 12, 15, 8, 0, 0, 0, time.UTC), time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"week", "calendar", time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC), time.Date(2026, 11, 16, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)}, // a Sunday
		{"hour", "calendar", time.Date(2026, 11, 22, 8, 59, 0, 0, time.UTC), time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC), time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)},
	} {
		s, e := Bounds(tc.period, tc.align, tc.now)
		if !s.Equal(tc.start) || !e.Equal(tc.end) {
			t.Errorf("%s %s at %s = [%s, %s), want [%s, %s)", tc.align, tc.period, tc.now, s, e, tc.start, tc.end)
		}
	}
}

func TestParseNoticesRefusesGarbage(t *testing.T) {
	for _, q := range []string{"80|1|2|3", "x|1|2|3|4", "80|1|2|3|4|5"} {
		if _, err := ParseNotices(q); err == nil {
			t.Errorf("ParseNotices(%q) accepted garbage", q)
		}
	}
	n, err := ParseNotices("80|1000|2000|10|8;100|1000|2000|10|10")
	if err != nil || len(n) != 2 || n[1].Threshold != 100 || n[0].Raw != "80|1000|2000|10|8" {
		t.Errorf("ParseNotices = %+v, %v", n, err)
	}
}
