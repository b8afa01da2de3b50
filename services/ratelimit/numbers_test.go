package ratelimit

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
)

// costCases are costs a user can type, as the JSON text they send, with
// the reply to a check of upload (a limit of 3 a minute): the decision,
// or the 400's message word for word. consumes is what the call spends.
var costCases = []struct {
	name, literal string
	allowed       bool
	consumes      int64
	refusal       string
}{
	{"-0 peeks", "-0", true, 0, ""},
	{"0 peeks", "0", true, 0, ""},
	{"1", "1", true, 1, ""},
	{"2.0 is 2", "2.0", true, 2, ""},
	{"1e6 is denied, not refused", "1e6", false, 0, ""},
	{"past the range", "1000001", false, 0, "cost: must be a whole number from 0 to 1000000 (got 1000001)"},
	{"negative", "-1", false, 0, "cost: must be a whole number from 0 to 1000000 (got -1)"},
	{"fraction", "1.5", false, 0, "cost: must be a whole number from 0 to 1000000 (got 1.5)"},
	{"1e-300", "1e-300", false, 0, "cost: must be a whole number from 0 to 1000000 (got 1e-300)"},
	{"5e-324", "5e-324", false, 0, "cost: must be a whole number from 0 to 1000000 (got 5e-324)"},
	{"2^53+1", "9007199254740993", false, 0, "cost: must be a whole number from 0 to 1000000 (got 9007199254740993)"},
	{"1e308", "1e308", false, 0, "cost: must be a whole number from 0 to 1000000 (got 1e308)"},
	{"1e400", "1e400", false, 0, "cost: must be a whole number from 0 to 1000000 (got 1e400)"},
	{"string", `"1"`, false, 0, "cost: must be a number (got string)"},
	{"NaN", "NaN", false, 0, "request: is not valid JSON: invalid character 'N' looking for beginning of value at byte 28"},
}

func TestCostsThroughTheEdge(t *testing.T) {
	e := startEnv(t, testConfig())
	testCostsThroughTheEdge(t, e)
}

// testCostsThroughTheEdge sends every cost case to ratelimit.check and
// checks the reply and Redis: a refusal or a peek leaves every key as it
// was; a check spends exactly its cost. Then a uid's grant of 1e15, the
// largest, is decided exactly.
func testCostsThroughTheEdge(t *testing.T, e *env) {
	for i, tc := range costCases {
		t.Run(tc.name, func(t *testing.T) {
			uid := fmt.Sprintf("c-%d", i)
			before := e.keys(t)
			msg, err := e.nc.Request(e.cfg.Subjects.Check(uid), []byte(`{"service":"upload","cost":`+tc.literal+`}`), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			serr := events.DecodeServiceError(msg)
			if tc.refusal != "" {
				field, _, _ := strings.Cut(tc.refusal, ":")
				if serr == nil || serr.Status != 400 || serr.Message != tc.refusal || serr.Field != field {
					t.Errorf("%s: %+v, want 400 %q", tc.literal, serr, tc.refusal)
				}
				e.unchanged(t, before, tc.literal)
				return
			}
			var r events.CheckReply
			if serr != nil || json.Unmarshal(msg.Data, &r) != nil {
				t.Fatalf("%s: %v %s", tc.literal, serr, msg.Data)
			}
			if r.Allowed != tc.allowed || r.Remaining != 3-tc.consumes {
				t.Errorf("%s: %+v, want allowed %v and %d spent", tc.literal, r, tc.allowed, tc.consumes)
			}
			if tc.consumes == 0 {
				e.unchanged(t, before, tc.literal)
			}
		})
	}
	t.Run("GrantOf1e15", func(t *testing.T) {
		e.rdb.HSet(t.Context(), keys.New(e.cfg.Redis.KeyPrefix).Grants("big"), "ratelimit_upload", "1000000000000000")
		for _, want := range []int64{999_999_999_000_000, 999_999_998_000_000} {
			r := e.check("big", "upload", events.Cost(1_000_000))
			if !r.Allowed || r.Limit != 1e15 || r.Remaining != want {
				t.Errorf("a cost of 1e6 under a grant of 1e15: %+v, want remaining %d", r, want)
			}
		}
	})
}

// keys is every key under the rate limiter's prefix with its contents.
func (e *env) keys(t *testing.T) map[string]string {
	t.Helper()
	ctx := t.Context()
	out := map[string]string{}
	iter := e.rdb.Scan(ctx, 0, e.cfg.Redis.KeyPrefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		h := e.rdb.HGetAll(ctx, iter.Val()).Val()
		fields := make([]string, 0, len(h))
		for f, v := range h {
			fields = append(fields, f+"="+v)
		}
		sort.Strings(fields)
		out[iter.Val()] = strings.Join(fields, " ")
	}
	return out
}

func (e *env) unchanged(t *testing.T, before map[string]string, what string) {
	t.Helper()
	after := e.keys(t)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("%s changed Redis:\n before %v\n after  %v", what, before, after)
	}
}
