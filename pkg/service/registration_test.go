package service

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Every service reads the registration fields of the registry section
// and lets the registry's own stand: unread, never kept, never printed.
func TestRegistryView(t *testing.T) {
	dir := t.TempDir()
	load := func(t *testing.T, body string) (Config, error) {
		t.Helper()
		p := filepath.Join(dir, "r.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(p, func(string) string { return "" })
		if err != nil {
			return cfg, err
		}
		return cfg, cfg.Validate()
	}
	t.Run("defaults", func(t *testing.T) {
		want := RegistrationConfig{TTL: time.Minute, Heartbeat: 30 * time.Second, SelfRegister: true}
		if diff := cmp.Diff(want, Default().Registry.RegistrationConfig); diff != "" {
			t.Errorf("defaults (-want +got):\n%s", diff)
		}
	})
	t.Run("the registry's own fields stand", func(t *testing.T) {
		cfg, err := load(t, "registry:\n  ttl: 20s\n  heartbeat: 5s\n  keys: [s3cret-registry-key]\n  reap_interval: 1s\n")
		if err != nil {
			t.Fatal(err)
		}
		want := RegistrationConfig{TTL: 20 * time.Second, Heartbeat: 5 * time.Second, SelfRegister: true}
		if diff := cmp.Diff(want, cfg.Registry.RegistrationConfig); diff != "" {
			t.Errorf("registration (-want +got):\n%s", diff)
		}
		out := cfg.Redacted() + fmt.Sprintf("%+v %#v", cfg, cfg)
		if strings.Contains(out, "s3cret-registry-key") || strings.Contains(out, "reap_interval") {
			t.Errorf("the registry's own fields were kept or printed:\n%s", out)
		}
		if !strings.Contains(cfg.Redacted(), "registry:\n  ttl: 20s\n  heartbeat: 5s\n  self_register: true\n") {
			t.Errorf("Redacted:\n%s", cfg.Redacted())
		}
	})
	for _, tc := range []struct{ body, want string }{
		{"registry:\n  ttl: 1s\n", "registry.ttl"},
		{"registry:\n  ttl: 2500ms\n", "whole seconds"},
		{"registry:\n  heartbeat: 60s\n", "registry.heartbeat: must be shorter than registry.ttl"},
		{"registry:\n  heartbeat: 0s\n", "registry.heartbeat"},
		{"registry:\n  heartbeat: soon\n", "line 2: registry.heartbeat: cannot unmarshal"},
		{"registry: [a]\n", "line 1: registry: cannot unmarshal"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if _, err := load(t, tc.body); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q: error %v, want one mentioning %s", tc.body, err, tc.want)
			}
		})
	}
}
