package ratelimit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/google/go-cmp/cmp"
)

func TestRateLimitDefaults(t *testing.T) {
	cfg, err := LoadConfig(DefaultConfig().Config, "", func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	want := Settings{Interval: 300 * time.Second, Mode: ModeFixed, Handlers: 2, Pipelines: 2, Timeout: 50 * time.Millisecond, Consumer: "ratelimit", LossCheck: 2 * time.Second,
		Hits: service.DefaultConsumerTuning(), GRPC: GRPCSettings{MaxRecvBytes: 1 << 20, MaxDescriptors: 64, MaxHitsAddend: 1<<31 - 1, ResponseHeaders: true}}
	if diff := cmp.Diff(want, cfg.RateLimit); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	if g, _ := cfg.Usage.DefaultGrant(Grant); g != 500 {
		t.Errorf("ratelimit grant = %v, want 500", g)
	}
	if got, ok := cfg.RateLimit.RateLimitFor(""); !ok || got.Interval != 300*time.Second || got.Mode != ModeFixed {
		t.Errorf("uid limit = %+v, %v", got, ok)
	}
	if _, ok := cfg.RateLimit.RateLimitFor("upload"); ok {
		t.Error("an unconfigured service must not be found")
	}
}

func TestRateLimitSection(t *testing.T) {
	dir := t.TempDir()
	// load loads body as allot.yaml the way the rate limiter's binary
	// does: the runtime's sections, then the rate limiter's.
	load := func(t *testing.T, body string) (Config, error) {
		t.Helper()
		p := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+".yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		getenv := func(string) string { return "" }
		rt, err := service.Load(p, getenv)
		if err != nil {
			return Config{}, err
		}
		rt.Instance = "ratelimit-0"
		return LoadConfig(rt, p, getenv)
	}
	ten := int64(10)

	t.Run("services inherit the section", func(t *testing.T) {
		cfg, err := load(t, `ratelimit:
  interval: 1s
  mode: sliding
  shadow: true
  handlers: 3
  pipelines: 4
  services:
    upload: {limit: 10, interval: 60s, fail_open: true, cache: true}
    search: {mode: fixed}
`)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.RateLimit.Handlers != 3 || cfg.RateLimit.Pipelines != 4 {
			t.Errorf("handlers %d, pipelines %d; want 3 and 4", cfg.RateLimit.Handlers, cfg.RateLimit.Pipelines)
		}
		for _, tc := range []struct {
			name string
			want Service
		}{
			{"", Service{Interval: time.Second, Mode: ModeSliding, Shadow: true}},
			{"upload", Service{Interval: time.Minute, Mode: ModeSliding, Limit: &ten, Shadow: true, FailOpen: true, Cache: true}},
			{"search", Service{Interval: time.Second, Mode: ModeFixed, Shadow: true}},
		} {
			got, ok := cfg.RateLimit.RateLimitFor(tc.name)
			if !ok {
				t.Fatalf("%q not found", tc.name)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("%q (-want +got):\n%s", tc.name, diff)
			}
		}
		if diff := cmp.Diff([]string{"search", "upload"}, cfg.RateLimit.ServiceNames()); diff != "" {
			t.Errorf("names (-want +got):\n%s", diff)
		}
	})

	for _, tc := range []struct {
		name, body, want string
	}{
		{"interval below 1s", "ratelimit: {interval: 999ms}\n", "ratelimit.interval: must be at least 1s"},
		{"interval zero", "ratelimit: {interval: 0s}\n", "ratelimit.interval: must be at least 1s"},
		{"interval too long", "ratelimit: {interval: 800h}\n", "ratelimit.interval: must be at most"},
		{"interval fraction of a ms", "ratelimit: {interval: 1000500us}\n", "ratelimit.interval: must be whole milliseconds"},
		{"mode", "ratelimit: {mode: leaky}\n", `ratelimit.mode: must be fixed or sliding, got "leaky"`},
		{"handlers", "ratelimit: {handlers: 0}\n", "ratelimit.handlers: must be between 1 and 256"},
		{"no pipelines", "ratelimit: {pipelines: 0}\n", "ratelimit.pipelines: must be between 1 and 64, got 0"},
		{"too many pipelines", "ratelimit: {pipelines: 65}\n", "ratelimit.pipelines: must be between 1 and 64, got 65"},
		{"timeout", "ratelimit: {timeout: 0s}\n", "ratelimit.timeout: must be between 1ms and 10s"},
		{"hits batch", "ratelimit: {hits: {batch: 0}}\n", "ratelimit.hits.batch: must be between 1 and 10000"},
		{"hits fetch wait", "ratelimit: {hits: {fetch_wait: 100ms}}\n", "ratelimit.hits.fetch_wait: must be at least 1s"},
		{"hits dedup", "ratelimit: {hits: {dedup_ttl: 1m}}\n", "ratelimit.hits.dedup_ttl: must be at least 5m0s (the stream's duplicate window and 10 ack waits)"},
		{"hits dedup and the stream's window", "streams: {duplicates: 48h}\n", "ratelimit.hits.dedup_ttl: must be at least 48h0m0s"},
		{"hits pending", "ratelimit: {hits: {batch: 100, max_ack_pending: 10}}\n", "ratelimit.hits.max_ack_pending"},
		{"hits unknown", "ratelimit: {hits: {bacth: 1}}\n", "ratelimit.hits.bacth: unknown field"},
		{"service name", "ratelimit:\n  services:\n    'up load': {}\n", "ratelimit.services.up load: service names must be"},
		{"service name too long", "ratelimit:\n  services:\n    " + strings.Repeat("s", MaxServiceName+1) + ": {}\n", "service names must be 1 to 118 characters"},
		{"service interval", "ratelimit:\n  services:\n    upload: {interval: 10ms}\n", "ratelimit.services.upload.interval: must be at least 1s"},
		{"service mode", "ratelimit:\n  services:\n    upload: {mode: token}\n", "ratelimit.services.upload.mode: must be fixed or sliding"},
		{"negative limit", "ratelimit:\n  services:\n    upload: {limit: -1}\n", "ratelimit.services.upload.limit: must be between 0 and"},
		{"huge limit", "ratelimit:\n  services:\n    upload: {limit: 10000000000}\n", "ratelimit.services.upload.limit: must be between 0 and"},
		{"unknown field", "ratelimit:\n  services:\n    upload: {limits: 3}\n", "limits"},
		{"consumer", "ratelimit: {consumer: 'a.b'}\n", "ratelimit.consumer: must be a token"},
		{"loss check too often", "ratelimit: {loss_check: 10ms}\n", "ratelimit.loss_check: must be 0 (off) or at least 100ms"},
		{"loss check negative", "ratelimit: {loss_check: -1s}\n", "ratelimit.loss_check: must be 0 (off) or at least 100ms"},
		{"unknown metric", "ratelimit:\n  services:\n    upload: {metric: nope}\n", `ratelimit.services.upload.metric: unknown metric "nope"`},
		{"a grant is not hits", "ratelimit:\n  services:\n    upload: {metric: photo_daily_total}\n", "must be a counter of scope user"},
		{"a global counter is not hits", "metrics:\n  jobs: {style: counter, scope: global}\nratelimit:\n  services:\n    upload: {metric: jobs}\n", "must be a counter of scope user"},
		{"a bad metric", "metrics:\n  jobs: {style: counter, scope: planet}\n", "metrics.jobs.scope"},
		{"deny_unmatched not a bool", "ratelimit: {grpc: {deny_unmatched: maybe}}\n", "cannot unmarshal !!str `maybe` into bool"},
		{"deny_unmatched a number", "ratelimit: {grpc: {deny_unmatched: 1}}\n", "cannot unmarshal !!int `1` into bool"},
		{"deny_unmatched misspelled", "ratelimit: {grpc: {deny_unmatch: true}}\n", "deny_unmatch: unknown field"},
		{"a domain's allot_deny_unmatched not a bool", "ratelimit:\n  grpc:\n    domains:\n      - {domain: x, allot_deny_unmatched: [true]}\n", "cannot unmarshal !!seq into bool"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.body)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}

	t.Run("hits from a counter", func(t *testing.T) {
		cfg, err := load(t, "ratelimit:\n  services:\n    api: {metric: api_calls_total}\n    web: {metric: api_calls_total}\n    upload: {}\n")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(map[string][]string{"api_calls_total": {"api", "web"}}, cfg.RateLimit.HitServices()); diff != "" {
			t.Errorf("hit services (-want +got):\n%s", diff)
		}
	})

	t.Run("deny_unmatched, and a domain's own", func(t *testing.T) {
		cfg, err := load(t, "ratelimit:\n  grpc:\n    deny_unmatched: true\n    domains:\n      - {domain: x, allot_deny_unmatched: false}\n      - {domain: y}\n")
		if err != nil {
			t.Fatal(err)
		}
		g := cfg.RateLimit.GRPC
		domains, err := g.AllDomains()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for name, d := range compileEnvoy(domains, g.DenyUnmatched) {
			got[name] = d.denyUnmatched
		}
		if diff := cmp.Diff(map[string]bool{"allot": true, "x": false, "y": true}, got); diff != "" {
			t.Errorf("deny_unmatched by domain (-want +got):\n%s", diff)
		}
	})

	t.Run("limit zero and a 118-character name are fine", func(t *testing.T) {
		if _, err := load(t, "ratelimit:\n  services:\n    "+strings.Repeat("s", MaxServiceName)+": {limit: 0}\n"); err != nil {
			t.Error(err)
		}
	})

	t.Run("Section prints the sections the rate limiter reads", func(t *testing.T) {
		p := filepath.Join(dir, "section.yaml")
		if err := os.WriteFile(p, []byte("ratelimit:\n  services:\n    upload: {limit: 10}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		rt := service.Default()
		rt.Instance = "ratelimit-0"
		out, err := Section().Load(rt, p, func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"metrics:\n", "grants:\n", "ratelimit:\n", "upload:", "limit: 10\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("Section printed no %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "nats:") || strings.Contains(out, "\nmeter:") {
			t.Errorf("Section printed another section:\n%s", out)
		}
	})
}
