package registry

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRefusesToStartWithoutAKey(t *testing.T) {
	e := newEnv(t, miniBackend)
	_, err := Start(t.Context(), e.config(), Deps{NATS: e.nc, Redis: e.b.rdb})
	if !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "registry.keys") {
		t.Errorf("Start without keys: %v, want ErrNoKey naming registry.keys", err)
	}
	_, err = Start(t.Context(), e.config("CHANGE-ME-registry-key"), Deps{NATS: e.nc, Redis: e.b.rdb})
	if err == nil || !strings.Contains(err.Error(), "placeholder") {
		t.Errorf("Start with the placeholder key: %v, want a refusal", err)
	}
}

func TestRedisDownIs503(t *testing.T) {
	e := newEnv(t, miniBackend)
	cfg := e.config(testKey)
	cfg.NATS.RequestTimeout = 500 * time.Millisecond
	e.start(cfg, nil)
	e.b.breakIt()
	for _, call := range []func() error{
		func() error { _, err := e.client.Register(t.Context(), media("m", "")); return err },
		func() error { _, err := e.client.Find(t.Context(), ""); return err },
	} {
		if serr := serviceError(call()); serr == nil || serr.Status != 503 {
			t.Errorf("with Redis down: %v, want a 503", serr)
		}
	}
}

// A find is served from memory until a change event (from any replica)
// or find_cache drops it.
func TestFindCache(t *testing.T) {
	e := newEnv(t, miniBackend)
	cfg := e.config(testKey)
	cfg.Registry.FindCache = 10 * time.Second
	a := e.start(cfg, nil)
	b := e.start(cfg, nil)
	ctx := t.Context()
	find := func(r *Registry) int {
		t.Helper()
		insts, _, _, err := r.live(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(insts)
	}
	if n := find(a) + find(b); n != 0 {
		t.Fatalf("%d instances at start", n)
	}
	hits := testutil.ToFloat64(a.metrics.finds.WithLabelValues("hit"))
	if _, err := a.findReply(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := a.findReply(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(a.metrics.finds.WithLabelValues("hit")) - hits; got != 1 {
		t.Errorf("%v cache hits, want 1", got)
	}
	// b registers: its change event reaches a, whose cache drops.
	if _, _, err := b.register(ctx, media("m-1", "")); err != nil {
		t.Fatal(err)
	}
	b.publish(events.ChangeAppeared, "media", "m-1", 1, nil)
	deadline := time.Now().Add(2 * time.Second)
	for find(a) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("a change event did not drop the other replica's cache")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBuildFindReply(t *testing.T) {
	got := BuildFindReply([]events.Instance{
		{Name: "a", ID: "1", Endpoints: []string{"x", "y"}, PublicURL: "https://one"},
		{Name: "a", ID: "2", Endpoints: []string{"x"}, PublicURL: "https://one"},
		{Name: "b", ID: "3", Endpoints: []string{"y", "z"}, PublicURL: "https://two"},
		{Name: "b", ID: "4", Endpoints: []string{"w"}},
	}, "")
	if len(got.Instances) != 4 || got.URLMap["x"] != "https://one" || got.URLMap["z"] != "https://two" || len(got.URLMap) != 2 {
		t.Errorf("url_map %v", got.URLMap)
	}
	if c := got.Conflicts["y"]; len(c) != 2 || c[0] != "https://one" || c[1] != "https://two" || len(got.Conflicts) != 1 {
		t.Errorf("conflicts %v", got.Conflicts)
	}
}
