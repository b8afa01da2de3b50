package notifier

import (
	"context"
	_ "embed"
	"errors"
	"fmt"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/notifier/internal/token"
	"github.com/nats-io/nats.go/micro"
)

// useTokenScript uses up a token and records its address; use_token.lua
// says how.
//
//go:embed use_token.lua
var useTokenScript string

// newReplier answers verify requests: a bad request is a 400 naming the
// field, anything else (Redis) a 503.
func (n *Notifier) newReplier() service.Replier {
	return service.Replier{Requests: n.metrics.requests, Log: n.log, Classify: func(err error) *events.ServiceError {
		if !errors.Is(err, events.ErrInvalid) {
			return events.NewServiceError(events.CodeUnavailable, "", "%v", err)
		}
		return nil
	}}
}

// handleVerify answers notify.verify: valid (and now used), expired, used
// or invalid.
func (n *Notifier) handleVerify(req micro.Request) {
	rep := n.replier
	var body events.VerifyRequest
	if err := events.DecodeRequest(req.Data(), &body); err != nil {
		rep.Reply(req, "verify", nil, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.NATS.RequestTimeout)
	defer cancel()
	reply, err := n.Verify(ctx, body.Token)
	if err == nil {
		n.metrics.verified.WithLabelValues(reply.Status).Inc()
	}
	rep.Reply(req, "verify", reply, err)
}

// Verify checks a confirmation token and, when it is valid, uses it up
// and records its address as the uid's confirmed address.
func (n *Notifier) Verify(ctx context.Context, tok string) (events.VerifyReply, error) {
	now := n.now()
	claims, err := n.signer.Check(tok, now)
	reply := events.VerifyReply{UID: claims.UID, Email: claims.Email, ExpiresAt: claims.Expires}
	switch {
	case errors.Is(err, token.ErrInvalid):
		return events.VerifyReply{Status: events.VerifyInvalid}, nil
	case errors.Is(err, token.ErrExpired):
		reply.Status = events.VerifyExpired
		return reply, nil
	case err != nil:
		return events.VerifyReply{}, err
	}
	used, err := n.useToken.Run(ctx, n.rdb,
		[]string{n.keys.UsedToken(claims.UID, claims.Nonce), n.keys.ConfirmedAddress(claims.UID)},
		tokenExpiry(claims.Expires, now).Milliseconds(), claims.Email).Int()
	if err != nil {
		return events.VerifyReply{}, fmt.Errorf("notifier: use token: %w", err)
	}
	if used == 0 {
		reply.Status = events.VerifyUsed
		return reply, nil
	}
	reply.Status = events.VerifyValid
	n.log.Info("address confirmed", "uid", claims.UID)
	return reply, nil
}
