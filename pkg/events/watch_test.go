package events

import (
	"encoding/json"
	"log/slog"
	"slices"
	"testing"

	"github.com/nats-io/nats.go"
)

// The watch's state machine without NATS or a registry; the registry's
// tests (services/registry/watch_test.go) run it against the real thing.

func bareWatch() *RegistryWatch {
	return &RegistryWatch{name: "media", log: slog.New(slog.DiscardHandler), insts: map[string]Instance{},
		kick: make(chan struct{}, 1)}
}

func changeMsg(t testing.TB, ch RegistryChange) *nats.Msg {
	t.Helper()
	data, err := json.Marshal(ch)
	if err != nil {
		t.Fatal(err)
	}
	return &nats.Msg{Data: data}
}

func appeared(id string, seq uint64) RegistryChange {
	return RegistryChange{Name: "media", ID: id, Change: ChangeAppeared, Instance: &Instance{Name: "media", ID: id}, Seq: seq}
}

func (w *RegistryWatch) ids() []string {
	r := w.reply.Load()
	if r == nil {
		return nil
	}
	out := []string{}
	for _, in := range r.Instances {
		out = append(out, in.ID)
	}
	return out
}

func TestWatchAppliesInOrderAndReloadsOnAGap(t *testing.T) {
	w := bareWatch()
	w.ready = true
	w.publishLocked()
	w.onChange(changeMsg(t, appeared("a", 1)))
	w.onChange(changeMsg(t, appeared("b", 2)))
	w.onChange(changeMsg(t, appeared("a", 1))) // again: already applied
	w.onChange(changeMsg(t, RegistryChange{Name: "media", ID: "a", Change: ChangeDeregistered, Seq: 3}))
	if got := w.ids(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("ids %v, want [b]", got)
	}
	if len(w.kick) != 0 {
		t.Fatal("a reload was asked for with no gap")
	}
	w.onChange(changeMsg(t, appeared("c", 5))) // 4 is missing
	if w.reply.Load() != nil || len(w.kick) != 1 || w.gaps.Load() != 1 {
		t.Fatalf("after a gap: answering %v, kick %d, gaps %d; want no answer and a reload", w.ids(), len(w.kick), w.gaps.Load())
	}
	// Unnumbered (an older registry): a gap too.
	w = bareWatch()
	w.ready = true
	w.onChange(changeMsg(t, appeared("a", 0)))
	if w.gaps.Load() != 1 || len(w.kick) != 1 {
		t.Fatal("an unnumbered change was applied")
	}
}

func TestWatchBuffersDuringALoad(t *testing.T) {
	w := bareWatch()
	w.loading = true
	// Out of order, and one (2) already in the load at seq 2.
	for _, seq := range []uint64{4, 2, 3} {
		w.onChange(changeMsg(t, appeared(string(rune('a'+seq)), seq)))
	}
	w.onChange(&nats.Msg{Data: []byte(`{`)}) // unreadable while loading: load again after
	if len(w.buffered) != 3 || !w.stale {
		t.Fatalf("buffered %d, stale %v", len(w.buffered), w.stale)
	}
	// A resync loads while current: changes are buffered and applied.
	w = bareWatch()
	w.ready, w.loading = true, true
	w.onChange(changeMsg(t, appeared("a", 1)))
	if got := w.ids(); len(w.buffered) != 1 || !slices.Equal(got, []string{"a"}) {
		t.Fatalf("during a resync: buffered %d, answering %v", len(w.buffered), got)
	}
}

// FuzzWatchChange: whatever arrives on the subject, the watch neither
// panics nor answers from memory after a change it could not apply.
func FuzzWatchChange(f *testing.F) {
	for _, s := range []string{
		`{"name":"media","id":"a","change":"appeared","instance":{"name":"media","id":"a"},"seq":1}`,
		`{"name":"media","id":"a","change":"expired","seq":1}`,
		`{"name":"media","id":"a","change":"deregistered","seq":2}`,
		`{"name":"media","id":"a","change":"appeared","seq":1}`,
		`{"name":"x","id":"a","change":"expired","seq":1}`,
		`null`, `{`, ``, `{"seq":18446744073709551615}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		w := bareWatch()
		w.ready = true
		w.publishLocked()
		w.onChange(&nats.Msg{Data: data})
		applied := w.applied.Load() == 1
		if applied != (w.reply.Load() != nil) {
			t.Fatalf("%q: applied %v but answering %v", data, applied, w.ids())
		}
		if !applied && len(w.kick) != 1 {
			t.Fatalf("%q: not applied and no reload asked for", data)
		}
	})
}
