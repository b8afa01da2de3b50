package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// streams -check changes nothing and exits 1, saying why, when a stream
// is missing or differs from the configuration; 0 when all are right.
func TestStreamsCheck(t *testing.T) {
	url := startNATS(t)
	env := map[string]string{"NATS_URL": url}

	r := runCLI(t, env, "", "streams", "-check")
	if r.code != 1 || !isOneLine(r.stderr) {
		t.Fatalf("-check without streams: %+v; want exit 1 and one line", r)
	}
	for _, want := range []string{"USAGE        missing\n", "USAGE_DEAD   missing\n", "NOTIFY       missing\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	want := "allot streams: USAGE is missing, USAGE_DEAD is missing, NOTIFY is missing on NATS " + url + " (from NATS_URL): run 'allot streams' to create or update them"
	if strings.TrimSpace(r.stderr) != want {
		t.Errorf("stderr = %q, want %q", r.stderr, want)
	}

	// One stream made by hand, with another max age and duplicate window.
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	sc := events.DefaultStreamConfig().UsageStreamConfig(events.DefaultSubjects())
	sc.MaxAge, sc.Duplicates = time.Hour, time.Minute
	if _, err := js.CreateStream(t.Context(), sc); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, env, "", "streams", "-check")
	wantDiff := fmt.Sprintf("differs from the configuration: max age is 1h0m0s, want %s; duplicate window is 1m0s, want 2m0s", events.DefaultStreamConfig().MaxAge)
	if r.code != 1 || !strings.Contains(r.stdout, wantDiff) || !strings.Contains(r.stderr, "USAGE differs from the configuration, USAGE_DEAD is missing, NOTIFY is missing on NATS") {
		t.Errorf("-check with a stream that differs: %+v; want exit 1 and %q", r, wantDiff)
	}
	if info, _ := js.Stream(t.Context(), "USAGE"); info.CachedInfo().Config.MaxAge != time.Hour {
		t.Error("-check changed the stream")
	}

	// Without -check the streams are made right, and -check then passes.
	if r := runCLI(t, env, "", "streams"); r.code != 0 || strings.Contains(r.stdout, "differs") {
		t.Fatalf("streams: %+v", r)
	}
	r = runCLI(t, env, "", "streams", "-check")
	if r.code != 0 || r.stderr != "" || strings.Count(r.stdout, "\n") != 3 {
		t.Errorf("-check of the right streams: %+v", r)
	}
}
