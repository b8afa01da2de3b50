package store

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
)

// fakeClock stands for Redis's clock in a test: the scripts get its time
// as "now" (miniredis's TIME does not move with FastForward).
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

// backend opens a Redis client and returns it with the options of a
// store on it: a key prefix of its own, and the path CheckMany takes.
type backend func(t *testing.T) (redis.UniversalClient, Options)

func miniBackend(t *testing.T) (redis.UniversalClient, Options) {
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb, Options{Keys: keys.New("allot:")}
}

// perCheck is open with CheckMany sending one check.lua call per check,
// as on a Redis Cluster, instead of one check_many.lua call per batch.
func perCheck(open backend) backend {
	return func(t *testing.T) (redis.UniversalClient, Options) {
		rdb, opts := open(t)
		opts.OneScriptPerCheck = true
		return rdb, opts
	}
}

// windowStart returns the start of a window of d an hour after the test's
// now (testenv.Now). The script sets expiry times on the test clock, but
// Redis (and miniredis) expires keys on its own: starting an hour ahead
// keeps every key alive however slowly a loaded machine runs the test.
func windowStart(t testing.TB, d time.Duration) time.Time {
	return testenv.Now(t).Add(time.Hour).Truncate(d).Add(d)
}

func newStore(t *testing.T, open backend, start time.Time) (*Store, *fakeClock, redis.UniversalClient) {
	t.Helper()
	rdb, opts := open(t)
	clock := &fakeClock{t: start}
	opts.Now = clock.Now
	s, err := New(t.Context(), rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s, clock, rdb
}

func check(t *testing.T, s *Store, uid string, l Limit, cost int64) Decision {
	t.Helper()
	d, err := s.Check(t.Context(), uid, l, cost)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return d
}

func ms(n int64) time.Duration { return time.Duration(n) * time.Millisecond }

// The behaviour tests run on miniredis here and, gated, on the real Redis,
// each on both paths of CheckMany (Check is CheckMany of one).
var behaviours = []struct {
	name string
	fn   func(t *testing.T, open backend)
}{
	{"FixedWindowExact", testFixedWindow},
	{"StaleKeyOfTheSameParityCountsAsEmpty", testStaleKey},
	{"OneSecondWindowAndExpiry", testOneSecondWindow},
	{"LimitsAndOverrides", testLimitsAndOverrides},
	{"SlidingWeightsThePreviousWindow", testSliding},
	{"SlidingStopsTheBoundaryBurst", testBoundaryBurst},
	{"SlidingRetryAfterIsExact", testSlidingRetryAfter},
	{"SlidingWorstCaseIsTheProvenBound", testSlidingWorstCase},
	{"Reset", testReset},
	{"RedisTimeIsTheClock", testRedisTime},
	{"HitsCountOnce", testHits},
	{"HitsCountInTheirStreamTimesWindow", testHitsByStreamTime},
	{"HitsWaitForTheEpochMarker", testHitsGuarded},
	{"HitsWaitForTheirSlotsMarker", testHitsGuardedBySlot},
	{"ScriptReloadsAfterFlush", testScriptReload},
	{"CheckManyDecidesInOrder", testCheckMany},
	{"WrongTypeIsNotARedisOutage", testWrongType},
	{"OneScriptDecidesAsOneScriptPerCheck", testBatchMatchesPerCheck},
	{"NumbersAtTheEdges", testNumbersAtTheEdges},
}

func TestBehaviourMiniredis(t *testing.T) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) { b.fn(t, miniBackend) })
		t.Run(b.name+"/OneScriptPerCheck", func(t *testing.T) { b.fn(t, perCheck(miniBackend)) })
	}
}

func testFixedWindow(t *testing.T, open backend) {
	start := windowStart(t, time.Minute)
	s, clock, _ := newStore(t, open, start.Add(10*time.Second))
	l := Limit{Service: "upload", Interval: time.Minute, Mode: ModeFixed, Configured: 3, DefaultGrant: 500}
	type got struct {
		Allowed               bool
		Remaining, Used       int64
		ResetAfter, RetryAfer time.Duration
	}
	var steps []got
	for _, cost := range []int64{1, 0, 2, 1, 0, 5} {
		d := check(t, s, "u-1", l, cost)
		if d.Limit != 3 {
			t.Fatalf("limit %d, want 3", d.Limit)
		}
		steps = append(steps, got{d.Allowed, d.Remaining, d.Used, d.ResetAfter, d.RetryAfter})
	}
	want := []got{
		{true, 2, 1, 50 * time.Second, 0},
		{true, 2, 1, 50 * time.Second, 0},                 // a peek consumes nothing
		{true, 0, 3, 50 * time.Second, 0},                 // exactly to the limit
		{false, 0, 3, 50 * time.Second, 50 * time.Second}, // refused: nothing consumed
		{false, 0, 3, 50 * time.Second, 50 * time.Second}, // a peek: a call of 1 would not pass
		{false, 0, 3, 50 * time.Second, 50 * time.Second},
	}
	if diff := cmp.Diff(want, steps); diff != "" {
		t.Errorf("decisions (-want +got):\n%s", diff)
	}
	// Another uid and another service have windows of their own.
	if d := check(t, s, "u-2", l, 3); !d.Allowed {
		t.Errorf("u-2 refused: %+v", d)
	}
	// The next window starts empty, at its epoch-aligned start.
	clock.Set(start.Add(time.Minute - time.Millisecond))
	if d := check(t, s, "u-1", l, 1); d.Allowed || d.RetryAfter != time.Millisecond {
		t.Errorf("1ms before the window ends: %+v", d)
	}
	clock.Set(start.Add(time.Minute))
	if d := check(t, s, "u-1", l, 3); !d.Allowed || d.Remaining != 0 || d.ResetAfter != time.Minute {
		t.Errorf("new window: %+v", d)
	}
}

func testStaleKey(t *testing.T, open backend) {
	start := windowStart(t, time.Second)
	s, clock, _ := newStore(t, open, start)
	l := Limit{Service: "s", Interval: time.Second, Mode: ModeFixed, Configured: 2}
	check(t, s, "u-1", l, 2)
	// Two windows on, the same parity: the key may still exist (its
	// expiry is on Redis's real clock), but it holds an older index.
	clock.Add(2 * time.Second)
	if d := check(t, s, "u-1", l, 2); !d.Allowed {
		t.Errorf("a stale window was counted: %+v", d)
	}
	// Sliding mode ignores a "previous" window that is not the one just
	// before.
	ls := l
	ls.Mode = ModeSliding
	clock.Add(2 * time.Second)
	if d := check(t, s, "u-1", ls, 2); !d.Allowed {
		t.Errorf("sliding counted a window two back: %+v", d)
	}
}

func testOneSecondWindow(t *testing.T, open backend) {
	s, clock, rdb := newStore(t, open, testenv.Now(t))
	l := Limit{Service: "fast", Interval: time.Second, Mode: ModeFixed, Configured: 5}
	now := clock.Now()
	d := check(t, s, "u-1", l, 5)
	end := now.Truncate(time.Second).Add(time.Second)
	if !d.Allowed || d.ResetAfter != end.Sub(now).Truncate(time.Millisecond) {
		t.Errorf("decision %+v, want reset after %v", d, end.Sub(now))
	}
	if d := check(t, s, "u-1", l, 1); d.Allowed {
		t.Errorf("6th call in a 1s window allowed: %+v", d)
	}
	// The key lives until one interval after its window ends: never less.
	even, odd := s.Keys().RateLimit("u-1", "fast")
	key := even
	if now.UnixMilli()/1000%2 == 1 {
		key = odd
	}
	// The expiry is set on the test clock, which may run ahead of the
	// server's (testenv.ClockShift): compare the absolute time, not a TTL.
	at, err := rdb.PExpireTime(t.Context(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	// miniredis derives PEXPIRETIME from a TTL that does not count down
	// while its clock moves: allow it the test's running time.
	want := end.Add(time.Second)
	if got := time.UnixMilli(at.Milliseconds()); got.Before(want) || got.After(want.Add(500*time.Millisecond)) {
		t.Errorf("expires at %s, want %s (window end + 1 interval)", got, want)
	}
	clock.Set(end)
	if d := check(t, s, "u-1", l, 5); !d.Allowed {
		t.Errorf("the next 1s window refused: %+v", d)
	}
}

func testLimitsAndOverrides(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open, windowStart(t, time.Minute))
	ctx := t.Context()
	grants := s.Keys().Grants("u-1")
	limitOf := func(l Limit) int64 {
		t.Helper()
		return check(t, s, "u-1", l, 0).Limit
	}
	own := Limit{Interval: time.Minute, Mode: ModeFixed, Configured: -1, DefaultGrant: 500}
	configured := Limit{Service: "upload", Interval: time.Minute, Mode: ModeFixed, Configured: 10, DefaultGrant: 500}
	unconfigured := Limit{Service: "search", Interval: time.Minute, Mode: ModeSliding, Configured: -1, DefaultGrant: 500}
	type limits struct{ Own, Configured, Unconfigured int64 }
	read := func() limits { return limits{limitOf(own), limitOf(configured), limitOf(unconfigured)} }

	if diff := cmp.Diff(limits{500, 10, 500}, read()); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	// The uid's ratelimit grant (meter.grants sets it) moves its own limit
	// and every service without a configured one, at once.
	rdb.HSet(ctx, grants, "ratelimit", "7")
	if diff := cmp.Diff(limits{7, 10, 7}, read()); diff != "" {
		t.Errorf("ratelimit grant (-want +got):\n%s", diff)
	}
	// ratelimit_<service> wins over everything for that service.
	rdb.HSet(ctx, grants, "ratelimit_upload", "2.9", "ratelimit_search", "0")
	if diff := cmp.Diff(limits{7, 2, 0}, read()); diff != "" {
		t.Errorf("per-service grants (-want +got):\n%s", diff)
	}
	if d := check(t, s, "u-1", unconfigured, 1); d.Allowed || d.RetryAfter != d.ResetAfter {
		t.Errorf("a limit of 0 must refuse: %+v", d)
	}
	rdb.HDel(ctx, grants, "ratelimit", "ratelimit_upload", "ratelimit_search")
	if diff := cmp.Diff(limits{500, 10, 500}, read()); diff != "" {
		t.Errorf("unset (-want +got):\n%s", diff)
	}
}

func testSliding(t *testing.T, open backend) {
	start := windowStart(t, 10*time.Second)
	s, clock, _ := newStore(t, open, start)
	l := Limit{Service: "s", Interval: 10 * time.Second, Mode: ModeSliding, Configured: 10}
	if d := check(t, s, "u-1", l, 10); !d.Allowed {
		t.Fatalf("%+v", d)
	}
	// 3s into the next window, 70% of the previous window still counts: 7.
	clock.Set(start.Add(13 * time.Second))
	d := check(t, s, "u-1", l, 0)
	if diff := cmp.Diff(Decision{Allowed: true, Limit: 10, Remaining: 3, Used: 7, ResetAfter: 7 * time.Second}, d); diff != "" {
		t.Errorf("peek (-want +got):\n%s", diff)
	}
	if d := check(t, s, "u-1", l, 3); !d.Allowed || d.Remaining != 0 {
		t.Errorf("3 more: %+v", d)
	}
	if d := check(t, s, "u-1", l, 1); d.Allowed {
		t.Errorf("11th in the sliding interval allowed: %+v", d)
	}
}

func testBoundaryBurst(t *testing.T, open backend) {
	const limit = 100
	for _, mode := range []string{ModeFixed, ModeSliding} {
		t.Run(mode, func(t *testing.T) {
			start := windowStart(t, time.Second)
			s, clock, _ := newStore(t, open, start.Add(999*time.Millisecond))
			l := Limit{Service: "burst", Interval: time.Second, Mode: mode, Configured: limit}
			admitted := 0
			// limit calls in the last ms of one window, limit more in the
			// first ms of the next: 2 ms apart in all.
			for range limit {
				if check(t, s, "u-1", l, 1).Allowed {
					admitted++
				}
			}
			clock.Set(start.Add(time.Second))
			for range limit {
				if check(t, s, "u-1", l, 1).Allowed {
					admitted++
				}
			}
			want := 2 * limit // fixed: the known weakness
			if mode == ModeSliding {
				want = limit
			}
			if admitted != want {
				t.Errorf("%s admitted %d of a 2x boundary burst, want %d", mode, admitted, want)
			}
		})
	}
}

func testSlidingRetryAfter(t *testing.T, open backend) {
	start := windowStart(t, time.Second)
	for _, tc := range []struct {
		name      string
		prev, cur int64 // admitted at the end of the previous window and now
		at        time.Duration
		cost      int64
		retry     time.Duration
	}{
		{"the previous window must decay", 10, 2, 300 * time.Millisecond, 3, 200 * time.Millisecond},
		{"the previous window must decay, cost 1", 4, 6, 100 * time.Millisecond, 1, 150 * time.Millisecond},
		{"this window is full", 0, 10, 100 * time.Millisecond, 1, 1000 * time.Millisecond},       // 900ms to the window's end, 100ms of decay
		{"this window is full, cost 5", 0, 8, 900 * time.Millisecond, 5, 475 * time.Millisecond}, // 100ms + 375ms
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, clock, _ := newStore(t, open, start.Add(999*time.Millisecond))
			l := Limit{Service: "r", Interval: time.Second, Mode: ModeSliding, Configured: 10}
			if tc.prev > 0 {
				check(t, s, "u-1", l, tc.prev)
			}
			clock.Set(start.Add(time.Second + tc.at))
			if d := check(t, s, "u-1", l, tc.cur); !d.Allowed {
				t.Fatalf("setup refused: %+v", d)
			}
			d := check(t, s, "u-1", l, tc.cost)
			if d.Allowed || d.RetryAfter != tc.retry {
				t.Fatalf("want a refusal with retry_after %v, got %+v", tc.retry, d)
			}
			// 1ms earlier it still refuses; at retry_after it passes.
			clock.Add(d.RetryAfter - time.Millisecond)
			if e := check(t, s, "u-1", l, tc.cost); e.Allowed {
				t.Errorf("allowed 1ms before retry_after %v: %+v", d.RetryAfter, e)
			}
			clock.Add(time.Millisecond)
			if e := check(t, s, "u-1", l, tc.cost); !e.Allowed {
				t.Errorf("refused at retry_after %v: %+v", d.RetryAfter, e)
			}
		})
	}
}

// SlidingBound is the most a sliding limit admits within any span of one
// interval (see the package doc of services/ratelimit for the proof):
// limit + floor(limit * (interval_ms - 2) / interval_ms).
func SlidingBound(limit int64, interval time.Duration) int64 {
	i := interval.Milliseconds()
	return limit + limit*(i-2)/i
}

// testSlidingWorstCase plays the pattern the proof says is worst — limit
// in the last ms of a window after an empty one, then as much as passes
// up to 2 ms before the next window ends — and checks it reaches the
// bound exactly and no more.
func testSlidingWorstCase(t *testing.T, open backend) {
	for _, tc := range []struct {
		limit    int64
		interval time.Duration
	}{{10, time.Second}, {100, time.Second}, {500, 5 * time.Second}} {
		start := windowStart(t, tc.interval)
		s, clock, _ := newStore(t, open, start.Add(tc.interval-time.Millisecond))
		l := Limit{Service: "w", Interval: tc.interval, Mode: ModeSliding, Configured: tc.limit}
		var admitted []time.Time
		if d := check(t, s, "u-1", l, tc.limit); !d.Allowed {
			t.Fatalf("burst refused: %+v", d)
		}
		for range tc.limit {
			admitted = append(admitted, clock.Now())
		}
		// Every ms of the next window, take whatever passes.
		for at := tc.interval; at < 2*tc.interval; at += time.Millisecond {
			clock.Set(start.Add(at))
			for check(t, s, "u-1", l, 1).Allowed {
				admitted = append(admitted, clock.Now())
			}
		}
		got := maxInSpan(admitted, tc.interval)
		if want := SlidingBound(tc.limit, tc.interval); got != want {
			t.Errorf("limit %d per %v: worst span holds %d, want the bound %d exactly", tc.limit, tc.interval, got, want)
		}
	}
}

// maxInSpan returns the most times (sorted) inside any [s, s+span).
func maxInSpan(times []time.Time, span time.Duration) int64 {
	best, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= span {
			j++
		}
		best = max(best, i-j+1)
	}
	return int64(best)
}

func testReset(t *testing.T, open backend) {
	s, _, _ := newStore(t, open, windowStart(t, time.Minute))
	for _, svc := range []string{"", "upload"} {
		l := Limit{Service: svc, Interval: time.Minute, Mode: ModeFixed, Configured: 1, DefaultGrant: 1}
		check(t, s, "u-1", l, 1)
		if d := check(t, s, "u-1", l, 1); d.Allowed {
			t.Fatalf("%q: over the limit allowed", svc)
		}
		if err := s.Reset(t.Context(), "u-1", svc); err != nil {
			t.Fatal(err)
		}
		if d := check(t, s, "u-1", l, 1); !d.Allowed {
			t.Errorf("%q: refused after reset: %+v", svc, d)
		}
	}
}

func testScriptReload(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open, windowStart(t, time.Minute))
	if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	l := Limit{Service: "s", Interval: time.Minute, Mode: ModeFixed, Configured: 1}
	if d := check(t, s, "u-1", l, 1); !d.Allowed {
		t.Errorf("%+v", d)
	}
	// A batch that finds the script gone is sent again once, whole: each
	// call decided once, in order (u-2 allowed then refused, u-1 refused).
	if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	ds, errs := s.CheckMany(t.Context(), []CheckOp{{"u-2", l, 1}, {"u-2", l, 1}, {"u-1", l, 1}, {"u-3", l, 0}})
	var got []bool
	for i, d := range ds {
		if errs[i] != nil {
			t.Fatalf("op %d: %v", i, errs[i])
		}
		got = append(got, d.Allowed)
	}
	if diff := cmp.Diff([]bool{true, false, false, true}, got); diff != "" {
		t.Errorf("allowed after a flush (-want +got):\n%s", diff)
	}
	if d := check(t, s, "u-2", l, 0); d.Used != 1 {
		t.Errorf("u-2's window holds %d, want 1: a call counted twice", d.Used)
	}
}

// testCheckMany checks that a pipelined batch decides as the same calls
// made one by one would: each in order, on its own uid and service.
func testCheckMany(t *testing.T, open backend) {
	start := windowStart(t, time.Minute)
	s, _, _ := newStore(t, open, start.Add(10*time.Second))
	one := Limit{Service: "upload", Interval: time.Minute, Mode: ModeFixed, Configured: 2, DefaultGrant: 500}
	slide := Limit{Service: "search", Interval: time.Minute, Mode: ModeSliding, Configured: 1}
	own := Limit{Interval: time.Minute, Mode: ModeFixed, Configured: -1, DefaultGrant: 500}
	ops := []CheckOp{
		{"u-1", one, 1}, {"u-2", one, 2}, {"u-1", one, 0}, {"u-1", one, 1},
		{"u-1", one, 1}, {"u-2", one, 1}, {"u-1", slide, 1}, {"u-1", slide, 1}, {"u-1", own, 7},
	}
	ds, errs := s.CheckMany(t.Context(), ops)
	if len(ds) != len(ops) || len(errs) != len(ops) {
		t.Fatalf("%d decisions and %d errors for %d ops", len(ds), len(errs), len(ops))
	}
	type got struct {
		Allowed          bool
		Limit, Remaining int64
		RetryAfter       time.Duration
	}
	var steps []got
	for i, d := range ds {
		if errs[i] != nil {
			t.Fatalf("op %d: %v", i, errs[i])
		}
		steps = append(steps, got{d.Allowed, d.Limit, d.Remaining, d.RetryAfter})
	}
	want := []got{
		{true, 2, 1, 0},
		{true, 2, 0, 0},
		{true, 2, 1, 0}, // a peek
		{true, 2, 0, 0},
		{false, 2, 0, 50 * time.Second},
		{false, 2, 0, 50 * time.Second},
		{true, 1, 0, 0},
		{false, 1, 0, 110 * time.Second}, // sliding: until this window's call has decayed out
		{true, 500, 493, 0},
	}
	if diff := cmp.Diff(want, steps); diff != "" {
		t.Errorf("decisions (-want +got):\n%s", diff)
	}
	if ds, errs := s.CheckMany(t.Context(), nil); len(ds) != 0 || len(errs) != 0 {
		t.Errorf("no ops: %v %v", ds, errs)
	}
}

func TestRedisDown(t *testing.T) {
	for _, perCheck := range []bool{false, true} {
		t.Run(fmt.Sprintf("OneScriptPerCheck=%v", perCheck), func(t *testing.T) { testRedisDown(t, perCheck) })
	}
}

func testRedisDown(t *testing.T, perCheck bool) {
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	s, err := New(t.Context(), rdb, Options{Keys: keys.New("allot:"), OneScriptPerCheck: perCheck})
	if err != nil {
		t.Fatal(err)
	}
	mr.Close()
	l := Limit{Service: "s", Interval: time.Second, Mode: ModeFixed, Configured: 1}
	_, err = s.Check(t.Context(), "u-1", l, 1)
	if !errors.Is(err, ErrRedis) {
		t.Errorf("Check with Redis down: %v, want ErrRedis", err)
	}
	_, errs := s.CheckMany(t.Context(), []CheckOp{{"u-1", l, 1}, {"u-2", l, 0}})
	for i, err := range errs {
		if !errors.Is(err, ErrRedis) {
			t.Errorf("CheckMany op %d with Redis down: %v, want ErrRedis", i, err)
		}
	}
	if err := s.Reset(t.Context(), "u-1", "s"); !errors.Is(err, ErrRedis) {
		t.Errorf("Reset with Redis down: %v, want ErrRedis", err)
	}
}

func testWrongType(t *testing.T, open backend) {
	rdb, opts := open(t)
	s, err := New(t.Context(), rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	rdb.Set(t.Context(), s.Keys().Grants("u-1"), "x", 0)
	l := Limit{Service: "s", Interval: time.Second, Mode: ModeFixed, Configured: 1}
	_, err = s.Check(t.Context(), "u-1", l, 1)
	if err == nil || errors.Is(err, ErrRedis) {
		t.Errorf("a key of the wrong type: %v, want a script error", err)
	}
	// In a batch the error is that call's alone.
	ds, errs := s.CheckMany(t.Context(), []CheckOp{{"u-2", l, 1}, {"u-1", l, 1}, {"u-3", l, 1}})
	if errs[1] == nil || errors.Is(errs[1], ErrRedis) {
		t.Errorf("batch: a key of the wrong type: %v, want a script error", errs[1])
	}
	for _, i := range []int{0, 2} {
		if errs[i] != nil || !ds[i].Allowed {
			t.Errorf("batch: op %d beside a script error: %+v, %v", i, ds[i], errs[i])
		}
	}
}

func testHits(t *testing.T, open backend) {
	start := windowStart(t, time.Minute)
	s, clock, _ := newStore(t, open, start.Add(time.Second))
	l := Limit{Service: "api", Interval: time.Minute, Mode: ModeFixed, Configured: 5}
	hits := []Hit{
		{ID: "e1", UID: "u-1", Service: "api", Interval: time.Minute, Value: 2},
		{ID: "e2", UID: "u-1", Service: "api", Interval: time.Minute, Value: 1},
		{ID: "e1", UID: "u-1", Service: "api", Interval: time.Minute, Value: 2}, // a redelivery
		{ID: "e1", UID: "u-1", Service: "web", Interval: time.Minute, Value: 2}, // the same event, another service
	}
	counted, errs, err := s.Hits(t.Context(), hits, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]bool{true, true, false, true}, counted); diff != "" {
		t.Errorf("counted (-want +got):\n%s", diff)
	}
	for i, e := range errs {
		if e != nil {
			t.Errorf("hit %d: %v", i, e)
		}
	}
	if d := check(t, s, "u-1", l, 0); d.Remaining != 2 || d.Used != 3 {
		t.Errorf("after hits: %+v", d)
	}
	// Sent again after a lost reply: nothing changes.
	if counted, _, _ := s.Hits(t.Context(), hits[:2], time.Hour); counted[0] || counted[1] {
		t.Errorf("a repeat was counted: %v", counted)
	}
	// Hits past the limit are facts; checks are then refused.
	s.Hits(t.Context(), []Hit{{ID: "e3", UID: "u-1", Service: "api", Interval: time.Minute, Value: 9}}, time.Hour)
	if d := check(t, s, "u-1", l, 1); d.Allowed || d.Used != 12 {
		t.Errorf("over the limit by hits: %+v", d)
	}
	// A hit in the next window starts it afresh.
	clock.Set(start.Add(time.Minute))
	s.Hits(t.Context(), []Hit{{ID: "e4", UID: "u-1", Service: "api", Interval: time.Minute, Value: 1}}, time.Hour)
	if d := check(t, s, "u-1", l, 0); d.Used != 1 {
		t.Errorf("next window: %+v", d)
	}
}

// testHitsByStreamTime runs without a test clock: a hit goes to the
// window of its stream time, not of the moment it is counted, so a replay
// of old events puts each where a live count did; one whose window a
// later one has replaced changes nothing.
func testHitsByStreamTime(t *testing.T, open backend) {
	rdb, opts := open(t)
	s, err := New(t.Context(), rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const interval = time.Hour
	// Windows of the test's clock, which Redis expires them on.
	now := testenv.Now(t)
	cur := now.Truncate(interval)
	hit := func(id string, at time.Time, v int64) bool {
		t.Helper()
		counted, errs, err := s.Hits(ctx, []Hit{{ID: id, UID: "u-1", Service: "api", Interval: interval, Value: v, At: at}}, time.Hour)
		if err != nil || errs[0] != nil {
			t.Fatalf("hit %s: %v, %v", id, err, errs[0])
		}
		return counted[0]
	}
	window := func(at time.Time) map[string]string {
		even, odd := s.Keys().RateLimit("u-1", "api")
		key := even
		if (at.UnixMilli()/interval.Milliseconds())%2 == 1 {
			key = odd
		}
		return rdb.HGetAll(ctx, key).Val()
	}
	hit("prev", cur.Add(-time.Minute), 2) // the previous window, counted now
	hit("cur", cur, 3)
	idx := func(at time.Time) string { return fmt.Sprint(at.UnixMilli() / interval.Milliseconds()) }
	if diff := cmp.Diff(map[string]string{"w": idx(cur.Add(-time.Minute)), "n": "2"}, window(cur.Add(-time.Minute))); diff != "" {
		t.Errorf("previous window (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"w": idx(cur), "n": "3"}, window(cur)); diff != "" {
		t.Errorf("current window (-want +got):\n%s", diff)
	}
	// Two windows back: its key is the current window's, which it must
	// not touch; it is recorded all the same, so it counts once.
	if !hit("old", cur.Add(-interval-time.Minute), 5) {
		t.Error("a hit of a replaced window was not recorded")
	}
	if hit("old", cur.Add(-interval-time.Minute), 5) {
		t.Error("a hit of a replaced window was recorded twice")
	}
	if diff := cmp.Diff(map[string]string{"w": idx(cur), "n": "3"}, window(cur)); diff != "" {
		t.Errorf("current window after a hit of a replaced one (-want +got):\n%s", diff)
	}
	if _, _, err := s.Hits(ctx, []Hit{{ID: "none", UID: "u-1", Service: "api", Interval: interval, Value: 1}}, time.Hour); err == nil {
		t.Error("a hit without a stream time was counted")
	}
}

// testHitsGuarded: a guarding store counts hits only while the epoch
// marker's seq is there; without it nothing changes and the error says
// the windows were lost. On a Redis Cluster the marker is the one of the
// hit's hash slot.
func testHitsGuarded(t *testing.T, open backend) { testHitsGuardedBy(t, open, false) }

// testHitsGuardedBySlot is testHitsGuarded with the markers per hash slot
// of a Redis Cluster: a hit in another slot than a marker's is refused
// without its own.
func testHitsGuardedBySlot(t *testing.T, open backend) { testHitsGuardedBy(t, open, true) }

func testHitsGuardedBy(t *testing.T, open backend, slots bool) {
	rdb, opts := open(t)
	opts.Guard, opts.SlotMarkers = true, slots
	s, err := New(t.Context(), rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	marker := s.Keys().RateLimitEpoch()
	if s.slotEpochs != nil {
		marker = s.slotEpochs[keys.Slot(keys.UserTag("u-1"))]
	}
	ctx := t.Context()
	h := []Hit{{ID: "e1", UID: "u-1", Service: "api", Interval: time.Minute, Value: 1, At: testenv.Now(t)}}
	_, _, err = s.Hits(ctx, h, time.Hour)
	if !errors.Is(err, ErrLost) || !errors.Is(err, ErrRedis) {
		t.Fatalf("without a marker: %v, want ErrLost and ErrRedis", err)
	}
	if n := rdb.Exists(ctx, s.Keys().RateLimitDedup("u-1", "api", "e1")).Val(); n != 0 {
		t.Error("a refused hit left its record")
	}
	rdb.HSet(ctx, marker, "rebuilding", "1") // a rebuild's mark alone is no marker
	if _, _, err := s.Hits(ctx, h, time.Hour); !errors.Is(err, ErrLost) {
		t.Fatalf("with the rebuilding mark alone: %v, want ErrLost", err)
	}
	rdb.HSet(ctx, marker, "seq", "0")
	t.Cleanup(func() { rdb.Del(context.WithoutCancel(ctx), marker) })
	counted, errs, err := s.Hits(ctx, h, time.Hour)
	if err != nil || errs[0] != nil || !counted[0] {
		t.Fatalf("with the marker: %v, %v, %v", counted, errs, err)
	}
	if s.slotEpochs == nil {
		return
	}
	other := []Hit{{ID: "e2", UID: "u-2", Service: "api", Interval: time.Minute, Value: 1, At: testenv.Now(t)}}
	if _, _, err := s.Hits(ctx, other, time.Hour); !errors.Is(err, ErrLost) {
		t.Fatalf("a hit in a slot without its marker: %v, want ErrLost", err)
	}
}

// testRedisTime runs without a test clock: the script reads Redis TIME,
// and a real 1s window ends when Redis says so.
func testRedisTime(t *testing.T, open backend) {
	rdb, opts := open(t)
	s, err := New(t.Context(), rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	l := Limit{Service: "s", Interval: time.Second, Mode: ModeFixed, Configured: 3}
	// Start early in a window, so the three calls land in one.
	if d := check(t, s, "u-1", l, 0); d.ResetAfter < 300*time.Millisecond {
		time.Sleep(d.ResetAfter)
	}
	for i := range 3 {
		if d := check(t, s, "u-1", l, 1); !d.Allowed {
			t.Fatalf("call %d refused: %+v", i, d)
		}
	}
	d := check(t, s, "u-1", l, 1)
	if d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > time.Second || d.RetryAfter != d.ResetAfter {
		t.Fatalf("4th call: %+v", d)
	}
	time.Sleep(d.RetryAfter + 5*time.Millisecond)
	if d := check(t, s, "u-1", l, 1); !d.Allowed {
		t.Errorf("refused after retry_after: %+v", d)
	}
}

// testBatchMatchesPerCheck sends the same batches — uids, services and
// modes mixed, peeks, keys of the wrong type, a count that is no integer,
// and (uid, service) pairs repeated — to two identical stores, one
// deciding each batch with one check_many.lua call and the other with
// one check.lua call per check, at times within a window, at its last ms,
// across boundaries and windows later. Every decision, every error's
// kind and the windows left in Redis must be the same. It picks both
// paths itself, whatever open says.
func testBatchMatchesPerCheck(t *testing.T, open backend) {
	ctx := t.Context()
	const interval = 10 * time.Second
	start := windowStart(t, interval)
	clock := &fakeClock{t: start.Add(2 * time.Second)}
	var stores [2]*Store
	var rdbs [2]redis.UniversalClient
	for i, per := range []bool{false, true} {
		rdb, opts := open(t)
		opts.Now = clock.Now
		opts.OneScriptPerCheck = per
		s, err := New(ctx, rdb, opts)
		if err != nil {
			t.Fatal(err)
		}
		stores[i], rdbs[i] = s, rdb
	}
	fixed := Limit{Service: "upload", Interval: interval, Mode: ModeFixed, Configured: 3, DefaultGrant: 500}
	slide := Limit{Service: "search", Interval: interval, Mode: ModeSliding, Configured: 5, DefaultGrant: 500}
	own := Limit{Interval: time.Second, Mode: ModeFixed, Configured: -1, DefaultGrant: 4}
	unconfigured := Limit{Service: "feed", Interval: interval, Mode: ModeSliding, Configured: -1, DefaultGrant: 6}
	limits := []Limit{fixed, slide, own, unconfigured}
	uids := []string{"u-1", "u-2", "u-3", "u-4", "u-5", "u-bad"}
	for i, s := range stores {
		k, rdb := s.Keys(), rdbs[i]
		// u-1's own limit and its unconfigured services: 2; u-2's upload 1,
		// its search 7.
		rdb.HSet(ctx, k.Grants("u-1"), "ratelimit", "2")
		rdb.HSet(ctx, k.Grants("u-2"), "ratelimit_upload", "1", "ratelimit_search", "7.5")
		// u-bad's grants and u-3's search windows are strings: their
		// checks fail (WRONGTYPE), each alone.
		rdb.Set(ctx, k.Grants("u-bad"), "x", time.Hour)
		even, odd := k.RateLimit("u-3", "search")
		rdb.Set(ctx, even, "x", time.Hour)
		rdb.Set(ctx, odd, "x", time.Hour)
		// u-4's upload window holds a count that is no integer: a peek
		// reads it as 0, a call fails on HINCRBY (ERR), having written
		// nothing.
		w := clock.Now().UnixMilli() / interval.Milliseconds()
		even, odd = k.RateLimit("u-4", "upload")
		if w%2 == 1 {
			even = odd
		}
		rdb.HSet(ctx, even, "w", w, "n", "x")
		rdb.Expire(ctx, even, time.Hour)
	}
	batch := []CheckOp{
		{"u-1", fixed, 1}, {"u-1", fixed, 1}, {"u-2", fixed, 1}, {"u-1", fixed, 0}, {"u-1", fixed, 2},
		{"u-1", own, 1}, {"u-bad", fixed, 1}, {"u-1", own, 1}, {"u-1", own, 1}, {"u-1", own, 0},
		{"u-1", slide, 3}, {"u-2", slide, 4}, {"u-1", slide, 2}, {"u-1", slide, 1}, {"u-2", slide, 0},
		{"u-3", slide, 1}, {"u-3", fixed, 1}, {"u-4", fixed, 1}, {"u-4", fixed, 0}, {"u-3", slide, 0},
		{"u-1", unconfigured, 1}, {"u-2", unconfigured, 5}, {"u-1", unconfigured, 1}, {"u-1", unconfigured, 1},
		{"u-bad", own, 0}, {"u-2", fixed, 1}, {"u-5", slide, 9}, {"u-5", slide, 0}, {"u-5", slide, 5},
		{"u-2", slide, 4}, {"u-5", fixed, 3}, {"u-5", fixed, 1}, {"u-2", own, 4}, {"u-2", own, 0},
	}
	type outcome struct {
		Decision Decision
		Failed   bool
		Code     string // the Redis error code of a failed check
		ErrRedis bool
		// WRONGTYPE is in the message (miniredis, whose Lua puts the line
		// before it, reports the code as ERR).
		WrongType bool
	}
	var allowed, refused, failed int
	for _, at := range []time.Duration{
		2 * time.Second, 2 * time.Second, 6500 * time.Millisecond, interval - time.Millisecond,
		interval, interval + 1700*time.Millisecond, 2*interval - 1, 3*interval + 4*time.Second,
	} {
		clock.Set(start.Add(at))
		var got [2][]outcome
		for i, s := range stores {
			ds, errs := s.CheckMany(ctx, batch)
			for j := range batch {
				o := outcome{Decision: ds[j], Failed: errs[j] != nil, Code: errCode(errs[j]), ErrRedis: errors.Is(errs[j], ErrRedis),
					WrongType: errs[j] != nil && strings.Contains(errs[j].Error(), "WRONGTYPE")}
				got[i] = append(got[i], o)
				if i == 0 {
					switch {
					case o.Failed:
						failed++
					case o.Decision.Allowed:
						allowed++
					default:
						refused++
					}
				}
			}
		}
		if diff := cmp.Diff(got[1], got[0]); diff != "" {
			t.Errorf("at %v: check_many.lua (+) against check.lua per check (-):\n%s", at, diff)
		}
		for j, o := range got[0] {
			uid := batch[j].UID
			wantFail := uid == "u-bad" || (uid == "u-3" && batch[j].Limit.Service == "search")
			if (wantFail && !o.WrongType) || o.ErrRedis {
				t.Errorf("at %v: op %d (%s/%s): %+v", at, j, uid, batch[j].Limit.Service, o)
			}
		}
	}
	if allowed == 0 || refused == 0 || failed == 0 {
		t.Errorf("%d allowed, %d refused, %d failed: the batch should have all three", allowed, refused, failed)
	}
	// The windows left behind are the same.
	type window struct {
		Hash   map[string]string
		Err    bool
		Expiry bool
	}
	for _, uid := range uids {
		for _, l := range limits {
			var got [2][2]window
			for i, s := range stores {
				even, odd := s.Keys().RateLimit(uid, l.Service)
				for p, key := range []string{even, odd} {
					h, err := rdbs[i].HGetAll(ctx, key).Result()
					ttl := rdbs[i].PTTL(ctx, key).Val()
					got[i][p] = window{Hash: h, Err: err != nil, Expiry: ttl > 0}
				}
			}
			if diff := cmp.Diff(got[1], got[0]); diff != "" {
				t.Errorf("%s/%s: windows of check_many.lua (+) against check.lua per check (-):\n%s", uid, l.Service, diff)
			}
		}
	}
}

// errCode returns the Redis error code ("WRONGTYPE", "ERR") of a check
// that failed in its script, "" for none.
func errCode(err error) string {
	if err == nil {
		return ""
	}
	m := regexp.MustCompile(`^store: check [^ ]*: ([A-Z]+) `).FindStringSubmatch(err.Error())
	if m == nil {
		return "?"
	}
	return m[1]
}
