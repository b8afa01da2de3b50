package ratelimit

import (
	"context"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
)

func (l *Limiter) startEndpoints(reg prometheus.Registerer) error {
	eps, err := service.StartEndpoints(l.nc, service.EndpointsConfig{
		Name:        "ratelimit",
		Description: "allot rate limiter: check and reset",
		Group:       l.cfg.Subjects.RateLimitGroup(),
		Instance:    l.cfg.Instance,
		Registerer:  reg,
		Handlers:    l.cfg.RateLimit.Handlers,
		Pipelines:   l.cfg.RateLimit.Pipelines,
		// Only check is batched.
		ObserveBatch: func(_ string, n int) { l.metrics.batchSize.Observe(float64(n)) },
	}, []service.Endpoint{
		// Checks are decided in batches, one Redis round trip each.
		{Name: "check", Subject: "check.*", Batch: l.handleChecks, Many: "check_many"},
		{Name: "reset", Subject: "reset.*", Handler: l.handleReset},
	}, l.log)
	if err != nil {
		return err
	}
	l.endpoints = eps
	return nil
}

func (l *Limiter) stopEndpoints() {
	if l.endpoints != nil {
		l.endpoints.Stop()
	}
}

// uidOf returns the <uid> token of a request subject <ratelimit>.<endpoint>.<uid>.
func (l *Limiter) uidOf(req micro.Request, endpoint string) (string, error) {
	return l.cfg.Subjects.ParseUID(req.Subject(), l.cfg.Subjects.RateLimitGroup()+"."+endpoint)
}

// reply answers req, counting the outcome.
func (l *Limiter) reply(req micro.Request, endpoint string, v any, err error) {
	service.Replier{Requests: l.metrics.requests, Log: l.log}.Reply(req, endpoint, v, err)
}

// handleChecks answers checks that arrived together: those that do not
// decode are answered at once, the rest decided as one batch.
func (l *Limiter) handleChecks(reqs []micro.Request) {
	calls := make([]checkCall, 0, len(reqs))
	decoded := make([]micro.Request, 0, len(reqs))
	for _, req := range reqs {
		var body events.CheckRequest
		uid, err := l.uidOf(req, "check")
		if err == nil {
			err = events.DecodeRequest(req.Data(), &body)
		}
		if err != nil {
			l.reply(req, "check", nil, err)
			continue
		}
		calls = append(calls, checkCall{uid: uid, req: body})
		decoded = append(decoded, req)
	}
	if len(calls) == 0 {
		return
	}
	for i, r := range l.checkMany(context.Background(), calls) {
		l.reply(decoded[i], "check", r.reply, r.err)
	}
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
