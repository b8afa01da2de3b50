package notifier

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/usage"
	"github.com/allot/allot/services/notifier/internal/templates"
)

func decoder(t testing.TB) *Notifier {
	t.Helper()
	tmpl, err := templates.Load("")
	if err != nil {
		t.Fatal(err)
	}
	return &Notifier{cfg: DefaultConfig(), tmpl: tmpl}
}

func TestDecodeNotice(t *testing.T) {
	n := decoder(t)
	good, _ := json.Marshal(Notice{Subject: "notify.confirm.u-1", Body: []byte(`{"id":"c-1","email":"a@example.com"}`), Enqueued: time.Now()})
	if _, uid, req, err := n.decodeConfirm(good); err != nil || uid != "u-1" || req.Email != "a@example.com" {
		t.Fatalf("%s %+v %v", uid, req, err)
	}
	for name, payload := range map[string]string{
		"empty":         ``,
		"not JSON":      `{`,
		"no subject":    `{"body":"e30="}`,
		"unknown field": `{"subject":"notify.confirm.u-1","body":"e30=","extra":1}`,
		"trailing":      `{"subject":"notify.confirm.u-1","body":"e30="} {}`,
		"body not b64":  `{"subject":"notify.confirm.u-1","body":"!!"}`,
	} {
		if _, err := DecodeNotice([]byte(payload)); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	// A usage payload is not a confirmation and the other way round.
	if _, _, _, err := n.decodeConfirm(mustPayload(t, "notify.usage.u-1", `{"id":"c-1","email":"a@example.com"}`)); err == nil {
		t.Error("a usage subject decoded as a confirmation")
	}
	if _, _, err := n.decodeUsage(mustPayload(t, "notify.confirm.u-1", `{}`)); err == nil {
		t.Error("a confirm subject decoded as a usage notice")
	}
}

// TestDecodeUsageNumbers: every notice the meter can publish decodes,
// whatever its numbers within the range (used and limit are exact sums,
// which may have more significant digits than a number the meter takes);
// anything past the range is refused naming the field, the value and the
// range, so the notice is archived with that reason.
func TestDecodeUsageNumbers(t *testing.T) {
	n := decoder(t)
	for _, tc := range []struct {
		used, limit, err string
	}{
		{"0", "0", ""},
		{"1000000000000000", "1000000000000000", ""},
		{"1e15", "1e15", ""},
		{"500000000000000.1", "1000000000000000", ""},
		{"999999999999999.999999", "1000000000000000", ""},
		{"0.000001", "2.5", ""},
		{"1000000000000001", "1e15", "used: must be a number from 0 to 1e15 (got 1000000000000001)"},
		{"100000000000000000001", "1e15", "used: must be a number from 0 to 1e15 (got 100000000000000000000)"},
		{"1e400", "1e15", "used: must be a number from 0 to 1e15 (got 1e400)"},
		{"1", "-1", "limit: must be a number from 0 to 1e15 (got -1)"},
		{"1", "1e308", "limit: must be a number from 0 to 1e15 (got 1e+308)"},
	} {
		body := `{"id":"u-1.photo_daily_total.0.80","uid":"u-1","metric":"photo_daily_total","threshold":80,"used":` + tc.used +
			`,"limit":` + tc.limit + `,"period":"day","period_start":"2026-01-01T00:00:00Z"}`
		_, _, err := n.decodeUsage(mustPayload(t, "notify.usage.u-1", body))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("used %s, limit %s: %v", tc.used, tc.limit, err)
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("used %s, limit %s: %v, want %q", tc.used, tc.limit, err, tc.err)
		}
	}
}

func mustPayload(t testing.TB, subject, body string) []byte {
	b, err := json.Marshal(Notice{Subject: subject, Body: []byte(body)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzDecodeTaskPayload: any payload decodes or fails with an error;
// whatever decodes is valid by the contract's rules.
func FuzzDecodeTaskPayload(f *testing.F) {
	n := decoder(f)
	f.Add(mustPayload(f, "notify.confirm.u-1", `{"id":"c-1","email":"a@example.com","name":"Ada"}`))
	f.Add(mustPayload(f, "notify.usage.u-1", `{"id":"n","uid":"u-1","metric":"photo_daily_total","threshold":80,"used":1,"limit":2,"period":"day","period_start":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"subject":"x","body":null}`))
	for _, used := range []string{"1e15", "1000000000000001", "500000000000000.1", "1e400", "-0", "5e-324"} {
		f.Add(mustPayload(f, "notify.usage.u-1", `{"id":"n","uid":"u-1","metric":"photo_daily_total","threshold":80,"used":`+used+`,"limit":1e15,"period":"day","period_start":"2026-01-01T00:00:00Z"}`))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		if _, uid, req, err := n.decodeConfirm(payload); err == nil {
			if !events.IsToken(uid) || req.Validate() != nil || !n.tmpl.Has(req.TemplateOrDefault()) {
				t.Fatalf("accepted %q: uid %q, %+v", payload, uid, req)
			}
		}
		if _, un, err := n.decodeUsage(payload); err == nil {
			if un.Validate() != nil || n.cfg.Usage.Metrics[un.Metric].Style != usage.StyleGrant {
				t.Fatalf("accepted %q: %+v", payload, un)
			}
		}
	})
}
