package service

import (
	"encoding/json"
	"errors"
	"log/slog"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
)

// Replier answers requests in the contract's form and counts each
// outcome in Requests by endpoint and result ("ok" or an error code).
type Replier struct {
	Requests *prometheus.CounterVec
	Log      *slog.Logger
	// Classify maps a service's own errors (a backend down, a conflict) to
	// a reply error, or returns nil to leave err to the defaults: a
	// *events.ServiceError as it is, a validation error a 400 naming the
	// field, anything else a 500 that is logged.
	Classify func(error) *events.ServiceError
}

// Reply answers req with v as JSON, or with err.
func (r Replier) Reply(req micro.Request, endpoint string, v any, err error) {
	if err == nil {
		var data []byte
		if data, err = json.Marshal(v); err == nil {
			r.ReplyBytes(req, endpoint, data, nil)
			return
		}
	}
	r.ReplyBytes(req, endpoint, nil, err)
}

// ReplyBytes answers req with data, already encoded, or with err.
func (r Replier) ReplyBytes(req micro.Request, endpoint string, data []byte, err error) {
	if err == nil {
		r.count(endpoint, "ok")
		_ = req.Respond(data)
		return
	}
	serr := r.classify(req, endpoint, err)
	r.count(endpoint, string(serr.Code))
	_ = events.RespondError(req, serr)
}

func (r Replier) classify(req micro.Request, endpoint string, err error) *events.ServiceError {
	var serr *events.ServiceError
	if r.Classify != nil {
		if s := r.Classify(err); s != nil {
			return s
		}
	}
	switch {
	case errors.As(err, &serr):
		return serr
	case errors.Is(err, events.ErrInvalid):
		return events.BadRequest(err)
	}
	if r.Log != nil {
		r.Log.Error("request failed", "endpoint", endpoint, "subject", req.Subject(), "err", err)
	}
	return events.NewServiceError(events.CodeInternal, "", "%v", err)
}

func (r Replier) count(endpoint, result string) {
	if r.Requests != nil {
		r.Requests.WithLabelValues(endpoint, result).Inc()
	}
}
