package meter

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/usage"
	"github.com/google/go-cmp/cmp"
)

// loadFile loads body as allot.yaml the way the meter's binary does: the
// runtime's sections, then the meter's.
func loadFile(t *testing.T, body string, env map[string]string) (Config, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "allot.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	getenv := func(k string) string { return env[k] }
	rt, err := service.Load(p, getenv)
	if err != nil {
		return Config{}, err
	}
	rt.Instance = "meter-0"
	return LoadConfig(rt, p, getenv)
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := LoadConfig(DefaultConfig().Config, "", func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(DefaultSettings(), cfg.Meter); diff != "" {
		t.Errorf("meter (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(usage.Default(), cfg.Usage); diff != "" {
		t.Errorf("usage (-want +got):\n%s", diff)
	}
	if len(cfg.RateLimited) != 0 {
		t.Errorf("rate-limited services %v, want none", cfg.RateLimited)
	}
}

// The metrics, grants and meter sections load and are checked as the
// meter reads them: a file's metrics and grants add to the defaults, and
// each broken rule names its field.
func TestMeteringSection(t *testing.T) {
	cfg, err := loadFile(t, "metrics:\n  uploads: {style: grant, period: week, align: calendar, notify: [50, 90]}\n  queue_depth: {style: gauge, scope: instance}\ngrants:\n  uploads: 7\nmeter:\n  handlers: 8\n  batch: 100\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cfg.Usage.Metric("photo_daily_total"); !ok {
		t.Error("a file's metrics must add to the defaults")
	}
	if m, _ := cfg.Usage.Metric("uploads"); m.Align != usage.AlignCalendar || cfg.Usage.Grants["uploads"] != 7 {
		t.Errorf("uploads = %+v, grant %v", m, cfg.Usage.Grants["uploads"])
	}
	if cfg.Meter.Handlers != 8 || cfg.Meter.Batch != 100 || cfg.Meter.Pipelines != 2 {
		t.Errorf("meter = %+v", cfg.Meter)
	}
	// The rules of the metrics and grants are pkg/usage's (its tests
	// hold each); these show the meter checks them, from the file.
	for body, want := range map[string]string{
		"metrics:\n  x: {style: meter}\n":                "metrics.x.style",
		"metrics:\n  x: {style: grant, period: day}\n":   "add it under grants",
		"metrics:\n  x: {style: counter, colour: red}\n": "line 2: metrics.x.colour: unknown field",
		"grants:\n  x: -1\n":                             "grants.x: must be a number from 0 to 1e15 (got -1)",
		"grants:\n  x: lots\n":                           "line 2: grants.x: cannot unmarshal",
		"meter:\n  batch: 0\n":                           "meter.batch",
		"meter:\n  dedup_ttl: 1m\n":                      "meter.dedup_ttl",
		"meter:\n  handlers: 0\n":                        "meter.handlers",
		"meter:\n  pipelines: 65\n":                      "meter.pipelines",
		"meter:\n  consumer: 'a.b'\n":                    "meter.consumer",
		"meter:\n  max_ack_pending: 10\n":                "meter.max_ack_pending",
		"meter:\n  export_max_uids: -1\n":                "meter.export_max_uids",
		"meter:\n  bacth: 10\n":                          "meter.bacth: unknown field",
		"meter:\n  dedup_ids: sometimes\n":               "meter.dedup_ids",
		"meter:\n  wait_replicas: -1\n":                  "meter.wait_replicas",
		"meter:\n  wait_timeout: 1m\n":                   "meter.wait_timeout",
		"meter:\n  pin_ttl: 10s\n":                       "meter.pin_ttl: must be 0 (fetch_wait + ack_wait) or longer than fetch_wait (30s)",
		"meter:\n  pin_ttl: -1s\n":                       "meter.pin_ttl",
		"meter:\n  ordered: maybe\n":                     "meter.ordered",
		"streams:\n  duplicates: 48h\n":                  "meter.dedup_ttl: must be at least 48h0m0s",
	} {
		if _, err := loadFile(t, body, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one mentioning %s", body, err, want)
		}
	}
}

// The meter reads the names of the rate-limited services, whose
// ratelimit_<service> grants it sets, and nothing else of the rate
// limiter's section: that section's rules are the rate limiter's.
func TestConfigRateLimitedNames(t *testing.T) {
	cfg, err := loadFile(t, "ratelimit:\n  mode: whatever\n  services:\n    upload: {limit: 10}\n    search: {}\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"search", "upload"}, cfg.RateLimited); diff != "" {
		t.Errorf("rate-limited (-want +got):\n%s", diff)
	}
}

// Section prints what the meter reads, for -validate, and nothing of the
// runtime's sections.
func TestSection(t *testing.T) {
	p := filepath.Join(t.TempDir(), "allot.yaml")
	if err := os.WriteFile(p, []byte("meter:\n  handlers: 8\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rt := service.Default()
	rt.Instance = "meter-0"
	out, err := Section().Load(rt, p, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"metrics:\n", "grants:\n", "meter:\n", "handlers: 8\n", "batch: 500\n", "photo_daily_total:"} {
		if !strings.Contains(out, want) {
			t.Errorf("Section printed no %q:\n%s", want, out)
		}
	}
	for _, not := range []string{"nats:", "redis:", "\nratelimit:"} {
		if strings.Contains(out, not) {
			t.Errorf("Section printed %q:\n%s", not, out)
		}
	}
}

// Ordered is the default, and the pin passes on after fetch_wait +
// ack_wait unless pin_ttl says otherwise.
func TestOrderedAndPinTTL(t *testing.T) {
	cfg, err := loadFile(t, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Meter.Ordered || cfg.Meter.EffectivePinTTL() != cfg.Meter.FetchWait+cfg.Meter.AckWait {
		t.Errorf("defaults: ordered %v, pin TTL %v; want ordered, fetch_wait + ack_wait", cfg.Meter.Ordered, cfg.Meter.EffectivePinTTL())
	}
	cfg, err = loadFile(t, "meter:\n  ordered: false\n  pin_ttl: 45s\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Meter.Ordered || cfg.Meter.EffectivePinTTL() != 45*time.Second {
		t.Errorf("ordered %v, pin TTL %v; want false, 45s", cfg.Meter.Ordered, cfg.Meter.EffectivePinTTL())
	}
}
