package service_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/allot/allot/pkg/service"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// jsonLogs decodes JSON log lines.
func jsonLogs(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, rec)
	}
	return out
}

// TestExampleRun runs the package example's run against an embedded NATS
// server and miniredis: it becomes ready, and on cancel stops its parts in
// reverse order and returns nil.
func TestExampleRun(t *testing.T) {
	ns := runNATS(t, server.Options{})
	m := miniredis.RunT(t)
	m.RequireAuth("redis-s3cret")
	env := map[string]string{
		"NATS_URL":         ns.ClientURL(),
		"REDIS_URL":        "redis://" + m.Addr() + "/0",
		"REDIS_PASSWORD":   "redis-s3cret",
		"ALLOT_HTTP_ADDR":  "127.0.0.1:0",
		"ALLOT_LOG_FORMAT": "json",
		"ALLOT_INSTANCE":   "meter-0",
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, envMap(env), &stdout, &stderr) }()

	var addr string
	deadline := time.Now().Add(5 * time.Second)
	for addr == "" && time.Now().Before(deadline) {
		for _, rec := range jsonLogs(t, stderr.String()) {
			if rec["msg"] == "started" {
				addr, _ = rec["http"].(string)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if addr == "" {
		t.Fatalf("run did not start; logs:\n%s", stderr.String())
	}
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz = %d, want 200", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	var stopped []string
	for _, rec := range jsonLogs(t, stderr.String()) {
		if rec["msg"] == "stopped" {
			stopped = append(stopped, rec["name"].(string))
		}
		if rec["instance"] != "meter-0" {
			t.Errorf("log record without the instance: %v", rec)
		}
	}
	if diff := cmp.Diff([]string{"readiness", "self-registration", "meter", "http", "redis", "nats"}, stopped); diff != "" {
		t.Errorf("stop order (-want +got):\n%s", diff)
	}
	if strings.Contains(stderr.String(), "redis-s3cret") {
		t.Error("logs reveal the Redis password")
	}
}

func TestExampleRunValidate(t *testing.T) {
	env := map[string]string{
		"REDIS_URL":      "redis://:url-s3cret@127.0.0.1:6379/0",
		"REDIS_PASSWORD": "field-s3cret",
		"ALLOT_INSTANCE": "meter-0",
	}
	var stdout, stderr syncBuffer
	if err := run(t.Context(), []string{"-validate"}, envMap(env), &stdout, &stderr); err != nil {
		t.Fatalf("run -validate = %v", err)
	}
	out := stdout.String()
	for _, want := range []string{"name: allot-meter", "url: redis://:xxxxx@127.0.0.1:6379/0", "password: '[redacted]'", "instance: meter-0"} {
		if !strings.Contains(out, want) {
			t.Errorf("-validate output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "s3cret") {
		t.Errorf("-validate output reveals a secret:\n%s", out)
	}

	env["ALLOT_LOG_LEVEL"] = "loud"
	err := run(t.Context(), []string{"-validate"}, envMap(env), &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "log.level") {
		t.Errorf("run -validate with a bad level = %v, want a log.level error", err)
	}
}

// Run checks a service's own sections before anything starts, hands them
// the runtime's configuration, refuses to start when one is broken, and
// has -validate print them in the document with the runtime's.
func TestRunOwnedSections(t *testing.T) {
	path := filepath.Join(t.TempDir(), "allot.yaml")
	writeFile(t, path, "auth:\n  count: 3\n")
	env := map[string]string{"ALLOT_INSTANCE": "x-0"}
	var gotName, gotPath string
	owned := service.OwnedSection{Load: func(rt service.Config, path string, getenv func(string) string) (string, error) {
		gotName, gotPath = rt.NATS.Name, path
		var c extraConfig
		if err := service.LoadSection(&c, path, "auth", getenv); err != nil {
			return "", err
		}
		if c.Count > 5 {
			return "", errors.New("auth.count: too many")
		}
		return fmt.Sprintf("auth:\n  count: %d\n", c.Count), nil
	}}
	started := false
	start := func(context.Context, service.Deps) (func(context.Context) error, error) {
		started = true
		return nil, nil
	}
	var stdout, stderr syncBuffer
	if err := service.Run(t.Context(), "x", []string{"-validate", "-config", path}, envMap(env), &stdout, &stderr, start, owned); err != nil {
		t.Fatal(err)
	}
	if gotName != "allot-x" || gotPath != path {
		t.Errorf("the section was loaded with name %q from %q", gotName, gotPath)
	}
	if out := stdout.String(); !strings.Contains(out, "auth:\n  count: 3\n") || !strings.Contains(out, "instance: x-0\n") || strings.Contains(out, "decoded by") {
		t.Errorf("-validate printed:\n%s", out)
	}
	writeFile(t, path, "auth:\n  count: 6\n")
	err := service.Run(t.Context(), "x", []string{"-config", path}, envMap(env), &stdout, &stderr, start, owned)
	if err == nil || !strings.Contains(err.Error(), "auth.count") || started {
		t.Errorf("a broken section: %v (started: %v)", err, started)
	}
}
