package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidate runs the command short of starting it: -validate prints
// the configuration with the command's own NATS name and section, a bad
// setting is refused naming its field, and an unknown flag is an error.
func TestValidate(t *testing.T) {
	env := map[string]string{"ALLOT_INSTANCE": "ratelimit-1"}
	getenv := func(k string) string { return env[k] }
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"-validate"}, getenv, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name: allot-ratelimit\n", "ratelimit:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-validate printed no %q:\n%s", want, out.String())
		}
	}
	bad := filepath.Join(t.TempDir(), "allot.yaml")
	if err := os.WriteFile(bad, []byte("ratelimit: {mode: leaky}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"-validate", "-config", bad}, getenv, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "ratelimit.mode") {
		t.Errorf("ratelimit: {mode: leaky}: %v, want an error naming ratelimit.mode", err)
	}
	if err := run(t.Context(), []string{"-no-such-flag"}, getenv, &out, &errOut); err == nil {
		t.Error("unknown flag accepted")
	}
}
