package events

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestAsyncPublisherAcksEverything(t *testing.T) {
	nc, js := startJetStream(t)
	pub, err := NewAsyncPublisher(nc, AsyncOptions{Window: 64})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const n, dups = 2000, 200
	var wg sync.WaitGroup
	for w := range 4 { // concurrent callers
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				ev := NewUsage(fmt.Sprintf("u-%d", i%10), "api_calls_total", 1)
				ev.ID = fmt.Sprintf("ev-%d", i%(n-dups)) // the last 200 repeat earlier ids
				if err := pub.Publish(ctx, ev); err != nil {
					t.Errorf("Publish: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	failed, err := pub.Close(ctx)
	if err != nil || len(failed) != 0 {
		t.Fatalf("Close = %d failures, %v", len(failed), err)
	}
	st := pub.Stats()
	want := AsyncStats{Published: n, Acked: n, Duplicates: dups}
	st.Retries = 0
	if diff := cmp.Diff(want, st); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if got := streamMsgs(t, js, "USAGE"); got != n-dups {
		t.Errorf("USAGE holds %d, want %d", got, n-dups)
	}
	if err := pub.Publish(ctx, NewUsage("u", "m", 1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
}

// With the default retries, events published while their stream has no
// leader to answer (here: no stream at all for two and a half seconds, as
// a stream between leaders on a NATS cluster answers) are all stored once
// it is back: resends back off up to 2s and outlast an election.
func TestAsyncPublisherOutlastsAStreamAway(t *testing.T) {
	s := startServer(t, "", 0)
	nc := connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	pub, err := NewAsyncPublisher(nc, AsyncOptions{Window: 64})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		ev := NewUsage("a", "m", 1)
		ev.ID = fmt.Sprintf("id-%02d", i)
		if err := pub.Publish(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2500 * time.Millisecond)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "USAGE", Subjects: []string{"usage.*"}}); err != nil {
		t.Fatal(err)
	}
	failed, err := pub.Flush(t.Context())
	if err != nil || len(failed) != 0 {
		t.Fatalf("Flush: %d failed (%v)", len(failed), err)
	}
	if got := streamMsgs(t, js, "USAGE"); got != 20 {
		t.Errorf("USAGE holds %d, want 20", got)
	}
	if st := pub.Stats(); st.Retries == 0 {
		t.Errorf("no resends counted: %+v", st)
	}
	if _, err := pub.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func TestAsyncRetryWaits(t *testing.T) {
	o := AsyncOptions{}.withDefaults()
	var got []time.Duration
	var total time.Duration
	for n := 1; n <= o.MaxRetries; n++ {
		got = append(got, o.retryWait(n))
		total += o.retryWait(n)
	}
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second}
	for range 9 {
		want = append(want, 2*time.Second)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("waits (-want +got):\n%s", diff)
	}
	if total < 19*time.Second {
		t.Errorf("the default resends wait %v in all, shorter than an election may take", total)
	}
	if w := (AsyncOptions{RetryWait: 3 * time.Second}).withDefaults(); w.retryWait(1) != 3*time.Second || w.retryWait(4) != 3*time.Second {
		t.Errorf("a RetryWait above the default RetryMaxWait: %v, %v", w.retryWait(1), w.retryWait(4))
	}
}

// Flush returns exactly the events that found no stream; the others land.
func TestAsyncPublisherReturnsExactlyTheFailures(t *testing.T) {
	s := startServer(t, "", 0)
	nc := connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "USAGE", Subjects: []string{"usage.a", "usage.b"}}); err != nil {
		t.Fatal(err)
	}
	pub, err := NewAsyncPublisher(nc, AsyncOptions{Window: 16, MaxRetries: 1, RetryWait: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var wantFailed []string
	for i := range 60 {
		uid := []string{"a", "b", "c"}[i%3]
		ev := NewUsage(uid, "m", 1)
		ev.ID = fmt.Sprintf("id-%02d", i)
		if uid == "c" {
			wantFailed = append(wantFailed, ev.ID)
		}
		if err := pub.Publish(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	failed, err := pub.Flush(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var gotFailed []string
	for _, f := range failed {
		if !errors.Is(f.Err, ErrNoStream) {
			t.Errorf("failure %s: %v, want ErrNoStream", f.Event.ID, f.Err)
		}
		gotFailed = append(gotFailed, f.Event.ID)
	}
	sort.Strings(gotFailed)
	if diff := cmp.Diff(wantFailed, gotFailed); diff != "" {
		t.Errorf("failed ids (-want +got):\n%s", diff)
	}
	if got := streamMsgs(t, js, "USAGE"); got != 40 {
		t.Errorf("USAGE holds %d, want 40", got)
	}
	if again, _ := pub.Flush(t.Context()); len(again) != 0 {
		t.Errorf("second Flush returned %d old failures", len(again))
	}
	if _, err := pub.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// A server that restarts mid-stream loses nothing: every event is stored
// exactly once or returned as failed.
func TestAsyncPublisherSurvivesServerRestart(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir, 0)
	port := s.Addr().(*net.TCPAddr).Port
	nc := connect(t, s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	js, _ := jetstream.New(nc)
	if err := EnsureStreams(t.Context(), js, DefaultSubjects(), DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	pub, err := NewAsyncPublisher(nc, AsyncOptions{Window: 128, AckTimeout: time.Second, MaxRetries: 10, RetryWait: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			ev := NewUsage("u-1", "m", 1)
			ev.ID = fmt.Sprintf("ev-%05d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := pub.Publish(ctx, ev)
			cancel()
			if err != nil {
				t.Errorf("Publish %d: %v", i, err)
				return
			}
		}
	}()
	// Restart the server on the same port and store while events flow.
	time.Sleep(20 * time.Millisecond)
	s.Shutdown()
	s.WaitForShutdown()
	startServer(t, dir, port)
	<-done
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	failed, err := pub.Close(ctx)
	if err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Logf("failed %d, stats %+v", len(failed), pub.Stats())

	seen := map[string]int{}
	for _, f := range failed {
		seen[f.Event.ID] += 0 // known, possibly stored too
	}
	cons, err := js.OrderedConsumer(ctx, "USAGE", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	stored := streamMsgs(t, js, "USAGE")
	for range stored {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("reading USAGE: %v", err)
		}
		seen[m.Headers().Get(MsgIDHeader)]++
	}
	for i := range n {
		id := fmt.Sprintf("ev-%05d", i)
		count, ok := seen[id]
		switch {
		case !ok:
			t.Errorf("%s was neither stored nor reported as failed", id)
		case count > 1:
			t.Errorf("%s stored %d times", id, count)
		}
	}
}
