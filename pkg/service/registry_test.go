package service

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestRegistrySection(t *testing.T) {
	dir := t.TempDir()
	load := func(t *testing.T, body string, env map[string]string) (Config, error) {
		t.Helper()
		p := filepath.Join(dir, "r.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(p, func(k string) string { return env[k] })
		if err != nil {
			return cfg, err
		}
		return cfg, cfg.Validate()
	}
	t.Run("defaults", func(t *testing.T) {
		want := RegistryConfig{TTL: time.Minute, Heartbeat: 30 * time.Second, ReapInterval: 5 * time.Second,
			FindCache: time.Second, Handlers: 4, SelfRegister: true}
		if diff := cmp.Diff(want, Default().Registry); diff != "" {
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
		if strings.Contains(cfg.Redacted(), "new-key") {
			t.Error("Redacted shows a registry key")
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
}
