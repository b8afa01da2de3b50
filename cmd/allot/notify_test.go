package main

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/cmd/allot/devstack"
	"github.com/allot/allot/pkg/service"
)

func TestNotifyUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"notify"}, "missing subcommand (confirm, verify)"},
		{[]string{"notify", "mail"}, `unknown subcommand "mail" (want confirm, verify)`},
		{[]string{"notify", "-uid", "u"}, "flags go after it"},
		{[]string{"notify", "confirm", "-email", "a@example.com"}, "-uid"},
		{[]string{"notify", "verify"}, "give exactly one token"},
		{[]string{"notify", "verify", "a", "b"}, "give exactly one token"},
	} {
		r := runCLI(t, nil, "", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("allot %v: exit %d, stderr %q; want exit 2 mentioning %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	// Refused before connecting: a bad address or template names the field.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"notify", "confirm", "-uid", "u-1", "-email", "Ada <a@example.com>"}, "email: must be an email address"},
		{[]string{"notify", "confirm", "-uid", "u-1", "-email", "a@example.com", "-template", "../x"}, "template:"},
		{[]string{"notify", "confirm", "-uid", "u 1", "-email", "a@example.com"}, "uid"},
	} {
		r := runCLI(t, map[string]string{"NATS_URL": "nats://127.0.0.1:1"}, "", tc.args...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "cannot reach NATS") {
			t.Errorf("allot %v: exit %d, stderr %q; want a refusal mentioning %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

// The whole round trip through a real allot dev stack: ask for the email,
// find it in the mail sink, verify its token once.
func TestNotifyConfirmAndVerify(t *testing.T) {
	cfg := service.Default()
	cfg.Instance = "cli-test"
	st, err := devstack.Start(t.Context(), devstack.Options{Config: cfg, NATSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", SMTPAddr: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	env := map[string]string{"NATS_URL": st.NATSURL}
	r := runCLI(t, env, "", "notify", "confirm", "-uid", "u-42", "-email", "ada@example.com", "-name", "Ada", "-id", "signup-1")
	if r.code != 0 || !strings.Contains(r.stdout, "confirmation request signup-1 for u-42 <ada@example.com> queued") {
		t.Fatalf("confirm: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, env, "", "notify", "confirm", "-uid", "u-42", "-email", "ada@example.com", "-id", "signup-1")
	if r.code != 0 || !strings.Contains(r.stdout, "duplicate") {
		t.Errorf("same id again: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var tok string
	for deadline := time.Now().Add(10 * time.Second); tok == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		tok = tokenInSink(t, st)
	}
	if tok == "" {
		t.Fatal("no confirmation email reached the mail sink")
	}
	r = runCLI(t, env, "", "notify", "verify", tok)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "valid: u-42 <ada@example.com>") {
		t.Errorf("verify: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, env, "", "notify", "verify", tok)
	if r.code != 1 || !strings.HasPrefix(r.stdout, "used: u-42") || !strings.Contains(r.stderr, "the token is used") {
		t.Errorf("verify again: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, env, "", "notify", "verify", "-json", "not-a-token")
	if r.code != 1 || !strings.Contains(r.stdout, `"status": "invalid"`) {
		t.Errorf("verify garbage: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

var tokenRE = regexp.MustCompile(`token=([^\s&"<>]+)`)

func tokenInSink(t *testing.T, st *devstack.Stack) string {
	t.Helper()
	m := tokenRE.FindStringSubmatch(httpGet(t, st.HTTPURL+"/dev/mail"))
	if m == nil {
		return ""
	}
	tok, err := url.QueryUnescape(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func httpGet(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
