package auth

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/services/auth/internal/apikey"
	"github.com/allot/allot/services/auth/internal/policy"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// stack is an embedded nats-server with the callout on and a running
// auth service on miniredis, with an admin key.
type stack struct {
	srv      clientURLer
	svc      *Service
	reg      *prometheus.Registry
	adminKey string
	clock    *testClock
}

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// clientURLer is a nats-server, embedded or a process of its own.
type clientURLer interface{ ClientURL() string }

func startStack(t *testing.T) *stack {
	t.Helper()
	s, sc, issuer := calloutServer(t)
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return startStackOn(t, s, sc, issuer, rdb, "allot:")
}

// startStackOn runs the auth service against the callout server s (whose
// blocks sc renders, signed by issuer) with keys in rdb under prefix.
func startStackOn(t testing.TB, s clientURLer, sc ServerConfig, issuer nkeys.KeyPair, rdb redis.UniversalClient, prefix string, tune ...func(*Config)) *stack {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(sc.AuthUser, sc.AuthPassword))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	sys, err := nats.Connect(s.ClientURL(), nats.UserInfo(sc.SysUser, sc.SysPassword))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Close)
	admin, _ := apikey.New()
	cfg, err := DefaultConfig()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := issuer.Seed()
	cfg.IssuerSeed, cfg.SysPassword = service.Secret(seed), service.Secret(sc.SysPassword)
	cfg.StaticKeys = []service.Secret{service.Secret("admin=" + admin.String())}
	for _, f := range tune {
		f(&cfg)
	}
	clock := &testClock{t: testenv.Now(t)}
	reg := prometheus.NewPedanticRegistry()
	svc, err := Start(t.Context(), cfg, Deps{NATS: nc, Sys: sys, Redis: rdb, KeyPrefix: prefix, Registerer: reg, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop(context.Background()) })
	return &stack{srv: s, svc: svc, reg: reg, adminKey: admin.String(), clock: clock}
}

// connect connects with key, reporting every async error on errs and
// closing closed when the connection ends for good.
func (st *stack) connect(t testing.TB, key string, extra ...nats.Option) (*nats.Conn, chan error, chan struct{}, error) {
	t.Helper()
	errs := make(chan error, 256)
	closed := make(chan struct{})
	opts := []nats.Option{nats.NoReconnect(), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) })}
	if key != "" {
		ko, err := events.KeyOptions(key)
		if err != nil {
			return nil, nil, nil, err
		}
		opts = append(opts, ko...)
	}
	nc, err := nats.Connect(st.srv.ClientURL(), append(opts, extra...)...)
	if err == nil {
		t.Cleanup(nc.Close)
	}
	return nc, errs, closed, err
}

func (st *stack) client(t *testing.T, key string, extra ...nats.Option) *events.Client {
	t.Helper()
	nc, _, _, err := st.connect(t, key, extra...)
	if err != nil {
		t.Fatalf("connect with the key: %v", err)
	}
	c, err := events.NewClient(nc, events.ClientOptions{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (st *stack) decisions(result, reason string) float64 {
	return testutil.ToFloat64(st.svc.metrics.decisions.WithLabelValues(result, reason))
}

// serviceBehaviours run on an embedded nats-server and miniredis here,
// and, gated, on the pinned nats-server as a process of its own and the
// real Redis (integration_test.go).
var serviceBehaviours = []struct {
	name string
	fn   func(t *testing.T, st *stack)
}{
	{"Keys", testServiceKeys},
	{"OverridesAndAdditions", testServiceOverridesAndAdditions},
	{"RoleMatrix", testServiceRoleMatrix},
}

func TestService(t *testing.T) {
	for _, b := range serviceBehaviours {
		t.Run(b.name, func(t *testing.T) { b.fn(t, startStack(t)) })
	}
}

// Keys are created, listed, revoked; bad keys are refused with NATS's
// authorization error and their reason counted; the secret is never
// listed.
func testServiceKeys(t *testing.T, st *stack) {
	admin := st.client(t, st.adminKey)
	ctx := t.Context()
	created, err := admin.CreateKey(ctx, events.KeyCreateRequest{Role: "app", UIDs: []string{"u-1"}, TTL: "1h", Note: "photo app"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := apikey.Parse(created.Key); err != nil || created.Role != "app" || !created.Expires.Equal(st.clock.Now().Add(time.Hour).Truncate(time.Millisecond)) {
		t.Errorf("created %+v (%v)", created, err)
	}
	list, err := admin.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Keys) != 2 || strings.Contains(fmt.Sprint(list), strings.Split(created.Key, ".")[1]) {
		t.Errorf("list: %+v", list)
	}

	// Bad input to the endpoints: 400 or 404 naming the field.
	for name, try := range map[string]func() error{
		"unknown role": func() error { _, err := admin.CreateKey(ctx, events.KeyCreateRequest{Role: "nobody"}); return err },
		"revoke unknown": func() error {
			_, err := admin.RevokeKey(ctx, "zzzzzzzz")
			return err
		},
		"override a long time": func() error {
			_, err := admin.AdjustKey(ctx, events.KeyAdjustRequest{ID: created.ID, Deny: "usage.*", TTL: "8760h"})
			return err
		},
	} {
		var serr *events.ServiceError
		if err := try(); !errors.As(err, &serr) || serr.Status >= 500 {
			t.Errorf("%s: %v, want a 4xx", name, err)
		}
	}

	// An app key may not manage keys: nats-server refuses the request.
	app := st.client(t, created.Key)
	if _, err := app.ListKeys(ctx); err == nil {
		t.Error("an app key listed the keys")
	}

	// Bad keys: NATS's authorization error, the reason counted.
	wrong := created.Key[:apikey.IDLen+1] + strings.Repeat("A", apikey.SecretLen)
	unknown, _ := apikey.New()
	for reason, key := range map[string]string{"malformed_key": "not-a-key", "unknown_key": unknown.String(), "bad_secret": wrong} {
		_, _, _, err := st.connect(t, "", nats.Token(key))
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("%s: connect = %v, want an authorization error", reason, err)
		}
		if st.decisions("refused", reason) != 1 {
			t.Errorf("%s not counted", reason)
		}
	}
	if _, _, _, err := st.connect(t, ""); !errors.Is(err, nats.ErrAuthorization) || st.decisions("refused", "no_key") != 1 {
		t.Errorf("no key: %v", err)
	}

	// Revoking ends an open connection, and the key cannot come back.
	_, _, closed, err := st.connect(t, created.Key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RevokeKey(ctx, created.ID); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case <-closed:
		t.Logf("the revoked key's connection closed %s after the reply", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked key's connection is still open")
	}
	if _, _, _, err := st.connect(t, created.Key); !errors.Is(err, nats.ErrAuthorization) || st.decisions("refused", "revoked") != 1 {
		t.Errorf("a revoked key connects: %v", err)
	}

	// An expired key is refused.
	short, err := admin.CreateKey(ctx, events.KeyCreateRequest{Role: "reader", UIDs: []string{"*"}, TTL: "1m"})
	if err != nil {
		t.Fatal(err)
	}
	st.clock.Add(2 * time.Minute)
	if _, _, _, err := st.connect(t, short.Key); !errors.Is(err, nats.ErrAuthorization) || st.decisions("refused", "expired") != 1 {
		t.Errorf("an expired key connects: %v", err)
	}
}

// An override takes a subject away from an open connection at once, an
// addition adds one, and both end by themselves.
func testServiceOverridesAndAdditions(t *testing.T, st *stack) {
	// The admin's connection reconnects, saying why it was dropped: on a
	// loaded CI machine it was once closed between two adjustments
	// ("nats: connection closed"), which this test is not about; the log
	// keeps the server's reason for whoever looks next.
	admin := st.client(t, st.adminKey, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond),
		func(o *nats.Options) error { o.AllowReconnect = true; return nil },
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			t.Logf("the admin's connection dropped: %v (last server error: %v)", err, nc.LastError())
		}))
	ctx := t.Context()
	k, err := admin.CreateKey(ctx, events.KeyCreateRequest{Role: "operator", UIDs: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	allowed := func(subject string) bool {
		t.Helper()
		nc, errs, _, err := st.connect(t, k.Key)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer nc.Close()
		return publishAllowed(t, nc, errs, []string{subject})[subject]
	}
	if !allowed("ratelimit.reset.u-1") || allowed("meter.grants.u-7.x") {
		t.Fatal("the operator role is not as shipped")
	}
	// The override kicks an open connection, which reconnects with less.
	reconnect := func(o *nats.Options) error { o.AllowReconnect = true; return nil }
	nc, _, _, err := st.connect(t, k.Key, reconnect, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	reconnected := make(chan struct{}, 1)
	nc.SetReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} })
	if _, err := admin.AdjustKey(ctx, events.KeyAdjustRequest{ID: k.ID, Deny: "ratelimit.reset.*", TTL: "1h"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reconnected:
	case <-time.After(5 * time.Second):
		t.Fatal("the overridden key's connection was not reissued")
	}
	if allowed("ratelimit.reset.u-1") {
		t.Error("the override did not take the subject away")
	}
	if _, err := admin.AdjustKey(ctx, events.KeyAdjustRequest{ID: k.ID, Allow: "auth.keys.list", TTL: "15m"}); err != nil {
		t.Fatal(err)
	}
	if !allowed("auth.keys.list") {
		t.Error("the addition did not add the subject")
	}
	// Both end by themselves.
	st.clock.Add(2 * time.Hour)
	if !allowed("ratelimit.reset.u-1") || allowed("auth.keys.list") {
		t.Error("the override and addition outlived their ttl")
	}
	// A bad subject is refused before it reaches the wire, and by the
	// service if it does.
	if _, err := admin.AdjustKey(ctx, events.KeyAdjustRequest{ID: k.ID, Deny: "a..b", TTL: "1h"}); !errors.Is(err, events.ErrBadRequest) && !isValidation(err) {
		t.Errorf("a bad subject: %v", err)
	}
}

func isValidation(err error) bool {
	var v *events.ValidationError
	return errors.As(err, &v)
}

// The role x subject matrix, end to end: a key of each shipped role (for
// uid u-1) publishes to and subscribes on every subject of allot's
// contract; nats-server allows exactly what the role's grant allows.
func testServiceRoleMatrix(t *testing.T, st *stack) {
	admin := st.client(t, st.adminKey)
	subjects := []string{
		"usage.u-1", "usage.u-2", "usage.dead.u-1",
		"meter.credit.u-1", "meter.credit.u-2", "meter.authorize.u-1", "meter.authorize.u-2", "meter.grants.u-1", "meter.grants.u-2",
		"ratelimit.check.u-1", "ratelimit.check.u-2", "ratelimit.reset.u-1", "ratelimit.reset.u-2",
		"meter.credit_many.u-1", "meter.credit_many.~all", "meter.authorize_many.u-2", "ratelimit.check_many.u-1", "ratelimit.check_many.~all",
		"registry.register", "registry.deregister", "registry.find", "registry.find.web", "registry.refresh", "registry.changed.web",
		"notify.usage.u-1", "notify.confirm.u-1", "notify.confirm.u-2", "notify.verify",
		"auth.keys.create", "auth.keys.list", "auth.changed.AbCd1234",
		"$SRV.PING", "$JS.API.STREAM.INFO.USAGE", "$JS.API.CONSUMER.CREATE.USAGE", "$JS.ACK.USAGE.meter.1.2.3.4.5",
		"_INBOX.someone.else", "other.thing",
	}
	for _, role := range []string{"app", "reader", "operator", "admin", "service"} {
		t.Run(role, func(t *testing.T) {
			k, err := admin.CreateKey(t.Context(), events.KeyCreateRequest{Role: role, UIDs: []string{"u-1"}})
			if err != nil {
				t.Fatal(err)
			}
			nc, errs, _, err := st.connect(t, k.Key)
			if err != nil {
				t.Fatal(err)
			}
			grant := st.svc.cfg.Roles[role].Grant
			gotPub := publishAllowed(t, nc, errs, subjects)
			gotSub := subscribeAllowed(t, nc, errs, append(slicesClone(subjects), events.KeyInboxPrefix(k.ID)+".x"))
			now := time.Now()
			var wrong []string
			for _, s := range subjects {
				if want := grant.Allows(policy.Op{Kind: policy.Pub, Subject: s, Time: now}, []string{"u-1"}); gotPub[s] != want {
					wrong = append(wrong, fmt.Sprintf("publish %s: nats-server %v, the role %v", s, gotPub[s], want))
				}
				if want := grant.Allows(policy.Op{Kind: policy.Sub, Subject: s, Time: now}, []string{"u-1"}); gotSub[s] != want {
					wrong = append(wrong, fmt.Sprintf("subscribe %s: nats-server %v, the role %v", s, gotSub[s], want))
				}
			}
			if !gotSub[events.KeyInboxPrefix(k.ID)+".x"] {
				wrong = append(wrong, "the key cannot read its own inbox")
			}
			sort.Strings(wrong)
			for _, w := range wrong {
				t.Error(w)
			}
		})
	}
}

var violation = regexp.MustCompile(`Permissions Violation for (Publish|Subscription) to "([^"]+)"`)

// publishAllowed publishes to every subject and returns which ones
// nats-server did not refuse.
func publishAllowed(t *testing.T, nc *nats.Conn, errs chan error, subjects []string) map[string]bool {
	t.Helper()
	for _, s := range subjects {
		if err := nc.Publish(s, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	return settle(t, nc, errs, "Publish", subjects)
}

func subscribeAllowed(t *testing.T, nc *nats.Conn, errs chan error, subjects []string) map[string]bool {
	t.Helper()
	for _, s := range subjects {
		sub, err := nc.SubscribeSync(s)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	return settle(t, nc, errs, "Subscription", subjects)
}

// settle flushes (the server answers in order, so every refusal of what
// was sent is on its way before the PONG) and collects the refusals.
func settle(t *testing.T, nc *nats.Conn, errs chan error, kind string, subjects []string) map[string]bool {
	t.Helper()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, s := range subjects {
		got[s] = true
	}
	deadline := time.After(300 * time.Millisecond) // the error handler runs on its own goroutine
	for {
		select {
		case err := <-errs:
			if m := violation.FindStringSubmatch(err.Error()); m != nil && m[1] == kind {
				got[m[2]] = false
			}
		case <-deadline:
			return got
		}
	}
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }
