package store

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/testenv"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
)

// keysUnder is every key under prefix with its contents: what a refused
// hit must leave as it was.
func keysUnder(t *testing.T, rdb redis.UniversalClient, prefix string) map[string]string {
	t.Helper()
	ctx := t.Context()
	out := map[string]string{}
	// Every master's keys: a Cluster client's SCAN sees one node's.
	all, err := testenv.Keys(ctx, rdb, prefix+"*")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range all {
		if rdb.Type(ctx, k).Val() != "hash" {
			out[k] = rdb.Type(ctx, k).Val() + " " + rdb.Dump(ctx, k).Val()
			continue
		}
		h := rdb.HGetAll(ctx, k).Val()
		fields := make([]string, 0, len(h))
		for f, v := range h {
			fields = append(fields, f+"="+v)
		}
		sort.Strings(fields)
		out[k] = strings.Join(fields, " ")
	}
	return out
}

// testNumbersAtTheEdges: limits up to 1e15 (a uid's grant) are decided
// exactly, costs and hits of 15 digits are counted as the integers they
// are (Redis would write a Lua number that long as 1e+15), and a hit that
// would take a window past 1e15 is refused changing nothing.
func testNumbersAtTheEdges(t *testing.T, open backend) {
	s, _, rdb := newStore(t, open, windowStart(t, 5*time.Minute))
	ctx := t.Context()
	rdb.HSet(ctx, s.Keys().Grants("u-1"), "ratelimit_api", "1000000000000000", "ratelimit_frac", "2.5")
	l := Limit{Service: "api", Interval: 5 * time.Minute, Mode: ModeFixed, Configured: 10}
	if d := check(t, s, "u-1", l, 1_000_000); !d.Allowed || d.Limit != 1e15 || d.Remaining != 999_999_999_000_000 || d.Used != 1_000_000 {
		t.Errorf("a cost of 1e6 under a limit of 1e15: %+v", d)
	}
	hit := func(id string, v int64) ([]bool, []error) {
		counted, errs, err := s.Hits(ctx, []Hit{{ID: id, UID: "u-1", Service: "api", Interval: 5 * time.Minute, Value: v}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return counted, errs
	}
	if counted, errs := hit("h1", 123_456_789_012_345); !counted[0] || errs[0] != nil {
		t.Errorf("a hit of 15 digits: %v, %v", counted, errs)
	}
	used := int64(1_000_000 + 123_456_789_012_345)
	if d := check(t, s, "u-1", l, 0); d.Used != used || d.Remaining != 1e15-used {
		t.Errorf("after the hit: %+v, want used %d", d, used)
	}
	if counted, errs := hit("h2", 1e15-used); !counted[0] || errs[0] != nil {
		t.Errorf("a hit up to 1e15: %v, %v", counted, errs)
	}
	if d := check(t, s, "u-1", l, 1); d.Allowed || d.Used != 1e15 || d.Remaining != 0 {
		t.Errorf("at 1e15: %+v", d)
	}
	before := keysUnder(t, rdb, s.Keys().Prefix())
	for i, v := range []int64{1, 1e15, 1 << 53} {
		if counted, errs := hit(fmt.Sprint("past", i), v); counted[0] || !errors.Is(errs[0], ErrOutOfRange) {
			t.Errorf("a hit of %d past 1e15: %v, %v", v, counted, errs)
		}
	}
	if diff := cmp.Diff(before, keysUnder(t, rdb, s.Keys().Prefix())); diff != "" {
		t.Errorf("refused hits changed Redis (-before +after):\n%s", diff)
	}
	// A fraction of a grant is rounded down.
	frac := Limit{Service: "frac", Interval: 5 * time.Minute, Mode: ModeSliding, Configured: 10}
	if d := check(t, s, "u-1", frac, 2); !d.Allowed || d.Limit != 2 || d.Remaining != 0 {
		t.Errorf("a grant of 2.5: %+v", d)
	}
}
