package registry

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/google/go-cmp/cmp"
)

// The registry watch (pkg/events.RegistryWatch) against a real registry:
// it cannot be tested in pkg/events, which the registry imports.

// watch starts a watch of name on a client of its own connection.
func (e *env) watch(name string) *events.RegistryWatch {
	e.t.Helper()
	c, err := events.NewClient(e.connect(), events.ClientOptions{Timeout: 2 * time.Second, Log: testLog()})
	if err != nil {
		e.t.Fatal(err)
	}
	w, err := c.WatchRegistry(e.t.Context(), name, events.WatchOptions{Resync: -1})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = w.Close() })
	return w
}

// ids returns the ids a watch answers with, and whether it answered from
// memory.
func ids(t *testing.T, w *events.RegistryWatch) ([]string, bool) {
	t.Helper()
	before := w.Stats().Fallbacks
	rep, err := w.Find(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, in := range rep.Instances {
		out = append(out, in.ID)
	}
	return out, w.Stats().Fallbacks == before
}

// eventually polls w until it answers want from memory, failing after
// two seconds (a bound on a broken watch, not a measurement: the
// benchmarks measure).
func eventually(t *testing.T, w *events.RegistryWatch, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		got, local := ids(t, w)
		if local && slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch answers %v (from memory: %v), want %v; stats %+v", got, local, want, w.Stats())
		}
		time.Sleep(time.Millisecond)
	}
}

func testWatchFollowsChanges(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	r := e.start(e.config(testKey), nil)
	ctx := t.Context()
	m1 := media("m1", "https://a.example", "albums")
	if _, err := e.client.Register(ctx, m1); err != nil {
		t.Fatal(err)
	}
	w := e.watch("media")
	eventually(t, w, "m1")

	m2 := media("m2", "https://b.example", "photos")
	if _, err := e.client.Register(ctx, m2); err != nil {
		t.Fatal(err)
	}
	eventually(t, w, "m1", "m2")
	m1.PublicURL = "https://c.example" // a change
	if _, err := e.client.Register(ctx, m1); err != nil {
		t.Fatal(err)
	}
	if err := e.client.Deregister(ctx, "media", "m2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, w, "m1")
	rep, err := w.Find(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"albums": "https://c.example"}, rep.URLMap); diff != "" {
		t.Errorf("url map after the change (-want +got):\n%s", diff)
	}
	// Back after a deregister: an appearance, not a silent heartbeat.
	if _, err := e.client.Register(ctx, m2); err != nil {
		t.Fatal(err)
	}
	eventually(t, w, "m1", "m2")

	// m1 stops its heartbeats and expires; the reaper announces it.
	e.elapse(1500 * time.Millisecond)
	if _, err := e.client.Register(ctx, m2); err != nil { // m2's heartbeat
		t.Fatal(err)
	}
	e.elapse(1000 * time.Millisecond)
	if _, err := r.ReapOnce(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, w, "m2")

	// The watch's answer is the registry's, sequence included.
	local, err := w.Find(ctx)
	if err != nil {
		t.Fatal(err)
	}
	remote, err := e.client.Find(ctx, "media")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(remote, local); diff != "" {
		t.Errorf("watch vs registry (-registry +watch):\n%s", diff)
	}
	// The reaper's second announcement of the deregistered m2 came and
	// went; nothing forced a reload.
	if st := w.Stats(); st.Reloads != 1 || st.Gaps != 0 || st.Malformed != 0 || st.Fallbacks != 0 {
		t.Errorf("stats %+v: want one load, no gap, nothing malformed, no fallback", st)
	}
}

func testWatchReloadsOnAGap(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	e.start(e.config(testKey), nil)
	ctx := t.Context()
	if _, err := e.client.Register(ctx, media("m1", "")); err != nil {
		t.Fatal(err)
	}
	w := e.watch("media")
	eventually(t, w, "m1")
	seq := w.Stats().Seq
	// A change the watch never saw: m2 registered while the feed lost its
	// event, simulated by one that claims a later number.
	if _, err := e.client.Register(ctx, media("m2", "")); err != nil {
		t.Fatal(err)
	}
	eventually(t, w, "m1", "m2")
	skipped := events.RegistryChange{Name: "media", ID: "ghost", Change: events.ChangeAppeared,
		Instance: &events.Instance{Name: "media", ID: "ghost"}, Seq: seq + 5}
	data, err := json.Marshal(skipped)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.nc.Publish(events.DefaultSubjects().RegistryChanged("media"), data); err != nil {
		t.Fatal(err)
	}
	// The watch reloads and holds the registry's state: no ghost.
	deadline := time.Now().Add(2 * time.Second)
	for w.Stats().Reloads < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	eventually(t, w, "m1", "m2")
	if st := w.Stats(); st.Gaps != 1 || st.Reloads != 2 {
		t.Errorf("stats %+v: want one gap and a reload", st)
	}

	// A change whose event never went out: the number moves on in Redis
	// (as when a publish fails) and the next real change reveals it.
	if err := e.b.rdb.HIncrBy(ctx, keys.New(e.b.prefix).RegistrySeq(), "media", 1).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.client.Deregister(ctx, "media", "m1"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(2 * time.Second)
	for w.Stats().Reloads < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	eventually(t, w, "m2")
	if st := w.Stats(); st.Gaps != 2 || st.Reloads != 3 {
		t.Errorf("stats %+v: want a second gap and reload", st)
	}
}

func testWatchMalformedChange(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	e.start(e.config(testKey), nil)
	ctx := t.Context()
	if _, err := e.client.Register(ctx, media("m1", "")); err != nil {
		t.Fatal(err)
	}
	w := e.watch("media")
	eventually(t, w, "m1")
	for i, bad := range []string{
		``, `{`, `null`, `[]`, `"x"`,
		`{"name":"media","id":"m9","change":"appeared","seq":99}`,                                        // no instance
		`{"name":"media","id":"m9","change":"appeared","instance":{"name":"other","id":"m9"},"seq":2}`,   // someone else's
		`{"name":"other","id":"m1","change":"expired","seq":2}`,                                          // wrong name
		`{"name":"media","id":"","change":"expired","seq":2}`,                                            // no id
		`{"name":"media","id":"m1","change":"vanished","seq":2}`,                                         // unknown change
		`{"name":"media","id":"m1","change":"expired","seq":-1}`,                                         // not a sequence
		`{"name":"media","id":"m1","change":"expired","seq":"2"}`,                                        // nor this
		`{"name":"media","id":"m1","change":"expired","instance":{"name":"media","id":"m1","port":"x"}}`, // bad instance
	} {
		before := w.Stats()
		if err := e.nc.Publish(events.DefaultSubjects().RegistryChanged("media"), []byte(bad)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for w.Stats().Malformed == before.Malformed && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if st := w.Stats(); st.Malformed != before.Malformed+1 {
			t.Fatalf("%d: %q: malformed %d, want %d", i, bad, st.Malformed, before.Malformed+1)
		}
		eventually(t, w, "m1") // reloaded, still right
	}
	if st := w.Stats(); st.Reloads < 2 {
		t.Errorf("stats %+v: malformed changes caused no reload", st)
	}
}

// testWatchKilledInstanceLeavesEveryCache: an instance stops its
// heartbeats, expires and is reaped; three watches (each on its own
// connection) drop it. The delay is logged; BenchmarkWatchRemoval
// measures its percentiles.
func testWatchKilledInstanceLeavesEveryCache(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	r := e.start(e.config(testKey), nil)
	ctx := t.Context()
	for _, id := range []string{"victim", "keeper"} {
		if _, err := e.client.Register(ctx, media(id, "")); err != nil {
			t.Fatal(err)
		}
	}
	ws := []*events.RegistryWatch{e.watch("media"), e.watch("media"), e.watch("media")}
	for _, w := range ws {
		eventually(t, w, "keeper", "victim")
	}
	e.elapse(1500 * time.Millisecond)
	if _, err := e.client.Register(ctx, media("keeper", "")); err != nil {
		t.Fatal(err)
	}
	e.elapse(1000 * time.Millisecond)
	start := time.Now()
	// On the real Redis the registry's own reaper (real time) may have
	// been first; either way the victim is gone from the registry now.
	if _, err := r.ReapOnce(ctx); err != nil {
		t.Fatal(err)
	}
	for i, w := range ws {
		eventually(t, w, "keeper")
		t.Logf("watch %d dropped the victim %v after the reap", i, time.Since(start))
	}
}

func TestWatchBadName(t *testing.T) {
	e := newEnv(t, miniBackend)
	for _, name := range []string{"", "a.b", "a b", "*", ">"} {
		if _, err := e.client.WatchRegistry(context.Background(), name, events.WatchOptions{}); err == nil {
			t.Errorf("watch of %q: no error", name)
		}
	}
}

func TestWatchFallsBackWhenCold(t *testing.T) {
	e := newEnv(t, miniBackend)
	// No registry yet: the first load fails and finds ask the registry.
	c, err := events.NewClient(e.connect(), events.ClientOptions{Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.WatchRegistry(t.Context(), "media", events.WatchOptions{Resync: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	if _, err := w.Find(t.Context()); err == nil {
		t.Fatal("find with no registry: no error")
	}
	e.start(e.config(testKey), nil)
	if _, err := e.client.Register(t.Context(), media("m1", "")); err != nil {
		t.Fatal(err)
	}
	eventually(t, w, "m1") // the background reload caught up
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, local := ids(t, w); local {
		t.Error("a closed watch answers from memory")
	}
}
