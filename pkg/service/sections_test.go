package service

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The subjects and streams sections come from pkg/events and load like
// every other section.
func TestSubjectsAndStreamsSections(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg, err := Load(write("ok.yaml", "subjects:\n  usage: acme.usage\nstreams:\n  duplicates: 5m\n  replicas: 3\n"), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Subjects.Usage != "acme.usage" || cfg.Subjects.Meter != "meter" {
		t.Errorf("subjects = %+v", cfg.Subjects)
	}
	if cfg.Streams.Duplicates != 5*time.Minute || cfg.Streams.Replicas != 3 || cfg.Streams.Usage != "USAGE" {
		t.Errorf("streams = %+v", cfg.Streams)
	}
	for body, want := range map[string]string{
		"streams:\n  replicas: 9\n":       "streams.replicas",
		"subjects:\n  meter: 'a b'\n":     "subjects.meter",
		"subjects:\n  dead: usage\n":      "subjects.dead",
		"streams:\n  duplicates: never\n": "streams.duplicates",
		"streams:\n  replica: 3\n":        "streams.replica",
	} {
		cfg, err := Load(write("bad.yaml", body), func(string) string { return "" })
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one naming %s", body, err, want)
		}
	}
}

func TestMeteringSection(t *testing.T) {
	cfg := Default()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if g, ok := cfg.DefaultGrant("photo_daily_total"); !ok || g != 200 {
		t.Errorf("photo_daily_total grant = %v, %v", g, ok)
	}
	m, ok := cfg.Metric("sms_monthly_total")
	if !ok || m.Style != StyleGrant || m.Period != PeriodMonth || m.Align != AlignRolling || m.Scope != ScopeUser {
		t.Errorf("sms_monthly_total = %+v", m)
	}
	if len(cfg.Grants) != 17 {
		t.Errorf("%d default grants, want apicrud's 17", len(cfg.Grants))
	}

	dir := t.TempDir()
	load := func(body string) (Config, error) {
		p := filepath.Join(dir, "m.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(p, func(string) string { return "" })
		if err != nil {
			return cfg, err
		}
		return cfg, cfg.Validate()
	}
	cfg, err := load("metrics:\n  uploads: {style: grant, period: week, align: calendar, notify: [50, 90]}\n  queue_depth: {style: gauge, scope: instance}\ngrants:\n  uploads: 7\n")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cfg.Metric("photo_daily_total"); !ok {
		t.Error("a file's metrics must add to the defaults")
	}
	if m, _ := cfg.Metric("uploads"); m.Align != AlignCalendar || cfg.Grants["uploads"] != 7 {
		t.Errorf("uploads = %+v, grant %v", m, cfg.Grants["uploads"])
	}
	for body, want := range map[string]string{
		"metrics:\n  x: {style: meter}\n":                                                      "metrics.x.style",
		"metrics:\n  x: {period: day}\n":                                                       "metrics.x.style",
		"metrics:\n  x: {style: grant}\ngrants: {x: 1}\n":                                      "metrics.x.period",
		"metrics:\n  x: {style: grant, period: fortnight}\ngrants: {x: 1}\n":                   "metrics.x.period",
		"metrics:\n  x: {style: grant, period: day}\n":                                         "add it under grants",
		"metrics:\n  x: {style: grant, period: day, align: lunar}\ngrants: {x: 1}\n":           "metrics.x.align",
		"metrics:\n  x: {style: grant, period: indefinite, align: calendar}\ngrants: {x: 1}\n": "no calendar",
		"metrics:\n  x: {style: grant, period: day, scope: global}\ngrants: {x: 1}\n":          "metrics.x.scope",
		"metrics:\n  x: {style: grant, period: day, notify: [90, 80]}\ngrants: {x: 1}\n":       "increasing",
		"metrics:\n  x: {style: grant, period: day, notify: [0]}\ngrants: {x: 1}\n":            "metrics.x.notify",
		"metrics:\n  x: {style: counter, period: day}\n":                                       "grants only",
		"metrics:\n  x: {style: counter, scope: planet}\n":                                     "metrics.x.scope",
		"metrics:\n  x: {style: counter, labels: [a.b]}\n":                                     "metrics.x.labels",
		"metrics:\n  'a b': {style: counter}\n":                                                "metrics.a b",
		"metrics:\n  x: {style: counter, colour: red}\n":                                       "colour",
		"grants:\n  x: -1\n":              "grants.x: must be a number from 0 to 1e15 (got -1)",
		"grants:\n  x: 1e16\n":            "grants.x: must be a number from 0 to 1e15 (got 10000000000000000)",
		"grants:\n  x: 0.0000001\n":       "grants.x: must be a number from 0 to 1e15 with at most 6 decimal places (got 1e-7)",
		"grants:\n  x: .nan\n":            "grants.x: must be a number from 0 to 1e15 (got NaN)",
		"grants:\n  x: lots\n":            "grants.x",
		"meter:\n  batch: 0\n":            "meter.batch",
		"meter:\n  dedup_ttl: 1m\n":       "meter.dedup_ttl",
		"meter:\n  handlers: 0\n":         "meter.handlers",
		"meter:\n  pipelines: 65\n":       "meter.pipelines",
		"meter:\n  consumer: 'a.b'\n":     "meter.consumer",
		"meter:\n  max_ack_pending: 10\n": "meter.max_ack_pending",
	} {
		if _, err := load(body); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one mentioning %s", body, err, want)
		}
	}
}
