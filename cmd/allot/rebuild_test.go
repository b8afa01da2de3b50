package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/services/meter"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// meterStack is a meter on an embedded NATS and a miniredis, with the
// environment that points the CLI at them.
type meterStack struct {
	env   map[string]string
	mr    *miniredis.Miniredis
	nc    *nats.Conn
	js    jetstream.JetStream
	meter *meter.Meter
}

func startMeterStack(t *testing.T) *meterStack {
	t.Helper()
	url := startNATS(t)
	mr := miniredis.RunT(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	cfg := meter.DefaultConfig()
	cfg.Streams.Memory = true
	cfg.Streams.MaxBytes, cfg.Streams.DeadMaxBytes, cfg.Streams.NotifyMaxBytes = 64<<20, 16<<20, 16<<20
	m, err := meter.Start(t.Context(), cfg, meter.Deps{NATS: nc, Redis: rdb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Stop(context.Background()) })
	js, _ := jetstream.New(nc)
	s := &meterStack{env: map[string]string{"NATS_URL": url, "REDIS_URL": "redis://" + mr.Addr() + "/0"}, mr: mr, nc: nc, js: js, meter: m}
	pub, err := events.NewPublisher(nc, events.PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		for _, uid := range []string{"u-1", "u-2"} {
			e := events.NewUsage(uid, "photo_daily_total", 1)
			e.ID = fmt.Sprintf("%s-%d", uid, i)
			if _, err := pub.Publish(t.Context(), e); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.waitApplied(t)
	return s
}

// waitApplied waits until the meter has acked every event of the stream.
func (s *meterStack) waitApplied(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		st, _ := s.js.Stream(t.Context(), "USAGE")
		c, err := s.js.Consumer(t.Context(), "USAGE", "meter")
		if err != nil || st == nil {
			continue
		}
		info, _ := c.Info(t.Context())
		if info != nil && info.AckFloor.Stream >= st.CachedInfo().State.LastSeq && info.NumAckPending == 0 {
			return
		}
	}
	t.Fatal("the meter did not apply the events within 10s")
}

func TestRebuildCommand(t *testing.T) {
	s := startMeterStack(t)
	grant := "allot:{u-1}:g:photo_daily_total"

	r := runCLI(t, s.env, "", "rebuild", "-dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, "Redis holds exactly what the stream rebuilds") || !strings.Contains(r.stdout, "10 applied") {
		t.Fatalf("dry run on an exact state: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "rebuild: seq 10 of 10 (100.0%)") {
		t.Errorf("no progress line on stderr: %q", r.stderr)
	}

	s.mr.HSet(grant, "u", "3")
	r = runCLI(t, s.env, "", "rebuild", "-dry-run")
	if r.code != 1 || !regexp.MustCompile(`u-1\s+grant\s+photo_daily_total\s+used\s+3\s+5`).MatchString(r.stdout) || !strings.Contains(r.stderr, "1 difference between") {
		t.Errorf("dry run on a tampered state: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r = runCLI(t, s.env, "", "rebuild", "-dry-run", "-uid", "u-2"); r.code != 0 {
		t.Errorf("dry run of an untouched uid: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// The meter runs: replacing its state is refused.
	if r = runCLI(t, s.env, "", "rebuild"); r.code != 2 || !strings.Contains(r.stderr, "stop the meters first") {
		t.Errorf("rebuild under a running meter: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := s.meter.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	s.mr.FlushAll()
	r = runCLI(t, s.env, "", "rebuild")
	if r.code != 0 || !strings.Contains(r.stdout, "10 applied, 0 duplicates") {
		t.Fatalf("rebuild: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got := s.mr.HGet(grant, "u"); got != "5" {
		t.Errorf("u-1 used %q after the rebuild, want 5", got)
	}
	if r = runCLI(t, s.env, "", "rebuild", "-dry-run"); r.code != 0 {
		t.Errorf("dry run after the rebuild: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

func TestRebuildCommandBadInput(t *testing.T) {
	nc := startNATS(t)
	mr := miniredis.RunT(t)
	env := map[string]string{"NATS_URL": nc, "REDIS_URL": "redis://" + mr.Addr() + "/0"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"bad from", env, []string{"-from", "yesterday"}, 2, `-from "yesterday": want an RFC 3339 time`},
		{"future from", env, []string{"-from", "2999-01-01T00:00:00Z"}, 2, "in the future"},
		{"negative duration", env, []string{"-from", "-3h"}, 2, "must be > 0"},
		{"bad uid", env, []string{"-uid", "u 1"}, 2, "-uid"},
		{"stray argument", env, []string{"now"}, 2, `unexpected argument "now"`},
		{"unknown flag", env, []string{"-fast"}, 2, "flag provided but not defined"},
		{"no stream", env, []string{"-dry-run"}, 2, "has no USAGE stream"},
		{"only what", env, []string{"-only", "notifier"}, 2, `-only "notifier": want meter or ratelimit`},
		{"dry run of the rate limiter", env, []string{"-only", "ratelimit", "-dry-run"}, 2, "-dry-run audits the meter's state only"},
		{"unreachable Redis", map[string]string{"NATS_URL": nc, "REDIS_URL": "redis://127.0.0.1:1/0"}, []string{"-timeout", "1s"}, 2, "cannot reach Redis"},
		{"unreachable NATS", map[string]string{"NATS_URL": "nats://127.0.0.1:1", "REDIS_URL": env["REDIS_URL"]}, []string{"-timeout", "1s"}, 2, "cannot reach NATS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, tc.env, "", append([]string{"rebuild"}, tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, want %d; stderr %q, want %q", r.code, tc.code, r.stderr, tc.want)
			}
		})
	}
	if r := runCLI(t, nil, "", "rebuild", "-h"); r.code != 0 || !strings.Contains(r.stderr, "-dry-run") {
		t.Errorf("help: exit %d\n%s", r.code, r.stderr)
	}
}

// FuzzParseFrom: -from never panics, and what it accepts is never after
// now.
func FuzzParseFrom(f *testing.F) {
	for _, s := range []string{"", "36h", "-3h", "0s", "2026-11-01T00:00:00Z", "2999-01-01T00:00:00Z", "yesterday", "1e9h"} {
		f.Add(s)
	}
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseFrom(s, now)
		if err == nil && got.After(now) {
			t.Errorf("parseFrom(%q) = %v, after now", s, got)
		}
	})
}

// The rate limiter's windows of hits: rebuilt alone (-only ratelimit)
// with meters running, counting only what they lack, and after the meter
// by default.
func TestRebuildCommandRateLimit(t *testing.T) {
	s := startMeterStack(t)
	pub, err := events.NewPublisher(s.nc, events.PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if _, err := pub.Publish(t.Context(), events.NewUsage("u-1", "api_calls_total", float64(i))); err != nil {
			t.Fatal(err)
		}
	}
	s.waitApplied(t)
	conf := t.TempDir() + "/allot.yaml"
	if err := os.WriteFile(conf, []byte("ratelimit:\n  services:\n    api: {limit: 10, interval: 1h, metric: api_calls_total}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	window := func() string {
		t.Helper()
		for _, k := range s.mr.Keys() {
			if strings.HasPrefix(k, "allot:{u-1}:rl:api:") {
				return s.mr.HGet(k, "n")
			}
		}
		return ""
	}

	r := runCLI(t, s.env, "", "rebuild", "-only", "ratelimit", "-config", conf)
	if r.code != 0 || !strings.Contains(r.stdout, "hits: 3 counted, 0 counted before") || !strings.Contains(r.stdout, "10 counted by no service") {
		t.Fatalf("rebuild -only ratelimit: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "rebuild (rate limiter): seq 13 of 13 (100.0%)") {
		t.Errorf("no progress line on stderr: %q", r.stderr)
	}
	if got := window(); got != "6" {
		t.Errorf("u-1's window of api holds %q, want 6", got)
	}
	if seq := s.mr.HGet("allot:ratelimit:epoch", "seq"); seq != "13" {
		t.Errorf("epoch marker seq %q, want 13", seq)
	}
	// Again: every hit is there, nothing counts twice.
	r = runCLI(t, s.env, "", "rebuild", "-only", "ratelimit", "-config", conf)
	if r.code != 0 || !strings.Contains(r.stdout, "hits: 0 counted, 3 counted before") || window() != "6" {
		t.Errorf("rebuild run again: exit %d, window %s\n%s%s", r.code, window(), r.stdout, r.stderr)
	}
	if r = runCLI(t, s.env, "", "rebuild", "-only", "ratelimit"); r.code != 2 || !strings.Contains(r.stderr, "nothing to rebuild") {
		t.Errorf("without a service counting hits: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := s.meter.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	s.mr.FlushAll()
	r = runCLI(t, s.env, "", "rebuild", "-config", conf)
	if r.code != 0 || !strings.Contains(r.stdout, "13 applied") || !strings.Contains(r.stdout, "hits: 3 counted") || window() != "6" {
		t.Errorf("rebuild of both: exit %d, window %s\n%s%s", r.code, window(), r.stdout, r.stderr)
	}
	r = runCLI(t, s.env, "", "rebuild", "-only", "meter", "-config", conf)
	if r.code != 0 || strings.Contains(r.stdout, "rate limiter") {
		t.Errorf("rebuild -only meter: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
