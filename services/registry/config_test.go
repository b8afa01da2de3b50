package registry

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/google/go-cmp/cmp"
)

func TestRegistrySection(t *testing.T) {
	dir := t.TempDir()
	// load loads body as allot.yaml the way the registry's binary does:
	// the runtime's sections, then the registry's.
	load := func(t *testing.T, body string, env map[string]string) (Config, error) {
		t.Helper()
		p := filepath.Join(dir, "r.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		getenv := func(k string) string { return env[k] }
		rt, err := service.Load(p, getenv)
		if err != nil {
			return Config{}, err
		}
		rt.Instance = "registry-0"
		return LoadConfig(rt, p, getenv)
	}
	t.Run("defaults", func(t *testing.T) {
		want := Settings{RegistrationConfig: service.RegistrationConfig{TTL: time.Minute, Heartbeat: 30 * time.Second, SelfRegister: true},
			ReapInterval: 5 * time.Second, FindCache: time.Second, Handlers: 4}
		if diff := cmp.Diff(want, DefaultConfig().Registry); diff != "" {
			t.Errorf("defaults (-want +got):\n%s", diff)
		}
	})
	t.Run("file and env", func(t *testing.T) {
		cfg, err := load(t, "registry:\n  ttl: 20s\n  heartbeat: 5s\n  keys: [aaaaaaaaaaaaaaaa]\n",
			map[string]string{"ALLOT_REGISTRY_KEYS": "new-key-0123456789, old-key-0123456789"})
		if err != nil {
			t.Fatal(err)
		}
		got := []string{cfg.Registry.Keys[0].Reveal(), cfg.Registry.Keys[1].Reveal()}
		if diff := cmp.Diff([]string{"new-key-0123456789", "old-key-0123456789"}, got); diff != "" {
			t.Errorf("keys (-want +got):\n%s", diff)
		}
		if cfg.Registry.TTL != 20*time.Second || cfg.Registry.Heartbeat != 5*time.Second {
			t.Errorf("registry = %+v", cfg.Registry)
		}
		// Every service reads the same registration fields.
		if cfg.Config.Registry.TTL != 20*time.Second || cfg.Config.Registry.Heartbeat != 5*time.Second {
			t.Errorf("the runtime's view = %+v", cfg.Config.Registry)
		}
		out, err := Section().Load(cfg.Config, filepath.Join(dir, "r.yaml"), func(k string) string {
			return map[string]string{"ALLOT_REGISTRY_KEYS": "new-key-0123456789"}[k]
		})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "new-key") || !strings.Contains(out, "ttl: 20s") || !strings.Contains(out, "reap_interval: 5s") {
			t.Errorf("Section printed:\n%s", out)
		}
	})
	for _, tc := range []struct{ body, want string }{
		{"registry:\n  ttl: 1s\n", "registry.ttl"},
		{"registry:\n  ttl: 2500ms\n", "whole seconds"},
		{"registry:\n  heartbeat: 60s\n", "registry.heartbeat: must be shorter than registry.ttl"},
		{"registry:\n  heartbeat: 0s\n", "registry.heartbeat"},
		{"registry:\n  reap_interval: 2m\n", "registry.reap_interval"},
		{"registry:\n  find_cache: -1s\n", "registry.find_cache"},
		{"registry:\n  handlers: 0\n", "registry.handlers"},
		{"registry:\n  keys: [short]\n", "registry.keys: key 0 must be at least 16"},
		{"registry:\n  key: [aaaaaaaaaaaaaaaa]\n", "registry.key"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if _, err := load(t, tc.body, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q: error %v, want one mentioning %s", tc.body, err, tc.want)
			}
		})
	}
	// The registry serves with its own section: a broken ttl there is
	// refused even when the runtime's view of it is fine, and reported
	// once.
	cfg := DefaultConfig()
	cfg.Instance = "registry-0"
	cfg.Registry.TTL = time.Second
	if err := cfg.Validate(); err == nil || strings.Count(err.Error(), "registry.ttl: must be between") != 1 {
		t.Errorf("a 1s ttl: %v, want one error naming registry.ttl", err)
	}
	if err := cfg.Registry.Validate(); err == nil || !strings.Contains(err.Error(), "registry.ttl") {
		t.Errorf("Settings.Validate with a 1s ttl: %v", err)
	}
}
