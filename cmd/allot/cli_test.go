package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
)

// syncBuffer is a bytes.Buffer safe for a command writing while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

type result struct {
	code   int
	stdout string
	stderr string
}

// runCLI runs one allot command line in-process with the given
// environment and stdin.
func runCLI(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errOut syncBuffer
	code := run(t.Context(), args, &cliEnv{
		stdin:  strings.NewReader(stdin),
		stdout: &out,
		stderr: &errOut,
		getenv: func(k string) string { return env[k] },
	})
	return result{code, out.String(), errOut.String()}
}

func startNATS(t *testing.T) string {
	t.Helper()
	return testenv.EmbeddedNATS(t)
}

func TestHelp(t *testing.T) {
	r := runCLI(t, nil, "", "help")
	if r.code != 0 {
		t.Errorf("help exit %d", r.code)
	}
	for _, name := range []string{"authorize", "check", "credit", "dev", "grants", "publish", "ratelimit", "registry", "streams", "tail", "version"} {
		if !strings.Contains(r.stdout, "  "+name+" ") {
			t.Errorf("help does not list %s:\n%s", name, r.stdout)
		}
	}
	for _, name := range []string{"authorize", "check", "credit", "dev", "grants", "publish", "registry", "streams", "tail", "version"} {
		r := runCLI(t, nil, "", name, "-h")
		if r.code != 0 || !strings.Contains(r.stderr, "Examples:") || !strings.Contains(r.stderr, "Flags:") {
			t.Errorf("allot %s -h: exit %d, want an example and the flags:\n%s", name, r.code, r.stderr)
		}
	}
	if r := runCLI(t, nil, "", "help", "publish"); r.code != 0 || !strings.Contains(r.stderr, "allot publish -uid") {
		t.Errorf("allot help publish: %+v", r)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"publish"}, "-uid and -metric are required"},
		{[]string{"publish", "-uid", "u"}, "-uid and -metric are required"},
		{[]string{"publish", "-file", "x", "-uid", "u"}, "cannot be combined"},
		{[]string{"publish", "-window", "0", "-file", "-"}, "-window must be between"},
		{[]string{"publish", "-value", "abc", "-uid", "u", "-metric", "m"}, `invalid value "abc"`},
		{[]string{"publish", "-label", "novalue", "-uid", "u", "-metric", "m"}, "want name=value"},
		{[]string{"publish", "-uid", "u", "-metric", "m", "extra"}, `unexpected argument "extra"`},
		{[]string{"tail", "-n", "0"}, "-n must be between"},
	} {
		r := runCLI(t, nil, "", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("allot %v: exit %d, stderr %q; want exit 2 mentioning %q", tc.args, r.code, r.stderr, tc.want)
		}
		if strings.Contains(r.stderr, "goroutine ") {
			t.Errorf("allot %v printed a stack trace", tc.args)
		}
	}
}

func TestPublishAndTail(t *testing.T) {
	env := map[string]string{"NATS_URL": startNATS(t)}

	// Without streams, publish says how to create them.
	r := runCLI(t, env, "", "publish", "-uid", "u-42", "-metric", "photo_daily_total")
	if r.code != 1 || !strings.Contains(r.stderr, "allot streams") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Fatalf("publish without streams: %+v; want one line pointing at 'allot streams'", r)
	}

	r = runCLI(t, env, "", "streams")
	if r.code != 0 || !strings.Contains(r.stdout, "USAGE ") || !strings.Contains(r.stdout, "USAGE_DEAD") {
		t.Fatalf("streams: %+v", r)
	}

	r = runCLI(t, env, "", "publish", "-uid", "u-42", "-metric", "photo_daily_total", "-id", "ev-1", "-label", "app=web")
	if r.code != 0 || !strings.Contains(r.stdout, "published event ev-1 to usage.u-42: USAGE seq 1") {
		t.Fatalf("publish: %+v", r)
	}
	r = runCLI(t, env, "", "publish", "-uid", "u-42", "-metric", "photo_daily_total", "-id", "ev-1")
	if r.code != 0 || !strings.Contains(r.stdout, "duplicate: event ev-1") {
		t.Fatalf("republish: %+v", r)
	}
	for value, want := range map[string]string{
		"1e400":  "allot publish: data.value: must be a number from -1e15 to 1e15 (got 1e400)",
		"1e308":  "allot publish: data.value: must be a number from -1e15 to 1e15 (got 1e+308)",
		"1e-300": "allot publish: data.value: must be a number from -1e15 to 1e15 with at most 6 decimal places (got 1e-300)",
		"NaN":    "allot publish: data.value: must be a number from -1e15 to 1e15 (got NaN)",
	} {
		r = runCLI(t, env, "", "publish", "-uid", "u-42", "-metric", "photo_daily_total", "-value", value)
		if r.code != 1 || strings.TrimSpace(r.stderr) != want {
			t.Errorf("publish -value %s: %+v; want exit 1 and %q", value, r, want)
		}
	}
	r = runCLI(t, env, "", "publish", "-uid", "u.42", "-metric", "photo_daily_total")
	if r.code != 1 || !strings.Contains(r.stderr, "subject: must be 1 to 128") {
		t.Fatalf("bad uid: %+v", r)
	}

	r = runCLI(t, env, "", "tail", "-n", "5")
	if r.code != 0 || !strings.Contains(r.stdout, `1 `) || !strings.Contains(r.stdout, `usage.u-42 {"specversion":"1.0","id":"ev-1"`) || !strings.Contains(r.stdout, `"labels":{"app":"web"}`) {
		t.Fatalf("tail: %+v", r)
	}
	r = runCLI(t, env, "", "tail", "-dead")
	if r.code != 0 || !strings.Contains(r.stdout, "USAGE_DEAD is empty") {
		t.Fatalf("tail -dead: %+v", r)
	}
	r = runCLI(t, env, "", "streams", "-check")
	if r.code != 0 || !strings.Contains(r.stdout, "  1 event, ") || !strings.Contains(r.stdout, "  0 events, ") || !strings.Contains(r.stdout, ", 1 replica\n") {
		t.Fatalf("streams -check: %+v", r)
	}
}

func TestPublishFile(t *testing.T) {
	env := map[string]string{"NATS_URL": startNATS(t)}
	if r := runCLI(t, env, "", "streams"); r.code != 0 {
		t.Fatal(r)
	}
	lines := []string{
		`{"subject":"u-1","id":"a","data":{"metric":"photo_daily_total","value":1}}`,
		`{"subject":"u-2","data":{"metric":"api_calls_total","value":2,"labels":{"resource":"photo"}}}`,
		``,
		`not json`,
		`{"subject":"u-1","id":"a","data":{"metric":"photo_daily_total","value":1}}`,
		`{"subject":"u-3","data":{"metric":"photo_daily_total","value":"lots"}}`,
		`{"specversion":"1.0","id":"full","source":"app","type":"allot.usage.v1","subject":"u-4","time":"2026-11-22T10:00:00Z","data":{"metric":"m","value":1}}`,
		`{"subject":"u-5","data":{"metric":"m","value":1,"valeu":3}}`,
		`{"subject":"u-6","data":{"metric":"m","value":1,"labels":{"x":"` + strings.Repeat("y", 70000) + `"}}}`,
	}
	r := runCLI(t, env, strings.Join(lines, "\n")+"\n", "publish", "-file", "-")
	if r.code != 1 {
		t.Errorf("exit %d, want 1 for refused lines", r.code)
	}
	for _, want := range []string{
		"stdin: 9 lines: 3 events accepted, 1 duplicate, 4 refused, 0 failed, in ",
		"line 4: event: is not valid JSON",
		"line 6: data.value: must be a number (got string)",
		"line 8: data.valeu: is not a known field",
		"line 9: event: longer than 65536 bytes",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "4 of 9 lines were not published") {
		t.Errorf("stderr = %q", r.stderr)
	}

	// A clean file exits 0; from a path.
	path := filepath.Join(t.TempDir(), "ok.jsonl")
	if err := os.WriteFile(path, []byte(lines[0]+"\n"+lines[1]), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, env, "", "publish", "-file", path)
	if r.code != 0 || !strings.Contains(r.stdout, "ok.jsonl: 2 lines: 1 event accepted, 1 duplicate, 0 refused, 0 failed, in ") {
		t.Errorf("clean file: %+v", r)
	}
	r = runCLI(t, env, "", "publish", "-file", filepath.Join(t.TempDir(), "missing.jsonl"))
	if r.code != 1 || !strings.Contains(r.stderr, "no such file") {
		t.Errorf("missing file: %+v", r)
	}
}

// Every connection error names the URL tried and where it came from, and
// says what to do.
func TestUnreachableNATS(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "allot.yaml")
	if err := os.WriteFile(cfg, []byte("nats:\n  url: nats://127.0.0.1:2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const advice = "is allot dev running? allot dev prints the URL to use: export NATS_URL=<it>, or pass -nats"
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"from the environment", map[string]string{"NATS_URL": "nats://127.0.0.1:1"}, nil,
			"cannot reach NATS at nats://127.0.0.1:1 (from NATS_URL): "},
		{"from the flag, over the environment", map[string]string{"NATS_URL": "nats://127.0.0.1:2"}, []string{"-nats", "nats://127.0.0.1:1"},
			"cannot reach NATS at nats://127.0.0.1:1 (from -nats): "},
		{"from the config file", nil, []string{"-config", cfg},
			"cannot reach NATS at nats://127.0.0.1:2 (from nats.url in " + cfg + "): "},
		{"from ALLOT_CONFIG", map[string]string{"ALLOT_CONFIG": cfg}, nil,
			"cannot reach NATS at nats://127.0.0.1:2 (from nats.url in " + cfg + "): "},
		{"a password is not shown", map[string]string{"NATS_URL": "nats://ann:hunter2@127.0.0.1:1"}, nil,
			"cannot reach NATS at nats://ann:xxxxx@127.0.0.1:1 (from NATS_URL): "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, cmd := range [][]string{
				{"publish", "-uid", "u", "-metric", "m"},
				{"credit", "-uid", "u"},
				{"streams", "-check"},
				{"tail"},
			} {
				args := append(append(cmd, "-timeout", "300ms"), tc.args...)
				r := runCLI(t, tc.env, "", args...)
				if r.code != 1 || !isOneLine(r.stderr) || !strings.Contains(r.stderr, tc.want) || !strings.HasSuffix(r.stderr, advice+"\n") {
					t.Errorf("allot %v: exit %d, stderr %q; want one line with %q ending %q", args, r.code, r.stderr, tc.want, advice)
				}
				if strings.Contains(r.stderr, "hunter2") {
					t.Errorf("allot %v printed the password: %q", args, r.stderr)
				}
			}
		})
	}
}

// With nothing set, the commands use the default URL, and say so. (Not
// connected here: on a development machine a NATS may listen there.)
func TestDefaultNATSTarget(t *testing.T) {
	var cf clientFlags
	env := &cliEnv{getenv: func(string) string { return "" }}
	cfg, err := service.Load("", env.getenv)
	if err != nil {
		t.Fatal(err)
	}
	got := cf.resolveTarget(cfg, env).String()
	if want := "nats://127.0.0.1:4222 (the default: neither -nats nor NATS_URL is set)"; got != want {
		t.Errorf("target = %q, want %q", got, want)
	}
}

// allot dev runs with access control on: the admin key of the export
// line may do everything, the app key publishes but may not set grants,
// and no key is refused; -no-auth runs open.
func TestDevStartsPublishesAndStops(t *testing.T) {
	for _, open := range []bool{false, true} {
		t.Run(fmt.Sprintf("no-auth=%v", open), func(t *testing.T) { testDev(t, open) })
	}
}

func testDev(t *testing.T, open bool) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	args := []string{"dev", "-nats-addr", "127.0.0.1:0", "-http", "127.0.0.1:0", "-smtp", "127.0.0.1:0", "-grpc", "127.0.0.1:0"}
	if open {
		args = append(args, "-no-auth")
	}
	go func() {
		done <- run(ctx, args, &cliEnv{
			stdin: strings.NewReader(""), stdout: &out, stderr: &errOut,
			getenv: func(string) string { return "" },
		})
	}()
	natsRe := regexp.MustCompile(`NATS\s+(nats://\S+)`)
	httpRe := regexp.MustCompile(`HTTP\s+(http://\S+)/metrics`)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "\nTry:") {
		if time.Now().After(deadline) {
			t.Fatalf("dev printed no NATS URL in 20s:\n%s\n%s", out.String(), errOut.String())
		}
		select {
		case code := <-done:
			t.Fatalf("dev exited %d early:\n%s\n%s", code, out.String(), errOut.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	natsURL := natsRe.FindStringSubmatch(out.String())[1]
	if !httpRe.MatchString(out.String()) {
		t.Errorf("banner lacks the HTTP address:\n%s", out.String())
	}
	env := map[string]string{"NATS_URL": natsURL}
	if !open {
		admin := regexp.MustCompile(`export NATS_URL=\S+ ALLOT_KEY=(\S+)`).FindStringSubmatch(out.String())
		app := regexp.MustCompile(`(?m)^app key: (\S+)$`).FindStringSubmatch(out.String())
		if admin == nil || app == nil || !strings.Contains(out.String(), "admin key: "+admin[1]) {
			t.Fatalf("the banner names no admin and app keys:\n%s", out.String())
		}
		if r := runCLI(t, env, "", "credit", "-uid", "u-42"); r.code != 1 || !strings.Contains(r.stderr, "wants an API key") {
			t.Errorf("credit without a key: %+v", r)
		}
		appEnv := map[string]string{"NATS_URL": natsURL, "ALLOT_KEY": app[1]}
		if r := runCLI(t, appEnv, "", "publish", "-uid", "u-7", "-metric", "photo_daily_total"); r.code != 0 {
			t.Errorf("publish with the app key: %+v", r)
		}
		if r := runCLI(t, appEnv, "", "grants", "-uid", "u-7", "-set", "photo_daily_total=5"); r.code != 1 || !strings.Contains(r.stderr, "NATS refused it") {
			t.Errorf("grants with the app key: %+v", r)
		}
		env["ALLOT_KEY"] = admin[1]
	}
	if r := runCLI(t, env, "", "publish", "-uid", "u-42", "-metric", "photo_daily_total"); r.code != 0 {
		t.Fatalf("publish to dev: %+v", r)
	}
	if r := runCLI(t, env, "", "tail", "-n", "1"); r.code != 0 || !strings.Contains(r.stdout, "usage.u-42") {
		t.Fatalf("tail on dev: %+v", r)
	}
	// The Envoy RLS front spends the very window ratelimit.check uses.
	grpcAddr := regexp.MustCompile(`grpc\s+(127\.0\.0\.1:\d+) \(Envoy RLS\)`).FindStringSubmatch(out.String())
	if grpcAddr == nil {
		t.Fatalf("the banner names no gRPC address:\n%s", out.String())
	}
	if r := runCLI(t, env, "", "check", "-grpc", grpcAddr[1], "-descriptor", "uid=u-9", "-hits", "499"); r.code != 0 ||
		!strings.Contains(r.stdout, "descriptor 0: OK, 1 of 500 per unknown left") || !strings.Contains(r.stdout, "x-ratelimit-remaining: 1") {
		t.Errorf("check -grpc: %+v", r)
	}
	if r := runCLI(t, env, "", "check", "-uid", "u-9", "-cost", "0"); r.code != 0 || !strings.Contains(r.stdout, "1 of 500 left") {
		t.Errorf("check over NATS after gRPC: %+v", r)
	}
	if r := runCLI(t, env, "", "check", "-grpc", grpcAddr[1], "-domain", "allot", "-descriptor", "uid=u-9", "-hits", "2"); r.code != 1 ||
		!strings.Contains(r.stdout, "OVER_LIMIT") || !strings.Contains(r.stderr, "denied") {
		t.Errorf("check -grpc over the limit: %+v", r)
	}
	if r := runCLI(t, env, "", "check", "-grpc", grpcAddr[1], "-domain", "nope", "-descriptor", "uid=u-9"); r.code != 1 || !strings.Contains(r.stderr, "NotFound") {
		t.Errorf("check -grpc, unknown domain: %+v", r)
	}
	if open && strings.Contains(out.String(), "admin key") {
		t.Errorf("-no-auth printed keys:\n%s", out.String())
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(errOut.String(), "allot dev: stopped") {
			t.Errorf("dev exit %d, stderr:\n%s", code, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dev did not stop within 30s of Ctrl-C")
	}
}

func TestDevValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("redis:\n  password: hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, nil, "", "dev", "-config", good, "-validate")
	if r.code != 0 || !strings.Contains(r.stdout, "configuration is valid") || strings.Contains(r.stdout, "hunter2") {
		t.Errorf("dev -validate: %+v", r)
	}
	// The auth section too, its made-up issuer seed masked.
	if !strings.Contains(r.stdout, "\nauth:\n") || !strings.Contains(r.stdout, "issuer_seed:") || strings.Contains(r.stdout, "issuer_seed: SA") {
		t.Errorf("dev -validate does not print the auth section, masked:\n%s", r.stdout)
	}
	bad0 := filepath.Join(dir, "bad-auth.yaml")
	if err := os.WriteFile(bad0, []byte("auth:\n  key_ttl: 0s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, nil, "", "dev", "-config", bad0, "-validate"); r.code == 0 || !strings.Contains(r.stderr, "key_ttl") {
		t.Errorf("dev -validate with a bad auth section: %+v", r)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("nats:\n  urll: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, nil, "", "dev", "-config", bad, "-validate")
	if r.code != 1 || !strings.Contains(r.stderr, "urll") {
		t.Errorf("dev -validate with a typo: %+v", r)
	}
}

// The summary of a file prints every problem up to -show (100), then
// how many more there were and how to see them; -show 0 prints all.
func TestPublishFileProblems(t *testing.T) {
	env := map[string]string{"NATS_URL": startNATS(t)}
	if r := runCLI(t, env, "", "streams"); r.code != 0 {
		t.Fatal(r)
	}
	var in strings.Builder
	in.WriteString(`{"subject":"u-1","data":{"metric":"photo_daily_total","value":1}}` + "\n")
	for range 150 {
		in.WriteString("not json\n")
	}
	r := runCLI(t, env, in.String(), "publish", "-file", "-")
	if r.code != 1 || !strings.Contains(r.stderr, "allot publish: 150 of 151 lines were not published") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "stdin: 151 lines: 1 event accepted, 0 duplicates, 150 refused, 0 failed, in ") {
		t.Errorf("summary:\n%s", r.stdout)
	}
	if n := strings.Count(r.stdout, ": event: is not valid JSON"); n != 100 {
		t.Errorf("%d problems printed, want the first 100", n)
	}
	if !strings.Contains(r.stdout, "  line 101: event:") || strings.Contains(r.stdout, "  line 102: ") {
		t.Errorf("want lines 2 to 101 printed:\n%s", r.stdout)
	}
	if !strings.HasSuffix(r.stdout, "  (50 more problems not shown, 150 in all; -show 0 prints every one)\n") {
		t.Errorf("the summary does not say what was left out:\n%s", r.stdout[max(0, len(r.stdout)-300):])
	}

	r = runCLI(t, env, in.String(), "publish", "-file", "-", "-show", "0")
	if n := strings.Count(r.stdout, ": event: is not valid JSON"); n != 150 || strings.Contains(r.stdout, "not shown") {
		t.Errorf("-show 0 printed %d problems, want all 150", n)
	}
	r = runCLI(t, env, "not json\n", "publish", "-file", "-", "-show", "0")
	if !strings.Contains(r.stdout, "stdin: 1 line: 0 events accepted, 0 duplicates, 1 refused, 0 failed, in ") ||
		!strings.Contains(r.stderr, "1 of 1 line was not published") {
		t.Errorf("one bad line: %+v", r)
	}
	if r := runCLI(t, env, "", "publish", "-file", "-", "-show", "-1"); r.code != 2 || !strings.Contains(r.stderr, "-show must be >= 0") {
		t.Errorf("-show -1: %+v", r)
	}
}

// ALLOT_HTTP_ADDR (or http.addr) moves allot dev's HTTP server, as it
// does a service's; -http wins over both.
func TestDevHTTPAddr(t *testing.T) {
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	for _, tc := range []struct {
		name string
		env  func(addr string) map[string]string
		args func(addr string) []string
	}{
		{"ALLOT_HTTP_ADDR", func(a string) map[string]string { return map[string]string{"ALLOT_HTTP_ADDR": a} }, nil},
		{"-http over ALLOT_HTTP_ADDR", func(string) map[string]string { return map[string]string{"ALLOT_HTTP_ADDR": "127.0.0.1:1"} },
			func(a string) []string { return []string{"-http", a} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := free()
			env := tc.env(addr)
			args := []string{"dev", "-nats-addr", "127.0.0.1:0", "-smtp", "127.0.0.1:0", "-grpc", "127.0.0.1:0"}
			if tc.args != nil {
				args = append(args, tc.args(addr)...)
			}
			out, stop := startDev(t, env, args...)
			if !strings.Contains(out, "  HTTP      http://"+addr+"/metrics") {
				t.Errorf("banner does not serve HTTP on %s:\n%s", addr, out)
			}
			resp, err := http.Get("http://" + addr + "/healthz")
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("GET /healthz on %s: %v, %v", addr, resp, err)
			}
			if resp != nil {
				resp.Body.Close()
			}
			if code, log := stop(); code != 0 {
				t.Errorf("dev exit %d:\n%s", code, log)
			}
		})
	}
}

// startDev runs allot dev in-process until its banner is printed; stop
// ends it as Ctrl-C does and returns its exit code and log.
func startDev(t *testing.T, env map[string]string, args ...string) (banner string, stop func() (int, string)) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, args, &cliEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut,
			getenv: func(k string) string { return env[k] }})
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "\nTry:") {
		select {
		case code := <-done:
			cancel()
			t.Fatalf("dev exited %d early:\n%s\n%s", code, out.String(), errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("dev printed no banner in 30s:\n%s\n%s", out.String(), errOut.String())
		}
	}
	stopped := false
	stop = func() (int, string) {
		stopped = true
		cancel()
		select {
		case code := <-done:
			return code, errOut.String()
		case <-time.After(30 * time.Second):
			return -1, "did not stop within 30s:\n" + errOut.String()
		}
	}
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	return out.String(), stop
}

// TestMain lets a test run this test binary as the allot command:
// with ALLOT_TEST_MAIN set, it runs main with the arguments after "--".
func TestMain(m *testing.M) {
	if os.Getenv("ALLOT_TEST_MAIN") == "1" {
		for i, a := range os.Args {
			if a == "--" {
				os.Args = append([]string{"allot"}, os.Args[i+1:]...)
				break
			}
		}
		main()
		return
	}
	os.Exit(m.Run())
}

// Ctrl-C (SIGINT) stops the real allot dev process cleanly, with exit
// status 0, so "make run" ends without an error.
func TestDevInterrupt(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "--", "dev", "-nats-addr", "127.0.0.1:0", "-http", "127.0.0.1:0", "-smtp", "127.0.0.1:0", "-grpc", "127.0.0.1:0")
	cmd.Env = []string{"ALLOT_TEST_MAIN=1", "HOME=" + t.TempDir(), "TMPDIR=" + t.TempDir()}
	var out, errOut syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(60 * time.Second)
	for !strings.Contains(out.String(), "\nTry:") {
		select {
		case err := <-exited:
			t.Fatalf("allot dev exited early (%v):\n%s\n%s", err, out.String(), errOut.String())
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("no banner in 60s:\n%s\n%s", out.String(), errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil || cmd.ProcessState.ExitCode() != 0 || !strings.Contains(errOut.String(), "allot dev: stopped") {
			t.Errorf("after Ctrl-C: %v, exit %d; want 0 after a clean stop:\n%s", err, cmd.ProcessState.ExitCode(), tail(errOut.String(), 10))
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("allot dev did not stop within 30s of Ctrl-C")
	}
	if !strings.Contains(out.String(), "Try:  allot publish") {
		t.Errorf("the banner's suggestion does not name the command as invoked:\n%s", out.String())
	}
}
