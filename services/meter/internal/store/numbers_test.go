package store

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/pkg/usage"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
)

// snapshot is every key under prefix with its type, contents and whether
// it expires: what a refused input must leave as it was.
func snapshot(t *testing.T, rdb redis.UniversalClient, prefix string) map[string]string {
	t.Helper()
	ctx := t.Context()
	out := map[string]string{}
	// Every master's keys: a Cluster client's SCAN sees one node's.
	all, err := testenv.Keys(ctx, rdb, prefix+"*")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range all {
		typ, err := rdb.Type(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		var v string
		switch typ {
		case "hash":
			h, err := rdb.HGetAll(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			fields := make([]string, 0, len(h))
			for f, x := range h {
				fields = append(fields, f+"="+x)
			}
			sort.Strings(fields)
			v = strings.Join(fields, " ")
		case "string":
			v, _ = rdb.Get(ctx, k).Result()
		case "set":
			m, _ := rdb.SMembers(ctx, k).Result()
			sort.Strings(m)
			v = strings.Join(m, " ")
		}
		ttl, _ := rdb.PTTL(ctx, k).Result()
		out[k] = fmt.Sprintf("%s %s expires=%v", typ, v, ttl > 0)
	}
	return out
}

// unchanged fails t when the keys under prefix differ from before.
func unchanged(t *testing.T, rdb redis.UniversalClient, prefix string, before map[string]string, what string) {
	t.Helper()
	if diff := cmp.Diff(before, snapshot(t, rdb, prefix)); diff != "" {
		t.Errorf("%s changed Redis (-before +after):\n%s", what, diff)
	}
}

// storeEdges are the edge numbers as the store receives them, past the
// edge's own check, with what each path must keep: the plain decimal, or
// "" when the scripts must refuse it and change nothing. The scripts keep
// any decimal of at most 6 places up to 1e15 (the edge also refuses more
// than 15 significant digits, which the float64 it reads cannot vouch
// for); counters, grants and authorize take no negative numbers.
var storeEdges = []struct {
	name    string
	v       float64
	sum     string // counter, grant, authorize
	gauge   string
	refused bool // by SetOverrides (the edge's rule)
}{
	{"NaN", math.NaN(), "", "", true},
	{"+Inf", math.Inf(1), "", "", true},
	{"-Inf", math.Inf(-1), "", "", true},
	{"-0", math.Copysign(0, -1), "0", "0", false},
	{"0", 0, "0", "0", false},
	{"1e-300", 1e-300, "", "", true},
	{"5e-324", 5e-324, "", "", true},
	{"1e-7", 1e-7, "", "", true},
	{"1e-6", 1e-6, "0.000001", "0.000001", false},
	{"0.1", 0.1, "0.1", "0.1", false},
	{"-2.5", -2.5, "", "-2.5", true},
	{"15 digits", 123456789.123456, "123456789.123456", "123456789.123456", false},
	{"16 digits", 1234567890.123456, "1234567890.123456", "1234567890.123456", true},
	{"1e15", 1e15, "1000000000000000", "1000000000000000", false},
	{"-1e15", -1e15, "", "-1000000000000000", true},
	{"1e15+1", 1e15 + 1, "", "", true},
	{"2^53", 1 << 53, "", "", true},
	{"2^53+1", 1<<53 + 1, "", "", true},
	{"1e20+1", 1e20 + 1, "", "", true},
	{"1e308", 1e308, "", "", true},
}

// testNumbersAtTheEdges applies every edge number to a counter, a gauge,
// a grant, an authorize request and a grant override, each on a uid of
// its own, and checks what Redis holds: the exact decimal, or nothing
// changed at all.
func testNumbersAtTheEdges(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open)
	ctx := t.Context()
	k := s.Keys()
	prefix := k.Prefix()
	counter := counterCfg(usage.StyleCounter, usage.ScopeUser)
	gauge := counterCfg(usage.StyleGauge, usage.ScopeUser)
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar, 50, 100)
	for i, tc := range storeEdges {
		uid := fmt.Sprintf("u-%d", i)
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range []struct {
				path string
				op   Op
				want string
				held func() string
			}{
				{"counter", Op{ID: "c", UID: uid, Metric: "c", Config: counter, Value: tc.v, Field: "f"}, tc.sum,
					func() string { return rdb.HGet(ctx, k.Values(keys.UserTag(uid), "c"), "f").Val() }},
				{"gauge", Op{ID: "g", UID: uid, Metric: "g", Config: gauge, Value: tc.v, Field: "f"}, tc.gauge,
					func() string { return rdb.HGet(ctx, k.Values(keys.UserTag(uid), "g"), "f").Val() }},
				{"grant", Op{ID: "t", UID: uid, Metric: "t", Config: grant, Limit: 1e15, Value: tc.v}, tc.sum,
					func() string { return rdb.HGet(ctx, k.Grant(uid, "t"), "u").Val() }},
			} {
				before := snapshot(t, rdb, prefix)
				res, err := s.Apply(ctx, []Op{c.op})
				if err != nil {
					t.Fatalf("%s: Apply: %v", c.path, err)
				}
				if c.want == "" {
					if !errors.Is(res[0].Err, ErrOutOfRange) {
						t.Errorf("%s: %+v, want a RangeError", c.path, res[0])
					}
					unchanged(t, rdb, prefix, before, c.path+" refusing "+tc.name)
					continue
				}
				if res[0].Err != nil || !res[0].Applied {
					t.Errorf("%s: %+v", c.path, res[0])
				}
				if got := c.held(); got != c.want {
					t.Errorf("%s holds %q, want %q", c.path, got, c.want)
				}
			}

			before := snapshot(t, rdb, prefix)
			d, err := s.Authorize(ctx, AuthorizeOp{ID: "a", UID: uid, Metric: "a", Config: grant, Limit: 1e15, Amount: tc.v})
			if err != nil {
				t.Fatalf("authorize: %v", err)
			}
			if tc.sum == "" {
				if d.Allowed {
					t.Errorf("authorize allowed %v: %+v", tc.v, d)
				}
				unchanged(t, rdb, prefix, before, "authorize refusing "+tc.name)
			} else if got := rdb.HGet(ctx, k.Grant(uid, "a"), "u").Val(); !d.Allowed || got != tc.sum {
				t.Errorf("authorize: %+v, used holds %q, want %q", d, got, tc.sum)
			}

			before = snapshot(t, rdb, prefix)
			_, err = s.SetOverrides(ctx, uid, map[string]float64{"o": tc.v}, nil)
			if tc.refused {
				if !errors.Is(err, events.ErrInvalid) {
					t.Errorf("override %v: %v, want a ValidationError", tc.v, err)
				}
				unchanged(t, rdb, prefix, before, "an override of "+tc.name)
			} else if got := rdb.HGet(ctx, k.Grants(uid), "o").Val(); err != nil || got != tc.sum {
				t.Errorf("override: %v, holds %q, want %q", err, got, tc.sum)
			}
		})
	}
}

// testSumsStopAtTheLargestNumber: a counter, a grant's used and an
// authorization reach 1e15 exactly, and the next step past it is refused
// without changing anything; a redelivery of an applied event is still a
// duplicate, not a refusal.
func testSumsStopAtTheLargestNumber(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open)
	ctx := t.Context()
	prefix := s.Keys().Prefix()
	counter := counterCfg(usage.StyleCounter, usage.ScopeUser)
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar, 100)
	c := func(id string, v float64) Op {
		return Op{ID: id, UID: "u-1", Metric: "c", Config: counter, Value: v, Field: "f"}
	}
	g := func(id string, v float64) Op {
		return Op{ID: id, UID: "u-1", Metric: "t", Config: grant, Limit: 1e15, Value: v}
	}
	res := apply(t, s, c("c1", 999999999999999), c("c2", 0.5), c("c3", 0.5), g("g1", 999999999999999), g("g2", 0.999999), g("g3", 0.000001))
	if got := rdb.HGet(ctx, s.Keys().Values(keys.UserTag("u-1"), "c"), "f").Val(); got != "1000000000000000" {
		t.Errorf("counter holds %q, want 1000000000000000", got)
	}
	if st := res[5].Grant; st == nil || st.Used != 1e15 || len(res[5].Notices) != 1 || res[5].Notices[0].Used != 1e15 {
		t.Fatalf("grant at 1e15: %+v", res[5])
	}
	// The notice the meter would publish passes the notifier's check.
	n := res[5].Notices[0]
	if err := (events.UsageNotice{ID: "n", UID: "u-1", Metric: "t", Threshold: n.Threshold, Used: n.Used, Limit: n.Limit, Period: "day"}).Validate(); err != nil {
		t.Errorf("the notice at 1e15 is refused: %v", err)
	}
	before := snapshot(t, rdb, prefix)
	for _, op := range []Op{c("c4", 0.000001), c("c5", 1e15), g("g4", 0.000001), g("g5", 1)} {
		res, err := s.Apply(ctx, []Op{op})
		var rerr *RangeError
		if err != nil || !errors.As(res[0].Err, &rerr) || rerr.Held != "1000000000000000" {
			t.Errorf("%s past 1e15: %+v, %v; want a RangeError holding 1000000000000000", op.ID, res, err)
		}
	}
	// In one chunk too, beside an event that applies.
	res, err := s.Apply(ctx, []Op{c("c6", 1), g("g6", 2), {ID: "o1", UID: "u-2", Metric: "c", Config: counter, Value: 1, Field: "f"}})
	if err != nil || !errors.Is(res[0].Err, ErrOutOfRange) || !errors.Is(res[1].Err, ErrOutOfRange) || !res[2].Applied {
		t.Errorf("a chunk with two refusals: %+v, %v", res, err)
	}
	set, member := s.DedupRecord(Op{ID: "o1", UID: "u-2", Config: counter})
	rdb.Del(ctx, s.Keys().Values(keys.UserTag("u-2"), "c"))
	rdb.SRem(ctx, set, member) // a SET left empty is gone
	unchanged(t, rdb, prefix, before, "events past 1e15")
	if res := apply(t, s, c("c3", 0.5), g("g3", 0.000001)); res[0].Applied || res[1].Applied {
		t.Errorf("redelivered events at 1e15 must be duplicates: %+v", res)
	}
	d, err := s.Authorize(ctx, AuthorizeOp{ID: "a1", UID: "u-1", Metric: "t", Config: grant, Limit: 1e15, Amount: 0.000001})
	if err != nil || d.Allowed {
		t.Errorf("authorize past 1e15: %+v, %v", d, err)
	}
	unchanged(t, rdb, prefix, before, "authorize past 1e15")
	if d, err := s.Authorize(ctx, AuthorizeOp{ID: "a2", UID: "u-1", Metric: "t", Config: grant, Limit: 1e15, Amount: 0}); err != nil || !d.Allowed || d.Grant.Used != 1e15 {
		t.Errorf("authorize 0 at 1e15: %+v, %v", d, err)
	}
}

// testOlderStateIsRead: what earlier versions left in Redis (HINCRBYFLOAT's
// 17 decimals, an override written as 1.5e+06) is read the same on both
// stores, rounded to millionths, and written back as a plain decimal.
func testOlderStateIsRead(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open)
	ctx := t.Context()
	k := s.Keys()
	counter := counterCfg(usage.StyleCounter, usage.ScopeUser)
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar)
	rdb.HSet(ctx, k.Values(keys.UserTag("u-1"), "c"), "f", "1000000000.10000000000582077")
	rdb.HSet(ctx, k.Grants("u-1"), "t", "1.5e+06")
	apply(t, s, Op{ID: "c1", UID: "u-1", Metric: "c", Config: counter, Value: 0.2, Field: "f"})
	if got := rdb.HGet(ctx, k.Values(keys.UserTag("u-1"), "c"), "f").Val(); got != "1000000000.3" {
		t.Errorf("counter holds %q, want 1000000000.3", got)
	}
	if d, err := s.Authorize(ctx, AuthorizeOp{ID: "a1", UID: "u-1", Metric: "t", Config: grant, Limit: 10, Amount: 1.5e6}); err != nil || !d.Allowed || d.Grant.Limit != 1.5e6 {
		t.Errorf("authorize up to an override of 1.5e+06: %+v, %v", d, err)
	}
	if d, err := s.Authorize(ctx, AuthorizeOp{ID: "a2", UID: "u-1", Metric: "t", Config: grant, Limit: 10, Amount: 0.000001}); err != nil || d.Allowed {
		t.Errorf("authorize past an override of 1.5e+06: %+v, %v", d, err)
	}
	// A counter an older version took below 0, or past 1e15, refuses
	// further events with a RangeError rather than a Lua error.
	rdb.HSet(ctx, k.Values(keys.UserTag("u-2"), "c"), "f", "-1", "g", "1e+308")
	for _, field := range []string{"f", "g"} {
		res, err := s.Apply(ctx, []Op{{ID: "x" + field, UID: "u-2", Metric: "c", Config: counter, Value: 1, Field: field}})
		if err != nil || !errors.Is(res[0].Err, ErrOutOfRange) {
			t.Errorf("adding to %s: %+v, %v", field, res, err)
		}
	}
}

// A counter's field whose chunk events all add whole numbers takes one
// HINCRBY of their sum, without reading it first; whatever it held, the
// outcome of each event and what the field holds after are those of
// applying the events one at a time (the way a fraction, or a duplicate
// in the chunk, takes).
func testCounterWholeNumbers(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open)
	ctx := t.Context()
	k := s.Keys()
	counter := counterCfg(usage.StyleCounter, usage.ScopeUser)
	const held = "" // no field
	for i, tc := range []struct {
		held   string
		values []float64
		ids    []string
		want   string // what the field holds after
		status string // per event: a applied, d duplicate, r refused (range)
	}{
		{held, []float64{1, 2, 3}, nil, "6", "aaa"},
		{"7", []float64{1, 1, 1}, nil, "10", "aaa"},
		{"12.5", []float64{1, 1}, nil, "14.5", "aa"},
		{"7", []float64{1, 0.5, 1}, nil, "9.5", "aaa"},
		{"-3", []float64{1, 1}, nil, "-3", "rr"},
		{"999999999999998", []float64{1, 1, 1}, nil, "1000000000000000", "aar"},
		{"0", []float64{1e15}, nil, "1000000000000000", "a"},
		{"1", []float64{1e15, 0}, nil, "1", "ra"},
		{"abc", []float64{1}, nil, "abc", "r"},
		{"7", []float64{1, 1, 1}, []string{"x", "y", "x"}, "9", "aad"},
		{"9223372036854775800", []float64{10}, nil, "9223372036854775800", "r"},
	} {
		uid := "u-w" + strconv.Itoa(i)
		key := k.Values(keys.UserTag(uid), "c")
		if tc.held != held {
			rdb.HSet(ctx, key, "f", tc.held)
		}
		ops := make([]Op, len(tc.values))
		for j, v := range tc.values {
			id := uid + "-" + strconv.Itoa(j)
			if tc.ids != nil {
				id = uid + "-" + tc.ids[j]
			}
			ops[j] = Op{ID: id, UID: uid, Metric: "c", Config: counter, Value: v, Field: "f"}
		}
		res, err := s.Apply(ctx, ops)
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		status := ""
		for _, r := range res {
			switch {
			case errors.Is(r.Err, ErrOutOfRange):
				status += "r"
			case r.Err != nil:
				t.Errorf("%d: %v", i, r.Err)
				status += "?"
			case r.Applied:
				status += "a"
			default:
				status += "d"
			}
		}
		if got := rdb.HGet(ctx, key, "f").Val(); got != tc.want || status != tc.status {
			t.Errorf("%d: held %q, adding %v: holds %q, events %s; want %q, %s", i, tc.held, tc.values, got, status, tc.want, tc.status)
		}
	}
	// An id applied by another metric's event earlier in the chunk is a
	// duplicate on the counter too.
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar)
	res, err := s.Apply(ctx, []Op{{ID: "same", UID: "u-ws", Metric: "g", Config: grant, Limit: 10, Value: 1},
		{ID: "same", UID: "u-ws", Metric: "c", Config: counter, Value: 5, Field: "f"},
		{ID: "other", UID: "u-ws", Metric: "c", Config: counter, Value: 2, Field: "f"}})
	if err != nil || !res[0].Applied || res[1].Applied || !res[2].Applied {
		t.Errorf("an id twice in a chunk: %+v, %v", res, err)
	}
	if got := rdb.HGet(ctx, k.Values(keys.UserTag("u-ws"), "c"), "f").Val(); got != "2" {
		t.Errorf("an id twice in a chunk: the counter holds %q, want 2", got)
	}
	// A key of the wrong type fails the events, with nothing changed.
	rdb.Set(ctx, k.Values(keys.UserTag("u-wt"), "c"), "x", 0)
	res, err = s.Apply(ctx, []Op{{ID: "wt", UID: "u-wt", Metric: "c", Config: counter, Value: 1, Field: "f"}})
	if err != nil || res[0].Err == nil || res[0].Applied {
		t.Errorf("wrong type: %+v, %v", res, err)
	}
}

// Without Options.GrantStates a chunk's reply carries the state of a
// grant only while it holds notices to publish (the meter reads nothing
// else of it); the state itself is the same.
func testGrantStatesOnlyWhenAsked(t *testing.T, open backend) {
	rdb, prefix := open(t)
	ctx := t.Context()
	s, err := New(ctx, rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, Cluster: strings.HasSuffix(prefix, clusterSuffix)})
	if err != nil {
		t.Fatal(err)
	}
	grant := grantCfg(usage.PeriodDay, usage.AlignCalendar, 50)
	g := func(id string) Op { return Op{ID: id, UID: "u-1", Metric: "g", Config: grant, Limit: 4, Value: 1} }
	res, err := s.Apply(ctx, []Op{g("a")})
	if err != nil || !res[0].Applied || res[0].Grant != nil || len(res[0].Notices) != 0 {
		t.Fatalf("below the threshold: %+v, %v", res, err)
	}
	res, err = s.Apply(ctx, []Op{g("b")})
	if err != nil || !res[0].Applied || res[0].Grant == nil || res[0].Grant.Used != 2 || len(res[0].Notices) != 1 {
		t.Fatalf("at the threshold: %+v, %v", res, err)
	}
}
