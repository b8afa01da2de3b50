package service_test

import (
	"errors"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var errBackendDown = errors.New("backend down")

func TestEndpointsAndReplier(t *testing.T) {
	s := runNATS(t, server.Options{})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "requests_total", Help: "x"}, []string{"endpoint", "result"})
	r := service.Replier{Requests: requests, Classify: func(err error) *events.ServiceError {
		if errors.Is(err, errBackendDown) {
			return events.NewServiceError(events.CodeUnavailable, "", "%v", err)
		}
		return nil
	}}
	answer := func(req micro.Request) {
		switch string(req.Data()) {
		case "ok":
			r.Reply(req, "echo", events.OKReply{OK: true}, nil)
		case "bad":
			r.Reply(req, "echo", nil, events.BadRequest(&events.ValidationError{Field: "cost", Rule: "must be >= 0"}))
		case "invalid":
			_, err := events.ParseUID("x.é", "x")
			r.Reply(req, "echo", nil, err)
		case "down":
			r.Reply(req, "echo", nil, errBackendDown)
		default:
			r.Reply(req, "echo", nil, errors.New("a bug"))
		}
	}
	eps, err := service.StartEndpoints(nc, service.EndpointsConfig{Name: "echo", Version: "0.0.1", Group: "test", Handlers: 3},
		[]service.Endpoint{{Name: "echo", Subject: "echo", Handler: answer}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eps.Stop)
	for body, want := range map[string]struct {
		status int
		field  string
	}{
		"ok": {0, ""}, "bad": {400, "cost"}, "invalid": {400, "uid"}, "down": {503, ""}, "other": {500, ""},
	} {
		msg, err := nc.Request("test.echo", []byte(body), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		serr := events.DecodeServiceError(msg)
		switch {
		case want.status == 0 && serr != nil:
			t.Errorf("%s: %+v, want a reply", body, serr)
		case want.status != 0 && (serr == nil || serr.Status != want.status || serr.Field != want.field):
			t.Errorf("%s: %+v, want %d on %q", body, serr, want.status, want.field)
		}
	}
	if got := testutil.ToFloat64(requests.WithLabelValues("echo", "unavailable")); got != 1 {
		t.Errorf("unavailable counted %v times", got)
	}
	if _, err := service.StartEndpoints(nc, service.EndpointsConfig{Name: "bad name!", Group: "g", Handlers: 1}, nil, nil); err == nil {
		t.Error("a micro service with an invalid name started")
	}
}
