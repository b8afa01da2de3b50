package events

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
)

func TestEnsureStreamsIdempotent(t *testing.T) {
	_, js := startJetStream(t) // creates them once
	ctx := t.Context()
	cfg := DefaultStreamConfig()
	if err := EnsureStreams(ctx, js, DefaultSubjects(), cfg); err != nil {
		t.Fatalf("second EnsureStreams: %v", err)
	}
	for _, want := range []jetstream.StreamConfig{
		{Name: "USAGE", Subjects: []string{"usage.*"}, MaxAge: 35 * 24 * time.Hour, Duplicates: 2 * time.Minute, MaxBytes: 8 << 30, Discard: jetstream.DiscardNew},
		{Name: "USAGE_DEAD", Subjects: []string{"usage.dead.*"}, MaxAge: 35 * 24 * time.Hour, Duplicates: 2 * time.Minute, MaxBytes: 1 << 30, Discard: jetstream.DiscardNew},
		{Name: "NOTIFY", Subjects: []string{"notify.usage.*", "notify.confirm.*"}, MaxAge: 7 * 24 * time.Hour, Duplicates: 2 * time.Minute, MaxBytes: 1 << 30, Discard: jetstream.DiscardNew},
	} {
		st, err := js.Stream(ctx, want.Name)
		if err != nil {
			t.Fatalf("stream %s: %v", want.Name, err)
		}
		got := st.CachedInfo().Config
		if got.Retention != jetstream.LimitsPolicy || got.Storage != jetstream.FileStorage {
			t.Errorf("%s: retention %v storage %v, want limits on file", want.Name, got.Retention, got.Storage)
		}
		gotFields := jetstream.StreamConfig{Name: got.Name, Subjects: got.Subjects, MaxAge: got.MaxAge, Duplicates: got.Duplicates, MaxBytes: got.MaxBytes, Discard: got.Discard}
		if diff := cmp.Diff(want, gotFields); diff != "" {
			t.Errorf("%s (-want +got):\n%s", want.Name, diff)
		}
	}
	// A changed setting is applied to the existing stream.
	cfg.MaxAge = 48 * time.Hour
	if err := EnsureStreams(ctx, js, DefaultSubjects(), cfg); err != nil {
		t.Fatalf("EnsureStreams with a new max age: %v", err)
	}
	st, _ := js.Stream(ctx, "USAGE")
	if got := st.CachedInfo().Config.MaxAge; got != 48*time.Hour {
		t.Errorf("max age after update = %v, want 48h", got)
	}
}

// A full usage stream refuses the next event loudly, the publisher gets
// the error, and keeps every event it holds: a stream made before the cap
// (unlimited, dropping the oldest) is updated to it.
func TestFullUsageStreamRefusesPublishes(t *testing.T) {
	nc, js := startJetStream(t)
	ctx := t.Context()
	cfg := DefaultStreamConfig()
	old := cfg.UsageStreamConfig(DefaultSubjects())
	old.MaxBytes, old.Discard = -1, jetstream.DiscardOld
	if _, err := js.UpdateStream(ctx, old); err != nil {
		t.Fatalf("making the old stream: %v", err)
	}
	cfg.MaxBytes = 2048
	if err := EnsureStreams(ctx, js, DefaultSubjects(), cfg); err != nil {
		t.Fatalf("EnsureStreams: %v", err)
	}
	pub, err := NewPublisher(nc, PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	var stored int
	for i := range 100 {
		_, err = pub.Publish(ctx, NewUsage("u1", "m", float64(i+1)))
		if err != nil {
			break
		}
		stored++
	}
	if err == nil || !strings.Contains(err.Error(), "maximum bytes exceeded") {
		t.Fatalf("publishing into a full stream = %v, want the server's maximum bytes exceeded", err)
	}
	st, _ := js.Stream(ctx, "USAGE")
	info, _ := st.Info(ctx)
	if info.State.Msgs != uint64(stored) || info.State.FirstSeq != 1 {
		t.Errorf("stream holds %d from seq %d, want all %d stored, from 1", info.State.Msgs, info.State.FirstSeq, stored)
	}
}

func TestEnsureStreamsBadConfig(t *testing.T) {
	_, js := startJetStream(t)
	for _, tc := range []struct {
		name  string
		mod   func(*StreamConfig)
		field string
	}{
		{"no name", func(c *StreamConfig) { c.Usage = "" }, "streams.usage"},
		{"same names", func(c *StreamConfig) { c.Dead = c.Usage }, "streams"},
		{"no notify name", func(c *StreamConfig) { c.Notify = "" }, "streams.notify"},
		{"no duplicate window", func(c *StreamConfig) { c.Duplicates = 0 }, "streams.duplicates"},
		{"window over age", func(c *StreamConfig) { c.MaxAge = time.Minute }, "streams.duplicates"},
		{"replicas", func(c *StreamConfig) { c.Replicas = 0 }, "streams.replicas"},
		{"max bytes", func(c *StreamConfig) { c.MaxBytes = 0 }, "streams.max_bytes"},
		{"dead max bytes", func(c *StreamConfig) { c.DeadMaxBytes = -2 }, "streams.dead_max_bytes"},
		{"notify max bytes", func(c *StreamConfig) { c.NotifyMaxBytes = 0 }, "streams.notify_max_bytes"},
		{"one partition", func(c *StreamConfig) { c.Partitions = 1 }, "streams.partitions"},
		{"negative partitions", func(c *StreamConfig) { c.Partitions = -2 }, "streams.partitions"},
		{"too many partitions", func(c *StreamConfig) { c.Partitions = MaxPartitions + 1 }, "streams.partitions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultStreamConfig()
			tc.mod(&cfg)
			err := EnsureStreams(t.Context(), js, DefaultSubjects(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.field+":") {
				t.Errorf("EnsureStreams = %v, want an error naming %s", err, tc.field)
			}
		})
	}
}

func TestPublish(t *testing.T) {
	nc, js := startJetStream(t)
	pub, err := NewPublisher(nc, PublisherOptions{Source: "photos"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	ev := NewUsage("u-42", "photo_daily_total", 1)
	ack, err := pub.Publish(ctx, ev)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if ack.Stream != "USAGE" || ack.Duplicate {
		t.Errorf("ack = %+v, want a new message in USAGE", ack)
	}
	st, _ := js.Stream(ctx, "USAGE")
	raw, err := st.GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Subject != "usage.u-42" {
		t.Errorf("subject = %q, want usage.u-42", raw.Subject)
	}
	got, err := Decode(raw.Data, 0)
	if err != nil {
		t.Fatalf("stored event does not decode: %v", err)
	}
	if got.ID == "" || raw.Header.Get(MsgIDHeader) != got.ID {
		t.Errorf("Nats-Msg-Id %q, event id %q: want equal and set", raw.Header.Get(MsgIDHeader), got.ID)
	}
	if got.Source != "photos" || got.Time.IsZero() || got.Data.Metric != "photo_daily_total" {
		t.Errorf("stored event = %+v", got)
	}

	// The same id again is dropped by the stream.
	ev.ID = got.ID
	ack, err = pub.Publish(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if !ack.Duplicate {
		t.Errorf("republished id %s not reported as a duplicate", ev.ID)
	}
	if n := streamMsgs(t, js, "USAGE"); n != 1 {
		t.Errorf("USAGE holds %d messages, want 1", n)
	}
}

func TestPublishGeneratesSortableIDs(t *testing.T) {
	var prev string
	for range 100 {
		ev := NewUsage("u", "m", 1)
		if _, err := Prepare(&ev, PublisherOptions{}); err != nil {
			t.Fatal(err)
		}
		if ev.ID <= prev {
			t.Fatalf("id %s does not sort after %s", ev.ID, prev)
		}
		prev = ev.ID
	}
}

func TestPublishRefusesBadEventsBeforeTheWire(t *testing.T) {
	nc, js := startJetStream(t)
	pub, err := NewPublisher(nc, PublisherOptions{MaxEventBytes: 512})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		ev    Event
		field string
	}{
		{"bad uid", NewUsage("u.42", "m", 1), "subject"},
		{"bad metric", NewUsage("u", "", 1), "data.metric"},
		{"wrong type", Event{Type: "other", Subject: "u", Data: Usage{Metric: "m"}}, "type"},
		{"oversized", Event{Subject: "u", Data: Usage{Metric: "m", Labels: map[string]string{"x": strings.Repeat("y", 250), "z": strings.Repeat("y", 250)}}}, "event"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pub.Publish(t.Context(), tc.ev)
			var v *ValidationError
			if !errors.As(err, &v) || v.Field != tc.field {
				t.Errorf("Publish = %v, want a validation error on %s", err, tc.field)
			}
		})
	}
	if n := streamMsgs(t, js, "USAGE"); n != 0 {
		t.Errorf("USAGE holds %d messages after refused publishes, want 0", n)
	}
}

func TestPublishWithoutStreamSaysHow(t *testing.T) {
	s := startServer(t, "", 0)
	nc := connect(t, s.ClientURL())
	pub, err := NewPublisher(nc, PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = pub.Publish(t.Context(), NewUsage("u-1", "m", 1))
	if !errors.Is(err, ErrNoStream) || !strings.Contains(err.Error(), "allot streams") {
		t.Errorf("Publish without streams = %v, want ErrNoStream with a hint", err)
	}
}

func TestDeadLettersStayOutOfTheUsageStream(t *testing.T) {
	nc, js := startJetStream(t)
	if _, err := js.Publish(t.Context(), DefaultSubjects().DeadFor("u-1"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := streamMsgs(t, js, "USAGE"); got != 0 {
		t.Errorf("USAGE captured a dead letter")
	}
	if got := streamMsgs(t, js, "USAGE_DEAD"); got != 1 {
		t.Errorf("USAGE_DEAD holds %d, want 1", got)
	}
}

// An event prepared once is sent as it was encoded then: publishing it
// neither validates nor encodes it again. What the caller does to the
// event afterwards (here, a label changed in the map the two share) does
// not reach the wire, and a Prepared no Prepare made is refused.
func TestPublishPrepared(t *testing.T) {
	nc, js := startJetStream(t)
	ctx := t.Context()
	sync, err := NewPublisher(nc, PublisherOptions{Source: "photos"})
	if err != nil {
		t.Fatal(err)
	}
	async, err := NewAsyncPublisher(nc, AsyncOptions{PublisherOptions: PublisherOptions{Source: "photos"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		prepare func(Event) (Prepared, error)
		publish func(Prepared) error
	}{
		{"Publisher", sync.Prepare, func(pe Prepared) error { _, err := sync.PublishPrepared(ctx, pe); return err }},
		{"AsyncPublisher", async.Prepare, func(pe Prepared) error {
			if err := async.PublishPrepared(ctx, pe); err != nil {
				return err
			}
			failed, err := async.Flush(ctx)
			if len(failed) > 0 {
				return failed[0].Err
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uid := "u-" + strings.ToLower(tc.name)
			ev := NewUsage(uid, "photo_daily_total", 1)
			ev.Data.Labels = map[string]string{"region": "eu"}
			pe, err := tc.prepare(ev)
			if err != nil {
				t.Fatal(err)
			}
			if got := pe.Event(); got.ID == "" || got.Source != "photos" || got.Time.IsZero() || got.Type != UsageType {
				t.Errorf("prepared event = %+v, want its attributes filled in", got)
			}
			ev.Data.Labels["region"] = "us" // after Prepare: too late for the wire
			if err := tc.publish(pe); err != nil {
				t.Fatal(err)
			}
			stream, err := js.Stream(ctx, "USAGE")
			if err != nil {
				t.Fatal(err)
			}
			msg, err := stream.GetLastMsgForSubject(ctx, DefaultSubjects().UsageFor(uid))
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(msg.Data, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != pe.Event().ID || got.Data.Labels["region"] != "eu" || msg.Header.Get(MsgIDHeader) != got.ID {
				t.Errorf("stored %+v (id header %q); want the event as prepared, id %s, region eu", got, msg.Header.Get(MsgIDHeader), pe.Event().ID)
			}
			if err := tc.publish(Prepared{}); err == nil || !strings.Contains(err.Error(), "not prepared") {
				t.Errorf("a zero Prepared: %v, want a refusal", err)
			}
		})
	}
	if _, err := async.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
