//go:build integration

package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// realNATS connects to the real NATS server (ALLOT_TEST_NATS_URL, default
// nats://127.0.0.1:4222). It skips when none answers, unless
// ALLOT_REQUIRE_INTEGRATION=1, as in CI.
func realNATS(t *testing.T) *nats.Conn {
	t.Helper()
	url := os.Getenv("ALLOT_TEST_NATS_URL")
	if url == "" {
		url = "nats://127.0.0.1:4222"
	}
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		if os.Getenv("ALLOT_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("real NATS at %s: %v", url, err)
		}
		t.Skipf("no real NATS at %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// uniqueStreams returns subjects and streams under a random prefix, so
// tests never touch a running allot's USAGE, and deletes them afterwards.
func uniqueStreams(t *testing.T, js jetstream.JetStream) (Subjects, StreamConfig) {
	t.Helper()
	var r [4]byte
	_, _ = rand.Read(r[:])
	tag := hex.EncodeToString(r[:])
	subj := DefaultSubjects()
	subj.Usage, subj.Dead = "it"+tag+".usage", "it"+tag+".usage.dead"
	cfg := DefaultStreamConfig()
	cfg.Usage, cfg.Dead, cfg.MaxAge, cfg.DeadMaxAge = "IT_USAGE_"+tag, "IT_DEAD_"+tag, time.Hour, time.Hour
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, cfg.Usage)
		_ = js.DeleteStream(ctx, cfg.Dead)
	})
	return subj, cfg
}

func TestIntegrationStreamsAndPublish(t *testing.T) {
	nc := realNATS(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	subj, cfg := uniqueStreams(t, js)
	for range 2 { // idempotent
		if err := EnsureStreams(ctx, js, subj, cfg); err != nil {
			t.Fatalf("EnsureStreams on the real server: %v", err)
		}
	}

	pub, err := NewPublisher(nc, PublisherOptions{Subjects: subj})
	if err != nil {
		t.Fatal(err)
	}
	ev := NewUsage("u-1", "photo_daily_total", 1)
	ev.ID = "it-1"
	if ack, err := pub.Publish(ctx, ev); err != nil || ack.Duplicate {
		t.Fatalf("Publish = %+v, %v", ack, err)
	}
	if ack, err := pub.Publish(ctx, ev); err != nil || !ack.Duplicate {
		t.Fatalf("republish = %+v, %v; want a duplicate", ack, err)
	}

	apub, err := NewAsyncPublisher(nc, AsyncOptions{PublisherOptions: PublisherOptions{Subjects: subj}, Window: 256})
	if err != nil {
		t.Fatal(err)
	}
	const n = 5000
	for i := range n {
		ev := NewUsage(fmt.Sprintf("u-%d", i%50), "api_calls_total", 1)
		ev.ID = fmt.Sprintf("it-async-%d", i%(n-100)) // 100 duplicates
		if err := apub.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	failed, err := apub.Close(ctx)
	if err != nil || len(failed) != 0 {
		t.Fatalf("Close = %d failed, %v", len(failed), err)
	}
	if got := streamMsgs(t, js, cfg.Usage); got != 1+n-100 {
		t.Errorf("stream holds %d, want %d", got, 1+n-100)
	}
	if st := apub.Stats(); st.Duplicates != 100 {
		t.Errorf("duplicates = %d, want 100", st.Duplicates)
	}
}
