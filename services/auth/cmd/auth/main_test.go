package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
)

// TestValidate runs the command short of starting it: -validate prints
// the configuration with the command's own NATS name and section, secrets
// masked; a bad setting is refused naming its field; an unknown flag is
// an error.
func TestValidate(t *testing.T) {
	kp, _ := nkeys.CreateAccount()
	seed, _ := kp.Seed()
	env := map[string]string{"ALLOT_INSTANCE": "auth-1", "ALLOT_AUTH_ISSUER_SEED": string(seed), "ALLOT_AUTH_SYS_PASSWORD": "sys-s3cret"}
	getenv := func(k string) string { return env[k] }
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"-validate"}, getenv, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name: allot-auth\n", "auth:", "roles:", "admin:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-validate printed no %q:\n%s", want, out.String())
		}
	}
	for _, secret := range []string{string(seed), "sys-s3cret"} {
		if strings.Contains(out.String(), secret) {
			t.Errorf("-validate printed a secret:\n%s", out.String())
		}
	}
	bad := filepath.Join(t.TempDir(), "allot.yaml")
	if err := os.WriteFile(bad, []byte("auth: {key_ttl: 0s}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"-validate", "-config", bad}, getenv, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "key_ttl") {
		t.Errorf("auth: {key_ttl: 0s}: %v, want an error naming key_ttl", err)
	}
	delete(env, "ALLOT_AUTH_ISSUER_SEED")
	if err := run(t.Context(), []string{"-validate"}, getenv, &out, &errOut); err == nil || !strings.Contains(err.Error(), "issuer_seed") {
		t.Errorf("no issuer seed: %v", err)
	}
	if err := run(t.Context(), []string{"-no-such-flag"}, getenv, &out, &errOut); err == nil {
		t.Error("unknown flag accepted")
	}
}
