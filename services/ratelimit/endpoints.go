package ratelimit

import (
	"context"
	"errors"
	"fmt"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go/micro"
)

func (l *Limiter) startEndpoints() error {
	for i := range l.cfg.RateLimit.Handlers {
		svc, err := micro.AddService(l.nc, micro.Config{
			Name:        "ratelimit",
			Version:     Version,
			Description: "allot rate limiter: check and reset",
			QueueGroup:  "ratelimit",
			Metadata:    map[string]string{"handler": fmt.Sprint(i)},
		})
		if err != nil {
			return fmt.Errorf("ratelimit: endpoints: %w", err)
		}
		l.services = append(l.services, svc)
		g := svc.AddGroup(l.cfg.Subjects.RateLimitGroup(), micro.WithGroupQueueGroup("ratelimit"))
		for _, ep := range []struct {
			name string
			h    micro.HandlerFunc
		}{
			{"check", l.handleCheck},
			{"reset", l.handleReset},
		} {
			if err := g.AddEndpoint(ep.name, ep.h, micro.WithEndpointSubject(ep.name+".*")); err != nil {
				return fmt.Errorf("ratelimit: endpoint %s: %w", ep.name, err)
			}
		}
	}
	return nil
}

func (l *Limiter) stopEndpoints() {
	for _, svc := range l.services {
		if err := svc.Stop(); err != nil {
			l.log.Warn("stopping endpoints", "err", err)
		}
	}
}

// uidOf returns the <uid> token of a request subject <ratelimit>.<endpoint>.<uid>.
func (l *Limiter) uidOf(req micro.Request, endpoint string) (string, error) {
	uid, err := events.ParseToken(req.Subject(), l.cfg.Subjects.RateLimitGroup()+"."+endpoint)
	if err != nil {
		var v *events.ValidationError
		if errors.As(err, &v) {
			v.Field = "uid"
		}
	}
	return uid, err
}

// reply answers req, counting the outcome.
func (l *Limiter) reply(req micro.Request, endpoint string, v any, err error) {
	if err == nil {
		l.metrics.requests.WithLabelValues(endpoint, "ok").Inc()
		_ = events.Respond(req, v)
		return
	}
	var serr *events.ServiceError
	switch {
	case errors.As(err, &serr):
	case errors.Is(err, events.ErrInvalid):
		serr = events.BadRequest(err)
	default:
		l.log.Error("request failed", "endpoint", endpoint, "subject", req.Subject(), "err", err)
		serr = events.NewServiceError(events.CodeInternal, "", "%v", err)
	}
	l.metrics.requests.WithLabelValues(endpoint, string(serr.Code)).Inc()
	_ = events.RespondError(req, serr)
}

func (l *Limiter) handleCheck(req micro.Request) {
	var body events.CheckRequest
	uid, err := l.uidOf(req, "check")
	if err == nil {
		err = events.DecodeRequest(req.Data(), &body)
	}
	if err != nil {
		l.reply(req, "check", nil, err)
		return
	}
	reply, err := l.Check(context.Background(), uid, body)
	l.reply(req, "check", reply, err)
}

func (l *Limiter) handleReset(req micro.Request) {
	var body events.ResetRequest
	uid, err := l.uidOf(req, "reset")
	if err == nil {
		err = events.DecodeRequest(req.Data(), &body)
	}
	if err == nil {
		err = l.Reset(context.Background(), uid, body)
	}
	if err != nil {
		l.reply(req, "reset", nil, err)
		return
	}
	l.reply(req, "reset", events.OKReply{OK: true}, nil)
}
