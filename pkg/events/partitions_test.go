package events

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// A partitioned usage stream stores an event published on usage.<uid> as
// usage.<p>.<uid>, every event of a uid in one partition; the filters
// select the whole stream, one uid and one partition; and ParseUsage reads
// the uid back from the stored subject.
func TestPartitionedUsageStream(t *testing.T) {
	nc, js := startJetStream(t)
	ctx := t.Context()
	subj, cfg := DefaultSubjects(), DefaultStreamConfig()
	js.DeleteStream(ctx, cfg.Usage)
	cfg.Partitions = 4
	if err := EnsureStreams(ctx, js, subj, cfg); err != nil {
		t.Fatalf("EnsureStreams: %v", err)
	}
	pub, err := NewPublisher(nc, PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	const uids, each = 40, 3
	for i := range uids * each {
		if _, err := pub.Publish(ctx, NewUsage(fmt.Sprintf("u-%d", i%uids), "m", 1)); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := js.Stream(ctx, cfg.Usage)
	partitionOf := map[string]string{}
	used := map[string]bool{}
	for seq := uint64(1); seq <= uids*each; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		uid, err := subj.ParseUsage(m.Subject)
		if err != nil {
			t.Fatalf("ParseUsage(%q): %v", m.Subject, err)
		}
		p := strings.Split(m.Subject, ".")[1]
		if prev, ok := partitionOf[uid]; ok && prev != p {
			t.Errorf("%s stored in partitions %s and %s", uid, prev, p)
		}
		partitionOf[uid], used[p] = p, true
	}
	if len(used) != cfg.Partitions {
		t.Errorf("40 uids used partitions %v, want all %d", used, cfg.Partitions)
	}
	pending := func(filter string) uint64 {
		t.Helper()
		c, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{FilterSubject: filter, AckPolicy: jetstream.AckExplicitPolicy})
		if err != nil {
			t.Fatalf("consumer on %s: %v", filter, err)
		}
		defer st.DeleteConsumer(ctx, c.CachedInfo().Name)
		return c.CachedInfo().NumPending
	}
	if n := pending(cfg.UsageFilter(subj)); n != uids*each {
		t.Errorf("UsageFilter %s selects %d, want %d", cfg.UsageFilter(subj), n, uids*each)
	}
	if n := pending(cfg.UsageFilterFor(subj, "u-7")); n != each {
		t.Errorf("UsageFilterFor(u-7) selects %d, want %d", n, each)
	}
	var sum uint64
	for p := range cfg.Partitions {
		sum += pending(cfg.PartitionFilter(subj, p))
	}
	if sum != uids*each {
		t.Errorf("the partitions' filters select %d together, want %d", sum, uids*each)
	}
	if n := pending(subj.UsageStreamSubject()); n != 0 {
		t.Errorf("the unpartitioned filter still selects %d stored events", n)
	}
}

// The subject mapping of a usage stream that holds events is never
// changed under it: its events would fall out of every consumer's filter.
// An empty stream can change.
func TestEnsureStreamsKeepsPartitionsOfAStreamWithEvents(t *testing.T) {
	nc, js := startJetStream(t)
	ctx := t.Context()
	subj, cfg := DefaultSubjects(), DefaultStreamConfig()
	cfg.Partitions = 8
	if err := EnsureStreams(ctx, js, subj, cfg); err != nil {
		t.Fatalf("partitioning an empty stream: %v", err)
	}
	pub, err := NewPublisher(nc, PublisherOptions{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, NewUsage("u-1", "m", 1)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{0, 4} {
		cfg.Partitions = p
		err := EnsureStreams(ctx, js, subj, cfg)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "streams.partitions") || !strings.Contains(err.Error(), "holds 1 events") {
			t.Errorf("partitions 8 -> %d on a stream with an event = %v, want a refusal", p, err)
		}
	}
	st, _ := js.Stream(ctx, cfg.Usage)
	if got := TransformOf(st.CachedInfo().Config.SubjectTransform); !strings.Contains(got, "partition(8,1)") {
		t.Errorf("the stream's mapping is %s after the refusals, want the 8 partitions", got)
	}
	cfg.Partitions = 8
	if err := EnsureStreams(ctx, js, subj, cfg); err != nil {
		t.Errorf("the same partitions again: %v", err)
	}
}

func TestParsePartitionedUsage(t *testing.T) {
	s := DefaultSubjects()
	for _, tc := range []struct{ subject, want string }{
		{"usage.0.u-42", "u-42"},
		{"usage.15.u-42", "u-42"},
		{"usage.1023.a", "a"},
		{"usage.deadline", "deadline"},
	} {
		if got, err := s.ParseUsage(tc.subject); err != nil || got != tc.want {
			t.Errorf("ParseUsage(%q) = %q, %v; want %q", tc.subject, got, err, tc.want)
		}
	}
	for subject, want := range map[string]int{"usage.0.u": 0, "usage.15.u-42": 15, "usage.1023.a": 1023, "usage.u-1": -1, "usage.01.u": -1, "usage.x.u": -1, "meter.1.u": -1} {
		p, ok := s.UsagePartition(subject)
		if want < 0 && ok || want >= 0 && (!ok || p != want) {
			t.Errorf("UsagePartition(%q) = %d, %v; want %d", subject, p, ok, want)
		}
	}
	for _, bad := range []string{"usage.01.u", "usage.-1.u", "usage.12345.u", "usage.x.u", "usage.1.", "usage.1.dead", "usage.1.a.b"} {
		if got, err := s.ParseUsage(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseUsage(%q) = %q, %v; want ErrInvalid", bad, got, err)
		}
	}
}

// Whatever the subject, ParseUsage returns a valid uid or ErrInvalid, and
// a uid it returns reads back from both stored forms.
func FuzzParseUsage(f *testing.F) {
	for _, seed := range []string{"usage.u-1", "usage.3.u-1", "usage.03.u", "usage.dead", "usage.1.dead", "usage..", "usage.9999.x", "meter.x"} {
		f.Add(seed)
	}
	s := DefaultSubjects()
	f.Fuzz(func(t *testing.T, subject string) {
		uid, err := s.ParseUsage(subject)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseUsage(%q) error %v is not ErrInvalid", subject, err)
			}
			return
		}
		if verr := s.ValidateUID("uid", uid); verr != nil {
			t.Fatalf("ParseUsage(%q) = %q, not a valid uid: %v", subject, uid, verr)
		}
		for _, stored := range []string{s.UsageFor(uid), s.Usage + ".7." + uid} {
			if got, err := s.ParseUsage(stored); err != nil || got != uid {
				t.Fatalf("ParseUsage(%q) = %q, %v; want %q", stored, got, err, uid)
			}
		}
	})
}
