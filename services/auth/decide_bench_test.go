package auth

import (
	"testing"
	"time"

	"github.com/allot/allot/pkg/testenv"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
	"github.com/redis/go-redis/v9"
)

// BenchmarkDecide is the auth service's own part of a connect, without
// the network: verifying the server's request, deciding the key (its
// record from miniredis, the validators, the role compiled) and signing
// the user and the response. What nats-server and the client spend on a
// connect comes on top (BenchmarkConnect).
func BenchmarkDecide(b *testing.B) {
	mr := testenv.Miniredis(b)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	b.Cleanup(func() { _ = rdb.Close() })
	cfg, err := DefaultConfig()
	if err != nil {
		b.Fatal(err)
	}
	be, err := DefaultBackends().Open("redis", cfg.Backend.Options, BackendDeps{Redis: rdb, KeyPrefix: "allot:"})
	if err != nil {
		b.Fatal(err)
	}
	key, _ := NewKey()
	if err := ensureStaticKeys(b.Context(), be, []string{"app=" + key}, cfg.Roles, time.Now()); err != nil {
		b.Fatal(err)
	}
	chain, _ := newChain(cfg.Validators, DefaultValidators())
	d := &decider{backend: be, roles: cfg.Roles, chain: chain, now: time.Now}
	issuer, _ := nkeys.CreateAccount()
	srv, _ := nkeys.CreateServer()
	srvPub, _ := srv.PublicKey()
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()
	rc := jwt.NewAuthorizationRequestClaims(userPub)
	rc.Server.ID, rc.UserNkey, rc.ConnectOptions.Token = srvPub, userPub, key
	reqJWT, err := rc.Encode(srv)
	if err != nil {
		b.Fatal(err)
	}
	sign, err := signerOf(issuer)
	if err != nil {
		b.Fatal(err)
	}
	ipub, _ := issuer.PublicKey()
	pubOnly, _ := nkeys.FromPublicKey(ipub)
	c := &Callout{issuer: issuer, account: GlobalAccount, sign: sign, pubOnly: pubOnly}
	b.ResetTimer()
	for b.Loop() {
		req, err := c.verify([]byte(reqJWT))
		if err != nil {
			b.Fatal(err)
		}
		g, err := d.Decide(b.Context(), &req.AuthorizationRequest)
		if err != nil {
			b.Fatal(err)
		}
		uc := jwt.NewUserClaims(req.UserNkey)
		uc.Name, uc.Audience, uc.Permissions = g.Name, GlobalAccount, g.Permissions
		u, err := uc.EncodeWithSigner(c.pubOnly, c.sign)
		if err != nil {
			b.Fatal(err)
		}
		resp := jwt.NewAuthorizationResponseClaims(req.UserNkey)
		resp.Audience, resp.Jwt = req.Server.ID, u
		if _, err := resp.EncodeWithSigner(c.pubOnly, c.sign); err != nil {
			b.Fatal(err)
		}
	}
}
