package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidate runs the command short of starting it: -validate prints
// the configuration with the command's own NATS name and section and its
// secret masked, a bad setting or a short secret is refused naming its
// field, and an unknown flag is an error.
func TestValidate(t *testing.T) {
	secret := strings.Repeat("s", 40)
	env := map[string]string{"ALLOT_INSTANCE": "registry-1", "ALLOT_REGISTRY_KEYS": secret}
	getenv := func(k string) string { return env[k] }
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"-validate"}, getenv, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name: allot-registry\n", "registry:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-validate printed no %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), secret) {
		t.Errorf("-validate printed ALLOT_REGISTRY_KEYS:\n%s", out.String())
	}
	bad := filepath.Join(t.TempDir(), "allot.yaml")
	if err := os.WriteFile(bad, []byte("registry: {ttl: 1s}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"-validate", "-config", bad}, getenv, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "registry.ttl") {
		t.Errorf("registry: {ttl: 1s}: %v, want an error naming registry.ttl", err)
	}
	env["ALLOT_REGISTRY_KEYS"] = "short"
	err = run(t.Context(), []string{"-validate"}, getenv, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "registry.keys") {
		t.Errorf("short secret: %v, want an error naming registry.keys", err)
	}
	if err := run(t.Context(), []string{"-no-such-flag"}, getenv, &out, &errOut); err == nil {
		t.Error("unknown flag accepted")
	}
}
