package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/loadtest/internal/report"
)

// TestMain lets the test binary be the stack and baseline processes too,
// as the harness's own binary is.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

func readReport(t *testing.T, dir string) report.Report {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r report.Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// A real run of about two seconds against the in-process stack: every
// phase runs, and exactness holds.
func TestShortRunIsExact(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole stack")
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := []string{"-duration", "2s", "-scenarios", "ingest,credit,authorize,ratelimit,grpc,registry", "-uids", "50", "-apps", "2", "-concurrency", "4", "-dup", "0.1", "-bad", "0.05", "-out", out}
	code := run(t.Context(), args, &stdout, &stderr, noEnv)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	r := readReport(t, out)
	e := r.Exactness
	if !r.Complete || !e.Checked || !e.OK || e.Events == 0 || e.Dead != e.Bad || e.Bad == 0 || e.Duplicates == 0 {
		t.Errorf("report: complete %v, exactness %+v", r.Complete, e)
	}
	names := map[string]bool{}
	for _, p := range r.Phases {
		names[p.Name] = true
	}
	for _, want := range []string{"publish.raw", "publish", "ingest.raw.max", "ingest.max", "ingest.raw.rate", "ingest.rate", "request.raw", "credit", "authorize", "ratelimit", "grpc", "registry"} {
		if !names[want] {
			t.Errorf("no phase %s in %v", want, names)
		}
	}
	if !strings.Contains(stdout.String(), "exactness: passed") {
		t.Errorf("stdout lacks the verdict:\n%s", stdout.String())
	}
	for _, f := range []string{"report.md", "latency.svg"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
}

// An external target that does not answer ends at once with a partial
// report, not a hang.
func TestUnreachableTarget(t *testing.T) {
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	start := time.Now()
	code := run(ctx, []string{"-target", "external", "-nats-url", "nats://127.0.0.1:1", "-redis-url", "redis://127.0.0.1:1/0", "-duration", "2s", "-out", out}, &stdout, &stderr, noEnv)
	if code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("took %v to give up", d)
	}
	r := readReport(t, out)
	if r.Complete || len(r.Incomplete) == 0 || !strings.Contains(r.Incomplete[0], "cannot reach NATS at nats://127.0.0.1:1") {
		t.Errorf("report: complete %v, incomplete %q", r.Complete, r.Incomplete)
	}
	if !strings.Contains(stderr.String(), "INCOMPLETE") {
		t.Errorf("stderr does not say the run is incomplete:\n%s", stderr.String())
	}
}
