package meter

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/usage"
	"github.com/nats-io/nats.go"
)

// numberCases are the numbers a user can type, as the JSON text they
// send, with what each edge of the meter answers: "=x" keeps the exact
// decimal x; anything else is the refusal, word for word (the dead
// letter's Allot-Error, or the 400's message). counter and gauge are an
// event's value, amount an authorize request against a grant of 1e15,
// grant a grants request's limit.
var numberCases = []struct {
	name, literal                 string
	counter, gauge, amount, grant string
}{
	{"-0", "-0", "=0", "=0", "=0", "=0"},
	{"0", "0", "=0", "=0", "=0", "=0"},
	{"1e-300", "1e-300",
		"data.value: must be a number from -1e15 to 1e15 with at most 6 decimal places (got 1e-300)",
		"data.value: must be a number from -1e15 to 1e15 with at most 6 decimal places (got 1e-300)",
		"amount: must be a number from 0 to 1e15 with at most 6 decimal places (got 1e-300)",
		"set.tiny_daily_total: must be a number from 0 to 1e15 with at most 6 decimal places (got 1e-300)"},
	{"5e-324", "5e-324",
		"data.value: must be a number from -1e15 to 1e15 with at most 6 decimal places (got 5e-324)",
		"data.value: must be a number from -1e15 to 1e15 with at most 6 decimal places (got 5e-324)",
		"amount: must be a number from 0 to 1e15 with at most 6 decimal places (got 5e-324)",
		"set.tiny_daily_total: must be a number from 0 to 1e15 with at most 6 decimal places (got 5e-324)"},
	// Below float64's range a number is 0, as JSON decoders read it.
	{"1e-400", "1e-400", "=0", "=0", "=0", "=0"},
	{"0.1", "0.1", "=0.1", "=0.1", "=0.1", "=0.1"},
	{"7 decimals", "0.0000001",
		"data.value: must be a number from -1e15 to 1e15 with at most 6 decimal places (got 1e-7)",
		"data.value: must be a number from -1e15 to 1e15 with at most 6 decimal places (got 1e-7)",
		"amount: must be a number from 0 to 1e15 with at most 6 decimal places (got 1e-7)",
		"set.tiny_daily_total: must be a number from 0 to 1e15 with at most 6 decimal places (got 1e-7)"},
	{"negative", "-2.5",
		"data.value: must be a number from 0 to 1e15 for a counter (got -2.5)",
		"=-2.5",
		"amount: must be a number from 0 to 1e15 (got -2.5)",
		"set.tiny_daily_total: must be a number from 0 to 1e15 (got -2.5)"},
	{"15 digits", "123456789.123456", "=123456789.123456", "=123456789.123456", "=123456789.123456", "=123456789.123456"},
	{"16 digits", "1234567890.123456",
		"data.value: must be a number from -1e15 to 1e15 of at most 15 significant digits (got 1234567890.123456)",
		"data.value: must be a number from -1e15 to 1e15 of at most 15 significant digits (got 1234567890.123456)",
		"amount: must be a number from 0 to 1e15 of at most 15 significant digits (got 1234567890.123456)",
		"set.tiny_daily_total: must be a number from 0 to 1e15 of at most 15 significant digits (got 1234567890.123456)"},
	{"1e15", "1e15", "=1000000000000000", "=1000000000000000", "=1000000000000000", "=1000000000000000"},
	{"-1e15", "-1e15",
		"data.value: must be a number from 0 to 1e15 for a counter (got -1000000000000000)",
		"=-1000000000000000",
		"amount: must be a number from 0 to 1e15 (got -1000000000000000)",
		"set.tiny_daily_total: must be a number from 0 to 1e15 (got -1000000000000000)"},
	{"1e15+1", "1000000000000001",
		"data.value: must be a number from -1e15 to 1e15 (got 1000000000000001)",
		"data.value: must be a number from -1e15 to 1e15 (got 1000000000000001)",
		"amount: must be a number from 0 to 1e15 (got 1000000000000001)",
		"set.tiny_daily_total: must be a number from 0 to 1e15 (got 1000000000000001)"},
	{"2^53", "9007199254740992",
		"data.value: must be a number from -1e15 to 1e15 (got 9007199254740992)",
		"data.value: must be a number from -1e15 to 1e15 (got 9007199254740992)",
		"amount: must be a number from 0 to 1e15 (got 9007199254740992)",
		"set.tiny_daily_total: must be a number from 0 to 1e15 (got 9007199254740992)"},
	// Judged as the float64 it parses to.
	{"2^53+1", "9007199254740993",
		"data.value: must be a number from -1e15 to 1e15 (got 9007199254740992)",
		"data.value: must be a number from -1e15 to 1e15 (got 9007199254740992)",
		"amount: must be a number from 0 to 1e15 (got 9007199254740992)",
		"set.tiny_daily_total: must be a number from 0 to 1e15 (got 9007199254740992)"},
	{"1e20+1", "100000000000000000001",
		"data.value: must be a number from -1e15 to 1e15 (got 100000000000000000000)",
		"data.value: must be a number from -1e15 to 1e15 (got 100000000000000000000)",
		"amount: must be a number from 0 to 1e15 (got 100000000000000000000)",
		"set.tiny_daily_total: must be a number from 0 to 1e15 (got 100000000000000000000)"},
	{"1e308", "1e308",
		"data.value: must be a number from -1e15 to 1e15 (got 1e+308)",
		"data.value: must be a number from -1e15 to 1e15 (got 1e+308)",
		"amount: must be a number from 0 to 1e15 (got 1e+308)",
		"set.tiny_daily_total: must be a number from 0 to 1e15 (got 1e+308)"},
	// No float64 holds it; encoding/json names the map, not the key.
	{"1e400", "1e400",
		"data.value: must be a number from -1e15 to 1e15 (got 1e400)",
		"data.value: must be a number from -1e15 to 1e15 (got 1e400)",
		"amount: must be a number from 0 to 1e15 (got 1e400)",
		"set: must be a number from 0 to 1e15 (got 1e400)"},
	{"NaN", "NaN",
		"event: is not valid JSON: invalid character 'N' looking for beginning of value at byte 176",
		"event: is not valid JSON: invalid character 'N' looking for beginning of value at byte 156",
		"request: is not valid JSON: invalid character 'N' looking for beginning of value at byte 48",
		"request: is not valid JSON: invalid character 'N' looking for beginning of value at byte 28"},
}

// numbersConfig adds a gauge of user scope, so each case has its own.
func numbersConfig() Config {
	cfg := testConfig()
	cfg.Usage.Metrics["level"] = usage.MetricConfig{Style: usage.StyleGauge, Scope: usage.ScopeUser}
	return cfg
}

func TestNumbersThroughTheEdges(t *testing.T) {
	testNumbersThroughTheEdges(t, startEnv(t, numbersConfig()))
}

// testNumbersThroughTheEdges sends every number case through the meter's
// public edges (a usage event on the stream, meter.authorize, meter.grants)
// and checks each answer and what Redis holds: the exact decimal, or,
// for a refusal, not one key changed.
func testNumbersThroughTheEdges(t *testing.T, e *env) {
	k := keys.New(e.cfg.Redis.KeyPrefix)
	for i, tc := range numberCases {
		t.Run(tc.name, func(t *testing.T) {
			uid := fmt.Sprintf("n-%d", i)
			e.numberEvent(t, uid, "api_calls_total", tc.literal, tc.counter, func() string {
				return e.rdb.HGet(t.Context(), k.Values(keys.UserTag(uid), "api_calls_total"), "").Val()
			})
			e.numberEvent(t, uid, "level", tc.literal, tc.gauge, func() string {
				return e.rdb.HGet(t.Context(), k.Values(keys.UserTag(uid), "level"), "").Val()
			})

			if reply := e.request(t, "meter.grants."+uid, `{"set":{"tiny_daily_total":1e15}}`); reply.Header.Get("Nats-Service-Error-Code") != "" {
				t.Fatalf("grant of 1e15: %s", reply.Data)
			}
			e.numberRequest(t, "meter.authorize."+uid, `{"id":"a","metric":"tiny_daily_total","amount":`+tc.literal+`}`, tc.amount, func() string {
				return e.rdb.HGet(t.Context(), k.Grant(uid, "tiny_daily_total"), "u").Val()
			})
			other := uid + "-g"
			e.numberRequest(t, "meter.grants."+other, `{"set":{"tiny_daily_total":`+tc.literal+`}}`, tc.grant, func() string {
				return e.rdb.HGet(t.Context(), k.Grants(other), "tiny_daily_total").Val()
			})
		})
	}
	t.Run("SumsPast1e15", func(t *testing.T) { testSumsPast1e15(t, e) })
	t.Run("NoticesReachTheNotifier", func(t *testing.T) { testNoticesAtTheEdges(t, e) })
}

// eventBody is a usage event with value as its literal JSON text.
func eventBody(uid, metric, id, value string) string {
	return `{"specversion":"1.0","id":"` + id + `","source":"app","type":"allot.usage.v1","subject":"` + uid +
		`","time":"` + time.Now().UTC().Format("2006-01-02T15:04:05Z") + `","data":{"metric":"` + metric + `","value":` + value + `}}`
}

// numberEvent publishes one event with the literal as value and checks
// the outcome: held() is the kept decimal, or the event is dead-lettered
// with want and Redis is as it was.
func (e *env) numberEvent(t *testing.T, uid, metric, literal, want string, held func() string) {
	t.Helper()
	before := e.snapshot(t)
	dead := deadCount(t, e)
	body := eventBody(uid, metric, "e-"+metric, literal)
	e.publishRaw("usage."+uid, []byte(body), "")
	e.waitIdle()
	if kept, ok := strings.CutPrefix(want, "="); ok {
		if got := held(); got != kept {
			t.Errorf("%s %s: holds %q, want %q (%d dead letters before, %d now)", metric, literal, got, kept, dead, deadCount(t, e))
		}
		return
	}
	if got := e.lastDeadReason(t); got != want {
		t.Errorf("%s %s: dead letter says\n  %q\nwant\n  %q", metric, literal, got, want)
	}
	e.unchanged(t, before, metric+" "+literal)
}

// numberRequest sends body to subject and checks the outcome: held() is
// the kept decimal, or a 400 with want as its message and the field it
// names, with Redis as it was.
func (e *env) numberRequest(t *testing.T, subject, body, want string, held func() string) {
	t.Helper()
	before := e.snapshot(t)
	reply := e.request(t, subject, body)
	serr := events.DecodeServiceError(reply)
	if kept, ok := strings.CutPrefix(want, "="); ok {
		if serr != nil {
			t.Errorf("%s %s: %v", subject, body, serr)
		} else if got := held(); got != kept {
			t.Errorf("%s %s: holds %q, want %q", subject, body, got, kept)
		}
		return
	}
	field, _, _ := strings.Cut(want, ":")
	if serr == nil || serr.Status != 400 || serr.Message != want || serr.Field != field {
		t.Errorf("%s %s: %+v, want 400 %q on %s", subject, body, serr, want, field)
	}
	e.unchanged(t, before, subject+" "+body)
}

func (e *env) request(t *testing.T, subject, body string) *nats.Msg {
	t.Helper()
	msg, err := e.nc.Request(subject, []byte(body), 5*time.Second)
	if err != nil {
		t.Fatalf("%s %s: %v", subject, body, err)
	}
	return msg
}

func (e *env) lastDeadReason(t *testing.T) string {
	t.Helper()
	st, err := e.js.Stream(t.Context(), e.cfg.Streams.Dead)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetMsg(t.Context(), info.State.LastSeq)
	if err != nil {
		t.Fatal(err)
	}
	return msg.Header.Get(events.ErrorHeader)
}

// snapshot is every key under the meter's prefix, with its contents and
// whether it expires.
func (e *env) snapshot(t *testing.T) map[string]string {
	t.Helper()
	ctx := t.Context()
	out := map[string]string{}
	iter := e.rdb.Scan(ctx, 0, e.cfg.Redis.KeyPrefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		if bookkeeping(key, e.cfg.Redis.KeyPrefix) {
			continue
		}
		var v string
		switch typ := e.rdb.Type(ctx, key).Val(); typ {
		case "hash":
			h := e.rdb.HGetAll(ctx, key).Val()
			fields := make([]string, 0, len(h))
			for f, x := range h {
				fields = append(fields, f+"="+x)
			}
			sort.Strings(fields)
			v = typ + " " + strings.Join(fields, " ")
		default:
			v = typ + " " + e.rdb.Dump(ctx, key).Val()
		}
		out[key] = fmt.Sprintf("%s expires=%v", v, e.rdb.PTTL(ctx, key).Val() > 0)
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *env) unchanged(t *testing.T, before map[string]string, what string) {
	t.Helper()
	after := e.snapshot(t)
	for k, v := range after {
		if before[k] != v {
			t.Errorf("%s changed %s: %q -> %q", what, k, before[k], v)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			t.Errorf("%s removed %s", what, k)
		}
	}
}

// testSumsPast1e15: a counter and a grant's used reach 1e15 exactly; an
// event past it is dead-lettered saying why, counting nothing, and
// credit still reads 1e15.
func testSumsPast1e15(t *testing.T, e *env) {
	uid := "sum-1"
	k := keys.New(e.cfg.Redis.KeyPrefix)
	if reply := e.request(t, "meter.grants."+uid, `{"set":{"tiny_daily_total":1e15}}`); reply.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("grant of 1e15: %s", reply.Data)
	}
	for i, v := range []string{"999999999999999", "0.5", "0.5"} {
		e.publishRaw("usage."+uid, []byte(eventBody(uid, "api_calls_total", fmt.Sprint("c", i), v)), "")
		e.publishRaw("usage."+uid, []byte(eventBody(uid, "tiny_daily_total", fmt.Sprint("t", i), v)), "")
	}
	e.waitIdle()
	counter := k.Values(keys.UserTag(uid), "api_calls_total")
	if got := e.rdb.HGet(t.Context(), counter, "").Val(); got != "1000000000000000" {
		t.Fatalf("counter holds %q, want 1000000000000000", got)
	}
	for _, tc := range []struct{ metric, value, reason string }{
		{"api_calls_total", "0.000001", "data.value: adding 0.000001 to counter api_calls_total{}, which holds 1000000000000000, would pass 1e15, the largest number allot keeps; nothing was counted"},
		{"tiny_daily_total", "1", "data.value: adding 1 to the used of grant tiny_daily_total, which holds 1000000000000000, would pass 1e15, the largest number allot keeps; nothing was counted"},
	} {
		before := e.snapshot(t)
		e.publishRaw("usage."+uid, []byte(eventBody(uid, tc.metric, "past-"+tc.metric, tc.value)), "")
		e.waitIdle()
		if got := e.lastDeadReason(t); got != tc.reason {
			t.Errorf("dead letter says\n  %q\nwant\n  %q", got, tc.reason)
		}
		e.unchanged(t, before, tc.metric+" past 1e15")
	}
	c, err := e.client.Credit(t.Context(), uid, "tiny_daily_total")
	if err != nil || c.Used != 1e15 || c.Remaining != 0 || c.Overage != 0 {
		t.Errorf("credit at 1e15 = %+v, %v", c, err)
	}
	before := e.snapshot(t)
	r, err := e.client.Authorize(t.Context(), uid, events.AuthorizeRequest{ID: "past", Metric: "tiny_daily_total", Amount: 0.000001})
	if r.Allowed || err == nil || !strings.Contains(err.Error(), "tiny_daily_total: 0.000001 more would pass the limit of 1000000000000000 (used 1000000000000000)") {
		t.Errorf("authorize past 1e15 = %+v, %v", r, err)
	}
	e.unchanged(t, before, "authorize past 1e15")
}

// testNoticesAtTheEdges: notices the meter publishes at the edges of the
// range (used 1e15; a used of 16 significant digits, as exact sums can
// be) pass the notifier's decoding of a notify.usage body,
// events.DecodeRequest into an events.UsageNotice.
func testNoticesAtTheEdges(t *testing.T, e *env) {
	for _, tc := range []struct {
		uid    string
		values []string
		used   float64
	}{
		{"nt-1", []string{"1e15"}, 1e15},
		{"nt-2", []string{"0.1", "500000000000000"}, 500000000000000.1},
	} {
		if reply := e.request(t, "meter.grants."+tc.uid, `{"set":{"tiny_daily_total":1e15}}`); reply.Header.Get("Nats-Service-Error-Code") != "" {
			t.Fatalf("grant of 1e15: %s", reply.Data)
		}
		for i, v := range tc.values {
			e.publishRaw("usage."+tc.uid, []byte(eventBody(tc.uid, "tiny_daily_total", fmt.Sprint("nt", i), v)), "")
		}
		e.waitIdle()
		st, err := e.js.Stream(t.Context(), e.cfg.Streams.Notify)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := st.GetLastMsgForSubject(t.Context(), e.cfg.Subjects.NotifyUsage(tc.uid))
		if err != nil {
			t.Fatalf("%s: no notice: %v", tc.uid, err)
		}
		var n events.UsageNotice
		if err := events.DecodeRequest(msg.Data, &n); err != nil {
			t.Errorf("%s: the notifier refuses the notice %s: %v", tc.uid, msg.Data, err)
		}
		if n.Used != tc.used || n.Limit != 1e15 {
			t.Errorf("%s: notice %+v, want used %v", tc.uid, n, strconv.FormatFloat(tc.used, 'f', -1, 64))
		}
	}
}
