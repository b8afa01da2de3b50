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
