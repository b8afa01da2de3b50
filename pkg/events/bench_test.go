package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// benchTarget connects to ALLOT_BENCH_NATS_URL (a real server, as the
// README's figures use) or else to an embedded server, and creates
// streams under a unique prefix that are deleted afterwards.
func benchTarget(b *testing.B) (*nats.Conn, jetstream.JetStream, Subjects) {
	b.Helper()
	url := os.Getenv("ALLOT_BENCH_NATS_URL")
	if url == "" {
		url = startServer(b, "", 0).ClientURL()
	}
	nc := connect(b, url)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	tag := hex.EncodeToString(r[:])
	subj := DefaultSubjects()
	subj.Usage, subj.Dead = "bench"+tag+".usage", "bench"+tag+".dead"
	cfg := DefaultStreamConfig()
	cfg.Usage, cfg.Dead, cfg.MaxAge, cfg.DeadMaxAge = "BENCH_"+tag, "BENCH_DEAD_"+tag, time.Hour, time.Hour
	ctx := context.Background()
	if err := EnsureStreams(ctx, js, subj, cfg); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = js.DeleteStream(ctx, cfg.Usage)
		_ = js.DeleteStream(ctx, cfg.Dead)
	})
	return nc, js, subj
}

// BenchmarkAsyncPublisher publishes the same number of events through a
// plain nats.go PublishMsgAsync loop with message ids (the baseline) and
// through AsyncPublisher, alternating in chunks so both see the same
// machine, and reports each rate and their ratio.
func BenchmarkAsyncPublisher(b *testing.B) {
	nc, js, subj := benchTarget(b)
	pub, err := NewAsyncPublisher(nc, AsyncOptions{PublisherOptions: PublisherOptions{Subjects: subj, Source: "bench"}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	payload := sampleEvent().AppendJSON(nil)
	rawSubject := subj.UsageFor("raw")
	const chunk = 20000
	var rawTime, allotTime time.Duration
	var seq int
	b.ResetTimer()
	for done := 0; done < b.N; done += chunk {
		n := min(chunk, b.N-done)

		start := time.Now()
		for range n {
			seq++
			msg := &nats.Msg{Subject: rawSubject, Data: payload, Header: nats.Header{MsgIDHeader: []string{"raw-" + strconv.Itoa(seq)}}}
			if _, err := js.PublishMsgAsync(msg); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			b.Fatal("raw acks did not complete in 30s")
		}
		rawTime += time.Since(start)

		start = time.Now()
		for range n {
			if err := pub.Publish(ctx, NewUsage("u-bench", "api_calls_total", 1)); err != nil {
				b.Fatal(err)
			}
		}
		failed, err := pub.Flush(ctx)
		if err != nil || len(failed) > 0 {
			b.Fatalf("flush: %d failed, %v", len(failed), err)
		}
		allotTime += time.Since(start)
	}
	b.StopTimer()
	if _, err := pub.Close(ctx); err != nil {
		b.Fatal(err)
	}
	rawRate := float64(b.N) / rawTime.Seconds()
	allotRate := float64(b.N) / allotTime.Seconds()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(rawRate, "raw_ev/s")
	b.ReportMetric(allotRate, "allot_ev/s")
	b.ReportMetric(allotRate/rawRate, "ratio")
}

// BenchmarkPrepare is the publisher's own work per event: fill in the id
// and time, validate, encode.
func BenchmarkPrepare(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		ev := NewUsage("u-bench", "api_calls_total", 1)
		if _, err := Prepare(&ev, PublisherOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublishLine is what "allot publish -file" does with one line
// of JSON Lines: decode the draft, fill it in, validate and encode it
// (Prepare: the id traces a failure to its line), and send it through an
// AsyncPublisher. prepare-twice is how it did it before Prepared, handing
// Publish the filled-in event, which prepared it again; prepare-once
// sends what Prepare made.
func BenchmarkPublishLine(b *testing.B) {
	line := []byte(`{"subject":"u-bench","data":{"metric":"api_calls_total","value":1,"labels":{"resource":"photo"}}}`)
	for _, bc := range []struct {
		name    string
		publish func(context.Context, *AsyncPublisher, Prepared) error
	}{
		{"prepare-twice", func(ctx context.Context, p *AsyncPublisher, pe Prepared) error { return p.Publish(ctx, pe.Event()) }},
		{"prepare-once", func(ctx context.Context, p *AsyncPublisher, pe Prepared) error { return p.PublishPrepared(ctx, pe) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			nc, _, subj := benchTarget(b)
			pub, err := NewAsyncPublisher(nc, AsyncOptions{PublisherOptions: PublisherOptions{Subjects: subj, Source: "bench"}})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				ev, err := DecodeDraft(line, 0)
				if err != nil {
					b.Fatal(err)
				}
				pe, err := pub.Prepare(ev)
				if err != nil {
					b.Fatal(err)
				}
				if err := bc.publish(ctx, pub, pe); err != nil {
					b.Fatal(err)
				}
			}
			if failed, err := pub.Close(ctx); err != nil || len(failed) > 0 {
				b.Fatalf("close: %d failed, %v", len(failed), err)
			}
		})
	}
}

func BenchmarkNewID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewID(); err != nil {
			b.Fatal(err)
		}
	}
}
