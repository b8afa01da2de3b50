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

// The sections the services own stand in the file unread (a broken rule
// inside one is its owner's to refuse), and print as a note; a key that
// is neither the runtime's nor a service's is refused as the typo it is.
func TestServiceSectionsStand(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		t.Helper()
		p := filepath.Join(dir, "s.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	body := "metrics:\n  x: {style: nonsense}\ngrants: {x: -1}\nmeter: {batch: 0}\nratelimit: {mode: leaky}\n" +
		"notifier: {retention: 1s}\nauth: {key_ttl: 0s}\nregistry: {keys: [short], ttl: 20s, heartbeat: 5s}\n"
	cfg, err := Load(write(body), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the runtime looked inside a service's section: %v", err)
	}
	o := cfg.Owned
	for name, s := range map[string]Section{"metrics": o.Metrics, "grants": o.Grants, "meter": o.Meter, "ratelimit": o.RateLimit, "notifier": o.Notifier, "auth": o.Auth} {
		if s.IsZero() {
			t.Errorf("the %s section was not seen", name)
		}
	}
	out := cfg.Redacted()
	for _, leak := range []string{"nonsense", "leaky", "short", "key_ttl"} {
		if strings.Contains(out, leak) {
			t.Errorf("Redacted shows %q of a service's section:\n%s", leak, out)
		}
	}
	if cfg.Registry.TTL != 20*time.Second {
		t.Errorf("registry.ttl = %v, want the file's 20s", cfg.Registry.TTL)
	}
	for body, want := range map[string]string{
		"metr:\n  x: {style: counter}\n": "line 1: metr: unknown field",
		"meters: {batch: 1}\n":           "line 1: meters: unknown field",
	} {
		if _, err := Load(write(body), func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one containing %q", body, err, want)
		}
	}
}
