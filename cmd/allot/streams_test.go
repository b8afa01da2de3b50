package main

import (
	"fmt"
	"os"
	"path/filepath"
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
	if r.code != 0 || r.stderr != "" || strings.Count(r.stdout, "max_deliver") != 0 || !strings.Contains(r.stdout, "USAGE/meter          not created yet") {
		t.Errorf("-check of the right streams: %+v", r)
	}

	// A stream cap and discard policy changed by hand, and a consumer made
	// with another max_deliver (an older allot made them unlimited).
	sc = events.DefaultStreamConfig().DeadStreamConfig(events.DefaultSubjects())
	sc.MaxBytes, sc.Discard = -1, jetstream.DiscardOld
	if _, err := js.UpdateStream(t.Context(), sc); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateOrUpdateConsumer(t.Context(), "USAGE", jetstream.ConsumerConfig{Durable: "meter", AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1}); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, env, "", "streams", "-check")
	for _, want := range []string{
		"differs from the configuration: discard is DiscardOld, want DiscardNew; max bytes is -1, want 1073741824",
		"USAGE/meter          max_deliver -1",
		"differs from the configuration: max_deliver is -1, want 500 (meter.max_deliver)",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	if r.code != 1 || !strings.Contains(r.stderr, "USAGE_DEAD differs from the configuration, consumer USAGE/meter differs from the configuration") {
		t.Errorf("-check with drift: %+v; want exit 1 naming both", r)
	}
	// Only the consumer differs: the fix is the service's restart.
	if r := runCLI(t, env, "", "streams"); r.code != 0 {
		t.Fatalf("streams: %+v", r)
	}
	r = runCLI(t, env, "", "streams", "-check")
	if r.code != 1 || !strings.Contains(r.stderr, "consumer USAGE/meter differs from the configuration") || !strings.Contains(r.stderr, "restart the services named") {
		t.Errorf("-check with a consumer that differs: %+v", r)
	}
}

// A partitioned usage stream: 'allot streams' shows how it stores events
// and the meter's consumer of each partition; -check with another
// partitions setting names the difference.
func TestStreamsPartitioned(t *testing.T) {
	url := startNATS(t)
	env := map[string]string{"NATS_URL": url}
	dir := t.TempDir()
	four, none := filepath.Join(dir, "four.yaml"), filepath.Join(dir, "none.yaml")
	if err := os.WriteFile(four, []byte("streams:\n  partitions: 4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(none, []byte("streams:\n  partitions: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, env, "", "streams", "-config", four)
	if r.code != 0 {
		t.Fatalf("streams with 4 partitions: %+v", r)
	}
	for _, want := range []string{"stored as usage.{{partition(4,1)}}.{{wildcard(1)}} (streams.partitions)", "USAGE/meter-0", "USAGE/meter-3"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	r = runCLI(t, env, "", "streams", "-check", "-config", none)
	if r.code != 1 || !strings.Contains(r.stdout, "subject mapping (streams.partitions) is usage.* -> usage.{{partition(4,1)}}.{{wildcard(1)}}, want none") {
		t.Errorf("-check with partitions 0 against 4: %+v", r)
	}
}
