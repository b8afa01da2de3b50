package registry

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/mutex"
	"github.com/allot/allot/services/registry/internal/crypt"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// behaviours run on miniredis here and on the real Redis under the
// integration tag.
var behaviours = []struct {
	name string
	fn   func(t *testing.T, bf backendFunc)
}{
	{"RegisterFindAndChanges", testRegisterFindAndChanges},
	{"BadInput", testBadInput},
	{"DuplicateID", testDuplicateID},
	{"ExpiryIsReapedAndAnnounced", testExpiry},
	{"DeregisterRemovesAtOnce", testDeregister},
	{"UndecryptableEntriesAreSkipped", testUndecryptable},
	{"KeyRotation", testKeyRotation},
	{"OneReaper", testOneReaper},
	{"RefreshReapsAndRebuilds", testRefresh},
	{"WatchFollowsChanges", testWatchFollowsChanges},
	{"WatchReloadsOnAGap", testWatchReloadsOnAGap},
	{"WatchMalformedChange", testWatchMalformedChange},
	{"WatchKilledInstanceLeavesEveryCache", testWatchKilledInstanceLeavesEveryCache},
}

func TestBehaviour(t *testing.T) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) { b.fn(t, miniBackend) })
	}
}

// ignoreCreated leaves Instance.Created out of a comparison; the tests
// that care check it themselves.
var ignoreCreated = cmpopts.IgnoreFields(events.Instance{}, "Created")

func media(id, url string, endpoints ...string) events.RegisterRequest {
	return events.RegisterRequest{Name: "media", ID: id, Endpoints: endpoints, IPv4: "10.0.0.1", Port: 8080, PublicURL: url}
}

func instance(r events.RegisterRequest) events.Instance {
	if r.Endpoints == nil {
		r.Endpoints = []string{}
	}
	return events.Instance{Name: r.Name, ID: r.ID, Endpoints: r.Endpoints, IPv4: r.IPv4, Port: r.Port, PublicURL: r.PublicURL}
}

func testRegisterFindAndChanges(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	e.start(e.config(testKey), nil)
	ch := e.changes()
	ctx := t.Context()

	m1 := media("m-1", "https://a.example", "albums", "photos")
	reply, err := e.client.Register(ctx, m1)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(events.RegisterReply{OK: true, TTLS: 2}, reply); diff != "" {
		t.Errorf("register reply (-want +got):\n%s", diff)
	}
	appeared := next(t, ch)
	if diff := cmp.Diff(events.RegistryChange{Name: "media", ID: "m-1", Change: "appeared", Instance: new(instance(m1)), Seq: 1}, appeared, ignoreCreated); diff != "" {
		t.Errorf("appeared (-want +got):\n%s", diff)
	}
	created := appeared.Instance.Created
	// The heartbeat: the same registration again changes nothing.
	e.elapse(500 * time.Millisecond)
	if _, err := e.client.Register(ctx, m1); err != nil {
		t.Fatal(err)
	}
	none(t, ch)
	m1.Port = 9090
	if _, err := e.client.Register(ctx, m1); err != nil {
		t.Fatal(err)
	}
	c := next(t, ch)
	if c.Change != "changed" || c.Instance.Port != 9090 {
		t.Errorf("changed event %+v", c)
	}
	// Created stays the first registration's time through heartbeats and
	// changes, and finds carry it.
	if c.Instance.Created.IsZero() || !c.Instance.Created.Equal(created) {
		t.Errorf("created after a change %v, want %v", c.Instance.Created, created)
	}
	if f, err := e.client.Find(ctx, "media"); err != nil || len(f.Instances) != 1 || !f.Instances[0].Created.Equal(created) {
		t.Errorf("find: %+v %v, want created %v", f.Instances, err, created)
	}

	m2 := media("m-2", "https://b.example", "photos", "videos")
	meter := events.RegisterRequest{Name: "meter", ID: "pod-1", IPv4: "10.0.0.2", Port: 8080}
	for _, r := range []events.RegisterRequest{m2, meter} {
		if _, err := e.client.Register(ctx, r); err != nil {
			t.Fatal(err)
		}
		next(t, ch)
	}
	for _, tc := range []struct {
		name string
		want events.FindReply
	}{
		{"", events.FindReply{
			Instances: []events.Instance{instance(m1), instance(m2), instance(meter)},
			URLMap:    map[string]string{"albums": "https://a.example", "videos": "https://b.example"},
			Conflicts: map[string][]string{"photos": {"https://a.example", "https://b.example"}},
		}},
		{"meter", events.FindReply{Instances: []events.Instance{instance(meter)}, URLMap: map[string]string{}, Seq: 1}},
		{"nobody", events.FindReply{Instances: []events.Instance{}, URLMap: map[string]string{}}},
	} {
		t.Run("find "+tc.name, func(t *testing.T) {
			got, err := e.client.Find(ctx, tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, ignoreCreated); diff != "" {
				t.Errorf("find %q (-want +got):\n%s", tc.name, diff)
			}
		})
	}
}

func testBadInput(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	e.start(e.config(testKey), nil)
	endpoints := make([]string, events.MaxEndpoints+1)
	for i := range endpoints {
		endpoints[i] = fmt.Sprint("r", i)
	}
	for _, tc := range []struct {
		name, subject, body string
		field               string
	}{
		{"name with a dot", "registry.register", `{"name":"a.b","id":"x","ipv4":"10.0.0.1","port":1}`, "name"},
		{"missing name", "registry.register", `{"id":"x","ipv4":"10.0.0.1","port":1}`, "name"},
		{"id with a space", "registry.register", `{"name":"a","id":"x y","ipv4":"10.0.0.1","port":1}`, "id"},
		{"id too long", "registry.register", `{"name":"a","id":"` + strings.Repeat("x", 129) + `","ipv4":"10.0.0.1","port":1}`, "id"},
		{"missing ipv4", "registry.register", `{"name":"a","id":"x","port":1}`, "ipv4"},
		{"ipv6", "registry.register", `{"name":"a","id":"x","ipv4":"::1","port":1}`, "ipv4"},
		{"port 0", "registry.register", `{"name":"a","id":"x","ipv4":"10.0.0.1","port":0}`, "port"},
		{"port 65536", "registry.register", `{"name":"a","id":"x","ipv4":"10.0.0.1","port":65536}`, "port"},
		{"port a string", "registry.register", `{"name":"a","id":"x","ipv4":"10.0.0.1","port":"80"}`, "port"},
		{"endpoints too many", "registry.register", fmt.Sprintf(`{"name":"a","id":"x","ipv4":"10.0.0.1","port":1,"endpoints":["%s"]}`, strings.Join(endpoints, `","`)), "endpoints"},
		{"endpoint not a token", "registry.register", `{"name":"a","id":"x","ipv4":"10.0.0.1","port":1,"endpoints":["a/b"]}`, "endpoints"},
		{"public_url not http", "registry.register", `{"name":"a","id":"x","ipv4":"10.0.0.1","port":1,"public_url":"ftp://x"}`, "public_url"},
		{"unknown field", "registry.register", `{"name":"a","id":"x","ipv4":"10.0.0.1","port":1,"colour":"red"}`, "colour"},
		{"not JSON", "registry.register", `{"name":`, "request"},
		{"find: name too long", "registry.find." + strings.Repeat("n", 129), ``, "name"},
		{"find: unknown field", "registry.find", `{"name":"x"}`, "name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, err := e.nc.Request(tc.subject, []byte(tc.body), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			serr := events.DecodeServiceError(msg)
			if serr == nil {
				t.Fatalf("no error reply: %s", msg.Data)
			}
			if diff := cmp.Diff([]any{400, tc.field}, []any{serr.Status, serr.Field}); diff != "" {
				t.Errorf("status and field (-want +got):\n%s\nmessage: %s", diff, serr.Message)
			}
		})
	}
	got, err := e.client.Find(t.Context(), "")
	if err != nil || len(got.Instances) != 0 {
		t.Errorf("after bad input: %+v, %v", got, err)
	}
}

func testDuplicateID(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	e.start(e.config(testKey), nil)
	ctx := t.Context()
	if _, err := e.client.Register(ctx, media("pod-1", "")); err != nil {
		t.Fatal(err)
	}
	_, err := e.client.Register(ctx, events.RegisterRequest{Name: "meter", ID: "pod-1", IPv4: "10.0.0.1", Port: 1})
	serr := serviceError(err)
	if serr == nil || serr.Status != 409 || serr.Field != "id" || !strings.Contains(serr.Message, `"media"`) {
		t.Fatalf("duplicate id: %v, want a 409 naming the id and media", err)
	}
	// Once media's registration has run out, the id is free.
	e.elapse(2100 * time.Millisecond)
	if _, err := e.client.Register(ctx, events.RegisterRequest{Name: "meter", ID: "pod-1", IPv4: "10.0.0.1", Port: 1}); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
}

func testExpiry(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	r := e.start(e.config(testKey), nil)
	ch := e.changes()
	ctx := t.Context()
	live, gone := media("live", "https://a.example", "albums"), media("gone", "https://b.example", "photos")
	for _, req := range []events.RegisterRequest{live, gone} {
		if _, err := e.client.Register(ctx, req); err != nil {
			t.Fatal(err)
		}
		next(t, ch)
	}
	e.elapse(1500 * time.Millisecond)
	if _, err := e.client.Register(ctx, live); err != nil { // live's heartbeat
		t.Fatal(err)
	}
	e.elapse(700 * time.Millisecond)
	if _, err := r.ReapOnce(ctx); err != nil {
		t.Fatal(err)
	}
	want := events.RegistryChange{Name: "media", ID: "gone", Change: "expired", Instance: new(instance(gone)), Seq: 3}
	if diff := cmp.Diff(want, next(t, ch), ignoreCreated); diff != "" {
		t.Errorf("expired (-want +got):\n%s", diff)
	}
	none(t, ch)
	got, err := e.client.Find(ctx, "media")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]events.Instance{instance(live)}, got.Instances, ignoreCreated); diff != "" {
		t.Errorf("after expiry (-want +got):\n%s", diff)
	}
	k := keys.New(e.b.prefix)
	if n, _ := e.b.rdb.HLen(ctx, k.RegistryIDs()).Result(); n != 1 {
		t.Errorf("ids index holds %d ids, want 1", n)
	}
	if n, _ := e.b.rdb.ZCard(ctx, k.RegistryExpiry()).Result(); n != 1 {
		t.Errorf("expiry set holds %d members, want 1", n)
	}
	// Reaping again finds nothing.
	if n, err := r.ReapOnce(ctx); err != nil || n != 0 {
		t.Errorf("second reap: %d, %v", n, err)
	}
}

func testUndecryptable(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	reg := prometheus.NewRegistry()
	r := e.start(e.config(testKey), reg)
	other := e.start(e.config("another-clusters-key-42"), nil)
	ctx := t.Context()
	// Both registries serve the same NATS here, so each registers directly.
	if _, _, err := r.register(ctx, media("ours", "")); err != nil {
		t.Fatal(err)
	}
	// Another cluster on the same Redis registers through its own registry.
	if _, _, err := other.register(ctx, media("theirs", "")); err != nil {
		t.Fatal(err)
	}
	// And someone writes garbage where an entry would be.
	k := keys.New(e.b.prefix)
	if err := e.b.rdb.ZAdd(ctx, k.RegistryExpiry(), redisZ(e.clock.Now().Add(time.Minute), "media:junk")).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.b.rdb.HSet(ctx, k.RegistryLast(), "media:junk", "\x01not a sealed entry at all, no").Err(); err != nil {
		t.Fatal(err)
	}
	rep, err := r.findReply(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	got := rep.plain
	if !strings.Contains(string(got), `"ours"`) || strings.Contains(string(got), `"theirs"`) || strings.Contains(string(got), "junk") {
		t.Errorf("find: %s", got)
	}
	for reason, want := range map[string]float64{"unknown_key": 1, "corrupt": 1} {
		if n := testutil.ToFloat64(r.metrics.undecryptable.WithLabelValues("find", reason)); n != want {
			t.Errorf("undecryptable %s = %v, want %v", reason, n, want)
		}
	}
	// Our reaper leaves the other cluster's expired entry to its owner
	// (stopped here, so that it does not reap it first).
	if err := other.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	e.elapse(2100 * time.Millisecond)
	if _, err := r.ReapOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if s, err := e.b.rdb.ZScore(ctx, k.RegistryExpiry(), "media:theirs").Result(); err != nil || s == 0 {
		t.Errorf("the other cluster's entry was reaped by ours: %v %v", s, err)
	}
}

func testKeyRotation(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	ctx := t.Context()
	old := e.start(e.config(testKey), nil)
	if _, _, err := old.register(ctx, media("before", "")); err != nil {
		t.Fatal(err)
	}
	rotated := e.start(e.config("the-new-key-0123456789", testKey), nil)
	if _, _, err := rotated.register(ctx, media("after", "")); err != nil {
		t.Fatal(err)
	}
	var names []string
	insts, _, _, err := rotated.live(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range insts {
		names = append(names, in.ID)
	}
	if diff := cmp.Diff([]string{"after", "before"}, names); diff != "" {
		t.Errorf("rotated registry reads (-want +got):\n%s", diff)
	}
}

func testOneReaper(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	cfg := e.config(testKey)
	cfg.Registry.ReapInterval = 50 * time.Millisecond
	regs := []*prometheus.Registry{prometheus.NewRegistry(), prometheus.NewRegistry(), prometheus.NewRegistry()}
	var rs []*Registry
	for _, reg := range regs {
		rs = append(rs, e.start(cfg, reg))
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		leaders := 0
		for _, r := range rs {
			leaders += int(testutil.ToFloat64(r.metrics.leader))
		}
		if leaders == 1 {
			break
		}
		if leaders > 1 || time.Now().After(deadline) {
			t.Fatalf("%d reapers lead, want 1", leaders)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The leader stops: another takes over.
	var leader *Registry
	var rest []*Registry
	for _, r := range rs {
		if leader == nil && testutil.ToFloat64(r.metrics.leader) == 1 {
			leader = r
			continue
		}
		rest = append(rest, r)
	}
	if err := leader.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(2 * time.Second)
	for testutil.ToFloat64(rest[0].metrics.leader)+testutil.ToFloat64(rest[1].metrics.leader) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("no reaper took over")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testDeregister(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	cfg := e.config(testKey)
	cfg.Registry.FindCache = 0
	// This test reaps by hand: a reaper tick of this registry's own
	// between the deregister and the find would number a change in
	// between (seen on the NATS cluster), so another replica holds the
	// reaper's lock.
	holdReaperLock(t, e, cfg)
	r := e.start(cfg, nil)
	ch := e.changes()
	ctx := t.Context()
	stay, leave := media("stay", "https://a.example", "albums"), media("leave", "https://b.example", "photos")
	for _, req := range []events.RegisterRequest{stay, leave} {
		if _, err := e.client.Register(ctx, req); err != nil {
			t.Fatal(err)
		}
		next(t, ch)
	}
	if err := e.client.Deregister(ctx, "media", "leave"); err != nil {
		t.Fatal(err)
	}
	// Announced at once, numbered after the two appearances.
	if c := next(t, ch); c.ID != "leave" || c.Change != events.ChangeDeregistered || c.Seq != 3 {
		t.Errorf("change on deregister = %+v", c)
	}
	got, err := e.client.Find(ctx, "media")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]events.Instance{instance(stay)}, got.Instances, ignoreCreated); diff != "" {
		t.Errorf("right after deregister (-want +got):\n%s", diff)
	}
	if got.Seq != 3 {
		t.Errorf("find seq after deregister = %d, want 3", got.Seq)
	}
	// The reaper announces it and cleans up, as for an expiry.
	if _, err := r.ReapOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if c := next(t, ch); c.ID != "leave" || c.Change != "expired" || c.Seq != 4 {
		t.Errorf("change after deregister = %+v", c)
	}
	// Deregistering what is not there is fine; bad input is a 400.
	if err := e.client.Deregister(ctx, "media", "never"); err != nil {
		t.Errorf("deregister of an unknown id: %v", err)
	}
	msg, err := e.connect().Request(cfg.Subjects.Deregister(), []byte(`{"name":"media"}`), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if serr := events.DecodeServiceError(msg); serr == nil || serr.Status != 400 || serr.Field != "id" {
		t.Errorf("deregister without an id = %+v", serr)
	}
}

func testRefresh(t *testing.T, bf backendFunc) {
	e := newEnv(t, bf)
	cfg := e.config(testKey)
	// Another replica holds the reaper's lock, so the refresh below is the
	// only reaper: this registry's own would run at its reap_interval,
	// which equals the TTL here, and on a slow machine reaped "gone" first.
	holdReaperLock(t, e, cfg)
	e.start(cfg, nil)
	ch := e.changes()
	ctx := t.Context()
	a, b := media("a", "https://a.example", "albums", "photos"), media("b", "https://b.example", "photos")
	gone := media("gone", "https://c.example", "videos")
	for _, req := range []events.RegisterRequest{a, b, gone} {
		if _, err := e.client.Register(ctx, req); err != nil {
			t.Fatal(err)
		}
		next(t, ch)
	}
	if _, err := e.client.Find(ctx, ""); err != nil { // fills the cache
		t.Fatal(err)
	}
	e.elapse(1500 * time.Millisecond)
	for _, req := range []events.RegisterRequest{a, b} {
		if _, err := e.client.Register(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	e.elapse(700 * time.Millisecond)
	got, err := e.client.RefreshRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(events.RefreshReply{Reaped: 1, Instances: 2, Resources: 1, Conflicts: 1}, got); diff != "" {
		t.Errorf("refresh (-want +got):\n%s", diff)
	}
	if c := next(t, ch); c.Change != "expired" || c.ID != "gone" {
		t.Errorf("change %+v, want gone expired", c)
	}
	find, err := e.client.Find(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(find.Instances) != 2 || find.URLMap["albums"] != "https://a.example" || find.URLMap["videos"] != "" {
		t.Errorf("find after refresh: %+v", find)
	}
	// Again: nothing to reap.
	if got, err := e.client.RefreshRegistry(ctx); err != nil || got.Reaped != 0 || got.Instances != 2 {
		t.Errorf("second refresh: %+v %v", got, err)
	}
	// Bad input: a body with fields.
	msg, err := e.nc.Request(events.DefaultSubjects().RegistryRefresh(), []byte(`{"now":1}`), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "400" {
		t.Errorf("bad refresh body: code %q, body %s", code, msg.Data)
	}
}

// holdReaperLock takes the reaper's lock for cfg's registry, as another
// replica would, until the test ends.
func holdReaperLock(t *testing.T, e *env, cfg Config) {
	t.Helper()
	sealer, err := crypt.New(string(cfg.Registry.Keys[0]))
	if err != nil {
		t.Fatal(err)
	}
	locker, err := mutex.New(e.b.rdb, mutex.Options{Prefix: cfg.Redis.KeyPrefix})
	if err != nil {
		t.Fatal(err)
	}
	r := &Registry{sealer: sealer}
	l, err := locker.TryAcquire(t.Context(), r.lockName(), mutex.LockOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Release(context.Background()) })
}
