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
	env := map[string]string{"ALLOT_INSTANCE": "notifier-1", "ALLOT_NOTIFIER_TOKEN_SECRETS": secret}
	getenv := func(k string) string { return env[k] }
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"-validate"}, getenv, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name: allot-notifier\n", "notifier:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-validate printed no %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), secret) {
		t.Errorf("-validate printed ALLOT_NOTIFIER_TOKEN_SECRETS:\n%s", out.String())
	}
	bad := filepath.Join(t.TempDir(), "allot.yaml")
	if err := os.WriteFile(bad, []byte("notifier: {retention: 1s}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"-validate", "-config", bad}, getenv, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "notifier.retention") {
		t.Errorf("notifier: {retention: 1s}: %v, want an error naming notifier.retention", err)
	}
	env["ALLOT_NOTIFIER_TOKEN_SECRETS"] = "short"
	err = run(t.Context(), []string{"-validate"}, getenv, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "notifier.token_secrets") {
		t.Errorf("short secret: %v, want an error naming notifier.token_secrets", err)
	}
	if err := run(t.Context(), []string{"-no-such-flag"}, getenv, &out, &errOut); err == nil {
		t.Error("unknown flag accepted")
	}
}
