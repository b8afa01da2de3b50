package auth

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// CalloutSubject is where nats-server asks who a connecting client is.
const CalloutSubject = "$SYS.REQ.USER.AUTH"

// Grant is what a verified connection may do: nats-server enforces it on
// every message of the connection.
type Grant struct {
	// Name is the connection's user as nats-server reports it: the key id.
	Name        string
	Permissions jwt.Permissions
	// NotBefore and Expires bound the connection; nats-server closes it at
	// Expires (zero: never), and the client reconnects and is decided anew.
	NotBefore, Expires time.Time
}

// Refusal is why a connection is refused: a bounded Reason for the
// metric's label, and a Detail for the log. Neither ever holds a secret.
type Refusal struct {
	Reason string
	Detail string
}

func (r *Refusal) Error() string { return r.Reason + ": " + r.Detail }

// Refuse returns a Refusal.
func Refuse(reason, format string, args ...any) error {
	return &Refusal{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Decider decides a connection from what it presented in its CONNECT.
// An error that is a *Refusal refuses the connection with its reason;
// any other error refuses it as "error" (a backend failure: the client
// retries, the connection is never let in on a failure).
type Decider interface {
	Decide(ctx context.Context, req *jwt.AuthorizationRequest) (Grant, error)
}

// CalloutObserver is told what became of each callout request.
type CalloutObserver interface {
	Decided(result, reason string, took time.Duration)
}

// Callout answers nats-server's authorization requests: it checks that a
// request was signed by a server, asks its Decider, and answers with a
// user JWT signed by the issuer account key, for that server, for the
// user nkey the server made for the connection (so a response cannot be
// replayed to another connection or server).
type Callout struct {
	issuer    nkeys.KeyPair
	issuerPub string
	// pubOnly names the issuer in a JWT without deriving the private key
	// (nkeys derives it from the seed for PublicKey too); sign signs with
	// the key derived once.
	pubOnly nkeys.KeyPair
	sign    jwt.SignFn
	account string
	decide  Decider
	observe CalloutObserver
	log     *slog.Logger
	timeout time.Duration
}

// NewCallout returns a Callout signing with issuer (an account key pair)
// and placing users in account.
func NewCallout(issuer nkeys.KeyPair, account string, d Decider, obs CalloutObserver, log *slog.Logger) (*Callout, error) {
	pub, err := issuer.PublicKey()
	if err != nil || !nkeys.IsValidPublicAccountKey(pub) {
		return nil, fmt.Errorf("auth: the issuer must be an account key pair (seed starting SA): %v", err)
	}
	if d == nil || obs == nil {
		return nil, errors.New("auth: a callout needs a decider and an observer")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sign, err := signerOf(issuer)
	if err != nil {
		return nil, err
	}
	pubOnly, err := nkeys.FromPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("auth: the issuer's public key: %w", err)
	}
	return &Callout{issuer: issuer, issuerPub: pub, pubOnly: pubOnly, sign: sign, account: account, decide: d, observe: obs, log: log, timeout: 2 * time.Second}, nil
}

// signerOf signs with kp's ed25519 key, derived from its seed once. The
// key pair's own Sign derives it again on every call, which was a fifth
// of a decision's time (two signatures per connect).
func signerOf(kp nkeys.KeyPair) (jwt.SignFn, error) {
	seed, err := kp.Seed()
	if err != nil {
		return nil, fmt.Errorf("auth: the issuer's seed: %w", err)
	}
	_, raw, err := nkeys.DecodeSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("auth: the issuer's seed: %w", err)
	}
	priv := ed25519.NewKeyFromSeed(raw)
	return func(_ string, data []byte) ([]byte, error) { return ed25519.Sign(priv, data), nil }, nil
}

// Handle answers one callout request message.
func (c *Callout) Handle(msg *nats.Msg) {
	start := time.Now()
	req, err := c.verify(msg.Data)
	if err != nil {
		// Not from a server: there is no one to answer.
		c.observe.Decided("forged", "bad_request", time.Since(start))
		c.log.Warn("callout request refused", "reason", "bad_request", "detail", err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	g, err := c.decide.Decide(ctx, &req.AuthorizationRequest)
	if err != nil {
		reason := "error"
		if r, ok := errors.AsType[*Refusal](err); ok {
			reason = r.Reason
		}
		c.observe.Decided("refused", reason, time.Since(start))
		c.log.Info("connection refused", "reason", reason, "detail", err.Error(), "client", req.ClientInformation.Host, "name", req.ClientInformation.Name, "server", req.Server.Name)
		c.respond(msg, req, "", "not authorized: "+reason)
		return
	}
	uc := jwt.NewUserClaims(req.UserNkey)
	uc.Name = g.Name
	uc.Audience = c.account
	uc.Permissions = g.Permissions
	if !g.Expires.IsZero() {
		uc.Expires = g.Expires.Unix()
	}
	if !g.NotBefore.IsZero() {
		uc.NotBefore = g.NotBefore.Unix()
	}
	token, err := uc.EncodeWithSigner(c.pubOnly, c.sign)
	if err != nil {
		c.observe.Decided("refused", "error", time.Since(start))
		c.log.Error("cannot sign the user", "err", err)
		c.respond(msg, req, "", "not authorized: error")
		return
	}
	c.respond(msg, req, token, "")
	c.observe.Decided("allowed", "", time.Since(start))
	c.log.Debug("connection allowed", "key", g.Name, "client", req.ClientInformation.Host, "server", req.Server.Name)
}

// verify decodes a request and checks it is a server's, signed by it,
// about a user key the server made.
func (c *Callout) verify(data []byte) (*jwt.AuthorizationRequestClaims, error) {
	req, err := jwt.DecodeAuthorizationRequestClaims(string(data))
	if err != nil {
		return nil, fmt.Errorf("not a signed authorization request: %w", err)
	}
	vr := jwt.CreateValidationResults()
	req.Validate(vr)
	if len(vr.Issues) > 0 {
		return nil, fmt.Errorf("invalid authorization request: %v", vr.Issues[0])
	}
	if !nkeys.IsValidPublicServerKey(req.Issuer) {
		return nil, fmt.Errorf("the request is signed by %q, not a server", req.Issuer)
	}
	if req.Server.ID != req.Issuer {
		return nil, fmt.Errorf("the request is for server %q but signed by %q", req.Server.ID, req.Issuer)
	}
	if !nkeys.IsValidPublicUserKey(req.UserNkey) {
		return nil, fmt.Errorf("the request's user key %q is not a user nkey", req.UserNkey)
	}
	return req, nil
}

// respond answers a request with a signed authorization response holding
// the user JWT, or the error the server logs and refuses with.
func (c *Callout) respond(msg *nats.Msg, req *jwt.AuthorizationRequestClaims, userJWT, refusal string) {
	rc := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	rc.Audience = req.Server.ID
	rc.Jwt = userJWT
	rc.Error = refusal
	token, err := rc.EncodeWithSigner(c.pubOnly, c.sign)
	if err != nil {
		c.log.Error("cannot sign the response", "err", err)
		return
	}
	if err := msg.Respond([]byte(token)); err != nil {
		c.log.Warn("cannot answer the callout", "err", err)
	}
}
