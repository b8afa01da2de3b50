package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// calloutServer starts an embedded nats-server with JetStream and the
// callout on, configured by ServerConfig.Render, and returns it with the
// config and the issuer key pair.
func calloutServer(t testing.TB) (*server.Server, ServerConfig, nkeys.KeyPair) {
	t.Helper()
	issuer, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := issuer.PublicKey()
	sc := ServerConfig{Issuer: pub, AuthUser: "allot-auth", AuthPassword: "pw-auth", SysUser: "allot-sys", SysPassword: "pw-sys"}
	blocks, err := sc.Render()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := fmt.Sprintf("listen: \"127.0.0.1:-1\"\nserver_name: test\njetstream { store_dir: %q }\n%s", filepath.Join(dir, "js"), blocks)
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server refuses the rendered config: %v\n%s", err, conf)
	}
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s, sc, issuer
}

// tokenDecider lets in the token "good" for usage.u-1 and its inbox,
// until expires.
type tokenDecider struct{ expires time.Time }

func (d tokenDecider) Decide(_ context.Context, req *jwt.AuthorizationRequest) (Grant, error) {
	if req.ConnectOptions.Token != "good" {
		return Grant{}, Refuse("unknown_key", "no such token")
	}
	var p jwt.Permissions
	p.Pub.Allow.Add("usage.u-1")
	p.Sub.Allow.Add("_INBOX.>")
	return Grant{Name: "k1", Permissions: p, Expires: d.expires}, nil
}

type observed struct {
	mu  sync.Mutex
	got []string
}

func (o *observed) Decided(result, reason string, _ time.Duration) {
	o.mu.Lock()
	o.got = append(o.got, result+"/"+reason)
	o.mu.Unlock()
}

func (o *observed) has(want string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, g := range o.got {
		if g == want {
			return true
		}
	}
	return false
}

func startCallout(t testing.TB, s *server.Server, sc ServerConfig, issuer nkeys.KeyPair, d Decider) *observed {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(sc.AuthUser, sc.AuthPassword))
	if err != nil {
		t.Fatalf("the auth user cannot connect: %v", err)
	}
	t.Cleanup(nc.Close)
	obs := &observed{}
	c, err := NewCallout(issuer, GlobalAccount, d, obs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.QueueSubscribe(CalloutSubject, "allot-auth", c.Handle); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return obs
}

func TestCalloutEndToEnd(t *testing.T) {
	s, sc, issuer := calloutServer(t)
	obs := startCallout(t, s, sc, issuer, tokenDecider{})

	// A bad key: NATS's authorization error, the reason counted.
	if _, err := nats.Connect(s.ClientURL(), nats.Token("bad"), nats.MaxReconnects(0)); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("connect with a bad token = %v, want an authorization error", err)
	}
	if !obs.has("refused/unknown_key") {
		t.Errorf("the refusal was not observed: %v", obs.got)
	}

	// A good key: its permissions, enforced by the server.
	violations := make(chan error, 4)
	nc, err := nats.Connect(s.ClientURL(), nats.Token("good"), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatalf("connect with a good token: %v", err)
	}
	defer nc.Close()
	if err := nc.Publish("usage.u-1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	_ = nc.Publish("usage.u-2", []byte("x"))
	_ = nc.Flush()
	select {
	case err := <-violations:
		if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), "usage.u-2") {
			t.Errorf("publish to usage.u-2: %v, want a permission violation naming it", err)
		}
	case <-time.After(2 * time.Second):
		t.Error("publishing to usage.u-2 was not refused")
	}

	// JetStream lives in the account the callout places users in.
	admin, err := nats.Connect(s.ClientURL(), nats.UserInfo(sc.AuthUser, sc.AuthPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	js, _ := jetstream.New(admin)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "USAGE", Subjects: []string{"usage.*"}}); err != nil {
		t.Fatalf("JetStream in the global account: %v", err)
	}
	if err := nc.Publish("usage.u-1", []byte("y")); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	st, _ := js.Stream(t.Context(), "USAGE")
	deadline := time.Now().Add(2 * time.Second)
	for info, _ := st.Info(t.Context()); info.State.Msgs != 1; info, _ = st.Info(t.Context()) {
		if time.Now().After(deadline) {
			t.Fatalf("the key's publish did not reach the stream: %d messages", info.State.Msgs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The system user disconnects a client by server id and client id, the
// two the callout request names; a key's grant ends at its expiry.
func TestCalloutKickAndExpiry(t *testing.T) {
	s, sc, issuer := calloutServer(t)
	var cid uint64
	var serverID string
	var mu sync.Mutex
	d := deciderFunc(func(ctx context.Context, req *jwt.AuthorizationRequest) (Grant, error) {
		mu.Lock()
		cid, serverID = req.ClientInformation.ID, req.Server.ID
		mu.Unlock()
		exp := time.Time{}
		if req.ConnectOptions.Token == "short" {
			exp = time.Now().Add(1500 * time.Millisecond)
		}
		var p jwt.Permissions
		p.Sub.Allow.Add("_INBOX.>")
		return Grant{Name: "k1", Permissions: p, Expires: exp}, nil
	})
	startCallout(t, s, sc, issuer, d)

	closed := make(chan struct{})
	nc, err := nats.Connect(s.ClientURL(), nats.Token("long"), nats.NoReconnect(), nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sys, err := nats.Connect(s.ClientURL(), nats.UserInfo(sc.SysUser, sc.SysPassword))
	if err != nil {
		t.Fatalf("the system user cannot connect: %v", err)
	}
	defer sys.Close()
	mu.Lock()
	body, _ := json.Marshal(map[string]uint64{"cid": cid})
	subject := "$SYS.REQ.SERVER." + serverID + ".KICK"
	mu.Unlock()
	if _, err := sys.Request(subject, body, 2*time.Second); err != nil {
		t.Fatalf("kick: %v", err)
	}
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Fatal("the kicked client is still connected")
	}

	expired := make(chan struct{})
	nc2, err := nats.Connect(s.ClientURL(), nats.Token("short"), nats.NoReconnect(), nats.ClosedHandler(func(*nats.Conn) { close(expired) }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	select {
	case <-expired:
	case <-time.After(5 * time.Second):
		t.Fatal("the client outlived its grant's expiry")
	}
}

type deciderFunc func(context.Context, *jwt.AuthorizationRequest) (Grant, error)

func (f deciderFunc) Decide(ctx context.Context, r *jwt.AuthorizationRequest) (Grant, error) {
	return f(ctx, r)
}

// No client, not even the auth service's own user, may publish a callout
// request: nats-server refuses it. And a request not signed by a server
// for itself is dropped and counted, never answered.
func TestCalloutRefusesForgedRequests(t *testing.T) {
	s, sc, issuer := calloutServer(t)
	obs := startCallout(t, s, sc, issuer, tokenDecider{})
	violations := make(chan error, 1)
	nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(sc.AuthUser, sc.AuthPassword), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.Publish(CalloutSubject, []byte("forged"))
	_ = nc.Flush()
	select {
	case err := <-violations:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("publishing a callout request: %v, want a permission violation", err)
		}
	case <-time.After(2 * time.Second):
		t.Error("nats-server let a client publish a callout request")
	}
	// Signed by a server key, but for another server.
	signer, _ := nkeys.CreateServer()
	other, _ := nkeys.CreateServer()
	otherPub, _ := other.PublicKey()
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()
	rc := jwt.NewAuthorizationRequestClaims(userPub)
	rc.Server.ID = otherPub
	rc.UserNkey = userPub
	rc.ConnectOptions.Token = "good"
	mismatched, err := rc.Encode(signer)
	if err != nil {
		t.Fatal(err)
	}
	// A genuine shape whose claims were changed after signing.
	signerPub, _ := signer.PublicKey()
	rc.Server.ID = signerPub
	genuine, err := rc.Encode(signer)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(genuine, ".")
	rc.ConnectOptions.Token = "other"
	changed, _ := rc.Encode(signer)
	tampered := parts[0] + "." + strings.Split(changed, ".")[1] + "." + parts[2]
	c, err := NewCallout(issuer, GlobalAccount, tokenDecider{}, obs, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, body := range [][]byte{[]byte("not a jwt"), []byte(mismatched), []byte(tampered), nil} {
		c.Handle(&nats.Msg{Subject: CalloutSubject, Data: body})
	}
	if _, err := (&Callout{}).verify([]byte(genuine)); err != nil {
		t.Errorf("the genuine request does not verify: %v", err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if n := strings.Count(strings.Join(obs.got, " "), "forged/bad_request"); n != 4 {
		t.Errorf("%d of 4 forged requests counted: %v", n, obs.got)
	}
}

// Kick disconnects every connection of one key, found by the user name
// the callout gave it, and no other.
func TestKickerDisconnectsOneKey(t *testing.T) {
	s, sc, issuer := calloutServer(t)
	d := deciderFunc(func(_ context.Context, req *jwt.AuthorizationRequest) (Grant, error) {
		var p jwt.Permissions
		p.Sub.Allow.Add("_INBOX.>")
		return Grant{Name: req.ConnectOptions.Token, Permissions: p}, nil
	})
	startCallout(t, s, sc, issuer, d)
	connect := func(token string) chan struct{} {
		closed := make(chan struct{})
		nc, err := nats.Connect(s.ClientURL(), nats.Token(token), nats.NoReconnect(), nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return closed
	}
	a1, a2, b := connect("key-a"), connect("key-a"), connect("key-b")
	sys, err := nats.Connect(s.ClientURL(), nats.UserInfo(sc.SysUser, sc.SysPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	k := &kicker{sys: sys, gather: 300 * time.Millisecond, log: slog.New(slog.DiscardHandler)}
	start := time.Now()
	n, err := k.Kick(t.Context(), "key-a")
	if err != nil || n != 2 {
		t.Fatalf("Kick = %d, %v; want the 2 connections of key-a", n, err)
	}
	for i, ch := range []chan struct{}{a1, a2} {
		select {
		case <-ch:
		case <-time.After(time.Second):
			t.Fatalf("connection %d of key-a still open after the kick", i+1)
		}
	}
	t.Logf("both connections closed %s after the kick began", time.Since(start))
	select {
	case <-b:
		t.Error("key-b's connection was kicked too")
	case <-time.After(200 * time.Millisecond):
	}
	if n, _ := k.Kick(t.Context(), "nobody"); n != 0 {
		t.Errorf("kicked %d connections of a key with none", n)
	}
}
