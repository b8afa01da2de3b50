package meter

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/micro"
)

// The case issue 23 filed: credit and authorize answering 400, 404, 429
// and, with Redis down, 503, while $SRV.STATS said no errors and
// microseconds. Now every reply is counted, in the stats and in
// allot_request_duration_seconds by outcome.
func TestStatsCountBatchedErrors(t *testing.T) {
	e := startEnv(t, testConfig())
	testStatsCountBatchedErrors(t, e, e.mr.Close)
}

// testStatsCountBatchedErrors sends e's endpoints good and bad requests,
// then, when redisDown is set, calls it and sends requests that get 503s,
// and checks the stats and the histogram counted each.
func testStatsCountBatchedErrors(t *testing.T, e *env, redisDown func()) {
	ctx := t.Context()
	type sent struct{ requests, errors int }
	want := map[string]sent{}
	ask := func(endpoint, subject, body string) {
		t.Helper()
		msg, err := e.nc.Request(subject, []byte(body), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		s := want[endpoint]
		s.requests++
		if events.DecodeServiceError(msg) != nil {
			s.errors++
		}
		want[endpoint] = s
	}
	for i := range 3 {
		ask("credit", e.cfg.Subjects.Credit("u-1"), `{"metric":"photo_daily_total"}`)
		ask("credit", e.cfg.Subjects.Credit("u-1"), `{"metric":"bogus"}`)                                                         // 404
		ask("credit", e.cfg.Subjects.Credit("u-1"), `{not json`)                                                                  // 400
		ask("grants", e.cfg.Subjects.Grants("u-1"), `{"set":{"bogus":-1}}`)                                                       // 400
		ask("authorize", e.cfg.Subjects.Authorize("u-1"), fmt.Sprintf(`{"id":"a-%d","metric":"tiny_daily_total","amount":3}`, i)) // 429 after the first
	}
	if _, err := e.client.Credit(ctx, "u-1", "photo_daily_total"); err != nil {
		t.Fatal(err)
	}
	want["credit"] = sent{want["credit"].requests + 1, want["credit"].errors}
	// A batch message of three credits (one fine, one 404, one bad uid)
	// and one refused whole: each credit counts as credit's, the messages
	// as credit_many's.
	ask("credit_many", e.cfg.Subjects.CreditMany(events.ScopeAll),
		`{"requests":[{"uid":"u-1","body":{"metric":"photo_daily_total"}},{"uid":"u-2","body":{"metric":"bogus"}},{"uid":"u 3"}]}`)
	ask("credit_many", e.cfg.Subjects.CreditMany(events.ScopeAll), `{"requests":[]}`) // 400
	want["credit"] = sent{want["credit"].requests + 3, want["credit"].errors + 2}
	want["authorize_many"] = sent{}
	wantOutcomes := map[string]map[string]int{
		"credit":      {"ok": 5, "not_found": 4, "bad_request": 4},
		"credit_many": {"ok": 1, "bad_request": 1},
		"authorize":   {"ok": 1, "refused": 2},
		"grants":      {"bad_request": 3},
	}
	if redisDown != nil {
		redisDown()
		for range 2 {
			ask("credit", e.cfg.Subjects.Credit("u-1"), `{"metric":"photo_daily_total"}`) // 503
			ask("authorize", e.cfg.Subjects.Authorize("u-1"), `{"id":"a-down","metric":"tiny_daily_total","amount":1}`)
		}
		wantOutcomes["credit"]["unavailable"], wantOutcomes["authorize"]["unavailable"] = 2, 2
	}
	msg, err := e.nc.Request("$SRV.STATS.meter", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st micro.Stats
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		t.Fatal(err)
	}
	got := map[string]sent{}
	for _, ep := range st.Endpoints {
		got[ep.Name] = sent{ep.NumRequests, ep.NumErrors}
		if ep.NumErrors > 0 && ep.LastError == "" {
			t.Errorf("%s: no last error", ep.Name)
		}
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(sent{})); diff != "" {
		t.Errorf("$SRV.STATS.meter (-sent +counted):\n%s", diff)
	}
	outcomes := map[string]map[string]int{}
	families, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "allot_request_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if n := int(m.GetHistogram().GetSampleCount()); n > 0 {
				if outcomes[labels["endpoint"]] == nil {
					outcomes[labels["endpoint"]] = map[string]int{}
				}
				outcomes[labels["endpoint"]][labels["outcome"]] = n
			}
		}
	}
	if diff := cmp.Diff(wantOutcomes, outcomes); diff != "" {
		t.Errorf("allot_request_duration_seconds by outcome (-want +got):\n%s", diff)
	}
}
