package usage_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/allot/allot/pkg/usage"
)

// load decodes body over the defaults strictly, as a service reads the
// metrics and grants sections of allot.yaml, and validates the result.
func load(t *testing.T, body string) (usage.Catalog, error) {
	t.Helper()
	c := usage.Default()
	dec := yaml.NewDecoder(strings.NewReader(body))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, err
	}
	return c, c.Validate()
}

func TestDefaults(t *testing.T) {
	c := usage.Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if g, ok := c.DefaultGrant("photo_daily_total"); !ok || g != 200 {
		t.Errorf("photo_daily_total grant = %v, %v", g, ok)
	}
	m, ok := c.Metric("sms_monthly_total")
	if !ok || m.Style != usage.StyleGrant || m.Period != usage.PeriodMonth || m.Align != usage.AlignRolling || m.Scope != usage.ScopeUser {
		t.Errorf("sms_monthly_total = %+v", m)
	}
	if len(c.Grants) != 17 {
		t.Errorf("%d default grants, want apicrud's 17", len(c.Grants))
	}
	if _, ok := c.Metric("nope"); ok {
		t.Error("an undeclared metric was found")
	}
	want := []string{"api_calls_total", "email_daily_total", "email_monthly_total", "message_daily_total", "photo_daily_total", "sms_daily_total", "sms_monthly_total", "video_daily_total"}
	if diff := cmp.Diff(want, c.MetricNames()); diff != "" {
		t.Errorf("MetricNames (-want +got):\n%s", diff)
	}
	api, _ := c.Metric("api_calls_total")
	if !api.AllowsLabel("resource") || api.AllowsLabel("region") {
		t.Errorf("api_calls_total labels = %v", api.Labels)
	}
}

func TestCatalog(t *testing.T) {
	c, err := load(t, "metrics:\n  uploads: {style: grant, period: week, align: calendar, notify: [50, 90]}\n  queue_depth: {style: gauge, scope: instance}\ngrants:\n  uploads: 7\n")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Metric("photo_daily_total"); !ok {
		t.Error("a file's metrics must add to the defaults")
	}
	if m, _ := c.Metric("uploads"); m.Align != usage.AlignCalendar || c.Grants["uploads"] != 7 {
		t.Errorf("uploads = %+v, grant %v", m, c.Grants["uploads"])
	}
	for body, want := range map[string]string{
		"metrics:\n  x: {style: meter}\n":                                                           "metrics.x.style",
		"metrics:\n  x: {period: day}\n":                                                            "metrics.x.style",
		"metrics:\n  x: {style: grant}\ngrants: {x: 1}\n":                                           "metrics.x.period",
		"metrics:\n  x: {style: grant, period: fortnight}\ngrants: {x: 1}\n":                        "metrics.x.period",
		"metrics:\n  x: {style: grant, period: day}\n":                                              "add it under grants",
		"metrics:\n  x: {style: grant, period: day, align: lunar}\ngrants: {x: 1}\n":                "metrics.x.align",
		"metrics:\n  x: {style: grant, period: indefinite, align: calendar}\ngrants: {x: 1}\n":      "no calendar",
		"metrics:\n  x: {style: grant, period: day, scope: global}\ngrants: {x: 1}\n":               "metrics.x.scope",
		"metrics:\n  x: {style: grant, period: day, notify: [90, 80]}\ngrants: {x: 1}\n":            "increasing",
		"metrics:\n  x: {style: grant, period: day, notify: [0]}\ngrants: {x: 1}\n":                 "metrics.x.notify",
		"metrics:\n  x: {style: grant, period: day, notify: [1,2,3,4,5,6,7,8,9]}\ngrants: {x: 1}\n": "at most 8 thresholds",
		"metrics:\n  x: {style: counter, period: day}\n":                                            "grants only",
		"metrics:\n  x: {style: counter, scope: planet}\n":                                          "metrics.x.scope",
		"metrics:\n  x: {style: counter, labels: [a.b]}\n":                                          "metrics.x.labels",
		"metrics:\n  'a b': {style: counter}\n":                                                     "metrics.a b",
		"metrics:\n  x: {style: counter, colour: red}\n":                                            "colour",
		"grants:\n  x: -1\n":        "grants.x: must be a number from 0 to 1e15 (got -1)",
		"grants:\n  x: 1e16\n":      "grants.x: must be a number from 0 to 1e15 (got 10000000000000000)",
		"grants:\n  x: 0.0000001\n": "grants.x: must be a number from 0 to 1e15 with at most 6 decimal places (got 1e-7)",
		"grants:\n  x: .nan\n":      "grants.x: must be a number from 0 to 1e15 (got NaN)",
		"grants:\n  'a b': 1\n":     "grants.a b: grant names must be",
	} {
		if _, err := load(t, body); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one mentioning %s", body, err, want)
		}
	}
}

// Every broken rule is reported, each once, in the order of the names.
func TestValidateJoinsEveryError(t *testing.T) {
	c := usage.Catalog{
		Metrics: map[string]usage.MetricConfig{"b": {Style: "meter"}, "a": {Style: usage.StyleGrant, Period: usage.PeriodDay}},
		Grants:  map[string]float64{"z": -1},
	}
	got := strings.Split(c.Validate().Error(), "\n")
	want := []string{
		"usage: metrics.a: is a grant without a default limit: add it under grants",
		`usage: metrics.b.style: must be grant, counter or gauge, got "meter"`,
		"usage: grants.z: must be a number from 0 to 1e15 (got -1)",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Validate lines (-want +got):\n%s", diff)
	}
}
