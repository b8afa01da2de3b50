package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	env := map[string]string{"ALLOT_NOTIFIER_TOKEN_SECRETS": strings.Repeat("s", 40), "ALLOT_INSTANCE": "n-1"}
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"-validate"}, func(k string) string { return env[k] }, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "notifier:") || strings.Contains(out.String(), strings.Repeat("s", 40)) {
		t.Errorf("-validate printed:\n%s", out.String())
	}
	env["ALLOT_NOTIFIER_TOKEN_SECRETS"] = "short"
	err := run(t.Context(), []string{"-validate"}, func(k string) string { return env[k] }, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "notifier.token_secrets") {
		t.Errorf("short secret: %v", err)
	}
	if err := run(t.Context(), []string{"-no-such-flag"}, func(string) string { return "" }, &out, &errOut); err == nil {
		t.Error("unknown flag accepted")
	}
}
