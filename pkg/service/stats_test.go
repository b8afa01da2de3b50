package service_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// statusOf answers a request whose body names an outcome with a reply of
// that outcome.
var statusOf = map[string]*events.ServiceError{
	"ok":          nil,
	"bad":         events.NewServiceError(events.CodeBadRequest, "n", "bad"),
	"missing":     events.NewServiceError(events.CodeNotFound, "", "no such thing"),
	"conflict":    events.NewServiceError(events.CodeConflict, "", "taken"),
	"over":        events.NewServiceError(events.CodeOverLimit, "", "used up"),
	"down":        events.NewServiceError(events.CodeUnavailable, "", "redis unavailable"),
	"bug":         events.NewServiceError(events.CodeInternal, "", "a bug"),
	"unreachable": nil,
}

func answerByBody(r service.Replier, req micro.Request) {
	if serr := statusOf[string(req.Data())]; serr != nil {
		r.Reply(req, "e", nil, serr)
		return
	}
	r.Reply(req, "e", events.OKReply{OK: true}, nil)
}

func connect(t *testing.T, s *server.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// $SRV.STATS and allot_request_duration_seconds count every reply, from
// a handler or a batch, error or not, with the time since the request
// arrived.
func TestStatsCountEveryReply(t *testing.T) {
	s := runNATS(t, server.Options{})
	nc := connect(t, s)
	reg := prometheus.NewRegistry()
	r := service.Replier{}
	eps, err := service.StartEndpoints(nc, service.EndpointsConfig{Name: "echo", Version: "0.0.1", Group: "test", Handlers: 3, Registerer: reg},
		[]service.Endpoint{
			{Name: "single", Subject: "single", Handler: func(req micro.Request) { answerByBody(r, req) }},
			{Name: "batched", Subject: "batched.*", Batch: func(reqs []micro.Request) {
				// Answered from another goroutine, as a batch that
				// waits on Redis does.
				done := make(chan struct{})
				go func() {
					defer close(done)
					for _, req := range reqs {
						answerByBody(r, req)
					}
				}()
				<-done
			}},
		}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eps.Stop)

	bodies := map[string]int{"ok": 5, "bad": 4, "missing": 3, "conflict": 1, "over": 2, "down": 3, "bug": 1}
	sent, errs := 0, 0
	for _, subject := range []string{"test.single", "test.batched.u-1"} {
		for body, n := range bodies {
			for range n {
				msg, err := nc.Request(subject, []byte(body), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if got, want := events.DecodeServiceError(msg), statusOf[body]; (got == nil) != (want == nil) || got != nil && got.Status != want.Status {
					t.Fatalf("%s %s: got %+v, want %+v", subject, body, got, want)
				}
			}
		}
	}
	for body, n := range bodies {
		sent += n
		if statusOf[body] != nil {
			errs += n
		}
	}
	// Every endpoint counts what it answered.
	for _, st := range statsOf(t, nc, "echo", 1) {
		for _, ep := range st.Endpoints {
			if ep.NumRequests != sent || ep.NumErrors != errs {
				t.Errorf("%s: %d requests, %d errors; sent %d, %d of them errors", ep.Name, ep.NumRequests, ep.NumErrors, sent, errs)
			}
			if ep.LastError == "" || !strings.Contains(ep.LastError, ":") {
				t.Errorf("%s: last error %q, want <status>:<description>", ep.Name, ep.LastError)
			}
			if ep.ProcessingTime <= 0 || ep.AverageProcessingTime != ep.ProcessingTime/time.Duration(ep.NumRequests) {
				t.Errorf("%s: processing time %v, average %v", ep.Name, ep.ProcessingTime, ep.AverageProcessingTime)
			}
			if string(ep.Data) != `{"in_flight":0}` {
				t.Errorf("%s: data %s", ep.Name, ep.Data)
			}
		}
	}
	// The histogram counts each outcome, by endpoint.
	want := map[string]int{"ok": 5, "bad_request": 4, "not_found": 3, "conflict": 1, "refused": 2, "unavailable": 3, "internal": 1}
	for _, endpoint := range []string{"single", "batched"} {
		got := histogramCounts(t, reg, endpoint)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: histogram counts (-want +got):\n%s", endpoint, diff)
		}
	}
}

// histogramCounts reads allot_request_duration_seconds's sample counts
// of one endpoint by outcome, leaving out the outcomes never seen.
func histogramCounts(t *testing.T, reg *prometheus.Registry, endpoint string) map[string]int {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, f := range families {
		if f.GetName() != "allot_request_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["endpoint"] == endpoint && m.GetHistogram().GetSampleCount() > 0 {
				got[labels["outcome"]] = int(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return got
}

// statsOf asks $SRV.STATS.<name> and returns the answers once want have
// come (or what came within a second).
func statsOf(t *testing.T, nc *nats.Conn, name string, want int) []micro.Stats {
	t.Helper()
	var out []micro.Stats
	for _, data := range ask(t, nc, "$SRV.STATS."+name, want) {
		var st micro.Stats
		if err := json.Unmarshal(data, &st); err != nil {
			t.Fatal(err)
		}
		if st.Type != micro.StatsResponseType {
			t.Errorf("stats of type %q", st.Type)
		}
		out = append(out, st)
	}
	if len(out) != want {
		t.Errorf("%d answers to $SRV.STATS.%s, want %d", len(out), name, want)
	}
	return out
}

// ask sends subject a request and gathers the answers: want of them,
// then whatever else comes within 200ms (so that an extra one shows), or
// what came within 2s.
func ask(t *testing.T, nc *nats.Conn, subject string, want int) [][]byte {
	t.Helper()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for {
		wait := 2 * time.Second
		if len(out) >= want {
			wait = 200 * time.Millisecond
		}
		msg, err := sub.NextMsg(wait)
		if err != nil {
			return out
		}
		out = append(out, msg.Data)
	}
}

// One process is one micro instance per service, whatever its handlers:
// PING answers once per process, INFO names each replica apart.
func TestOneInstancePerProcess(t *testing.T) {
	s := runNATS(t, server.Options{})
	ok := func(req micro.Request) { _ = req.Respond(nil) }
	ids := map[string]bool{}
	for _, instance := range []string{"pod-a", "pod-b"} {
		eps, err := service.StartEndpoints(connect(t, s), service.EndpointsConfig{Name: "echo", Group: "test", Handlers: 4, Instance: instance},
			[]service.Endpoint{{Name: "e", Subject: "e", Handler: ok}, {Name: "b", Subject: "b", Batch: func(reqs []micro.Request) {
				for _, r := range reqs {
					ok(r)
				}
			}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(eps.Stop)
		ids[eps.ID()] = true
	}
	nc := connect(t, s)
	for _, subject := range []string{"$SRV.PING", "$SRV.PING.echo"} {
		if n := len(ask(t, nc, subject, 2)); n != 2 {
			t.Errorf("%s: %d answers from 2 processes", subject, n)
		}
	}
	instances := map[string]bool{}
	for _, data := range ask(t, nc, "$SRV.INFO.echo", 2) {
		var info micro.Info
		if err := json.Unmarshal(data, &info); err != nil {
			t.Fatal(err)
		}
		if !ids[info.ID] || info.Type != micro.InfoResponseType || info.Version != service.Build().Version {
			t.Errorf("info %+v, ids %v", info, ids)
		}
		instances[info.Metadata["instance"]] = true
		if info.Metadata["handlers"] != "4" || info.Metadata["pipelines"] != "2" || info.Metadata["revision"] == "" {
			t.Errorf("metadata %v", info.Metadata)
		}
		if len(info.Endpoints) != 2 || info.Endpoints[0].Subject != "test.e" || info.Endpoints[0].QueueGroup != "echo" ||
			info.Endpoints[1].Metadata["batched"] != "true" {
			t.Errorf("endpoints %+v", info.Endpoints)
		}
		// Each instance answers on its own id too.
		var ping micro.Ping
		if answers := ask(t, nc, "$SRV.PING.echo."+info.ID, 1); len(answers) != 1 {
			t.Errorf("%d answers on the id's subject", len(answers))
		} else if err := json.Unmarshal(answers[0], &ping); err != nil || ping.ID != info.ID || ping.Type != micro.PingResponseType {
			t.Errorf("ping %s: %+v, %v", answers[0], ping, err)
		}
	}
	if len(instances) != 2 || !instances["pod-a"] || !instances["pod-b"] {
		t.Errorf("instances %v", instances)
	}
}

// A request answered badly is still counted: an error without a code is
// refused and not sent, an answer that cannot be sent is an internal
// error, a second answer is sent but not counted again.
func TestStatsCountFailedAnswers(t *testing.T) {
	s := runNATS(t, server.Options{})
	nc := connect(t, s)
	reg := prometheus.NewRegistry()
	eps, err := service.StartEndpoints(nc, service.EndpointsConfig{Name: "echo", Group: "test", Registerer: reg},
		[]service.Endpoint{{Name: "e", Subject: "e", Handler: func(req micro.Request) {
			if err := req.Error("", "", nil); err == nil {
				t.Error("an error without a code was sent")
			}
			if err := req.RespondJSON(func() {}); err == nil {
				t.Error("a reply that cannot be encoded was sent")
			}
			_ = req.Error("teapot", "not a status", nil)
			_ = req.Respond([]byte("again"))
		}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eps.Stop)
	msg, err := nc.Request("test.e", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if msg.Header.Get(micro.ErrorCodeHeader) != "teapot" {
		t.Errorf("first answer %v", msg.Header)
	}
	// No reply subject: the answer fails.
	if err := nc.Publish("test.e", nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	var st []micro.Stats
	for {
		st = statsOf(t, nc, "echo", 1)
		if len(st) == 1 && st[0].Endpoints[0].NumRequests == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	ep := st[0].Endpoints[0]
	if ep.NumRequests != 2 || ep.NumErrors != 2 || !strings.Contains(ep.LastError, "teapot") {
		t.Errorf("stats %+v", ep)
	}
	if diff := cmp.Diff(map[string]int{"internal": 2}, histogramCounts(t, reg, "e")); diff != "" {
		t.Errorf("histogram (-want +got):\n%s", diff)
	}
}

// Bad configurations are refused before anything is served.
func TestStartEndpointsRefusesBadConfig(t *testing.T) {
	s := runNATS(t, server.Options{})
	nc := connect(t, s)
	ok := func(micro.Request) {}
	for name, c := range map[string]struct {
		cfg service.EndpointsConfig
		eps []service.Endpoint
	}{
		"service name": {service.EndpointsConfig{Name: "bad name!"}, nil},
		"version":      {service.EndpointsConfig{Name: "echo", Version: "latest"}, nil},
		"endpoint":     {service.EndpointsConfig{Name: "echo"}, []service.Endpoint{{Name: "a.b", Subject: "x", Handler: ok}}},
		"no handler":   {service.EndpointsConfig{Name: "echo"}, []service.Endpoint{{Name: "a", Subject: "x"}}},
		"subject":      {service.EndpointsConfig{Name: "echo"}, []service.Endpoint{{Name: "a", Subject: "x y", Handler: ok}}},
		"registerer": {service.EndpointsConfig{Name: "echo", Registerer: conflicting(t)},
			[]service.Endpoint{{Name: "a", Subject: "x", Handler: ok}}},
	} {
		if eps, err := service.StartEndpoints(nc, c.cfg, c.eps, nil); err == nil {
			eps.Stop()
			t.Errorf("%s: started", name)
		}
	}
	// Nothing was left subscribed.
	if n := len(ask(t, nc, "$SRV.PING.echo", 0)); n != 0 {
		t.Errorf("%d answers after failed starts", n)
	}
}

// conflicting is a registry whose allot_request_duration_seconds is of
// another shape.
func conflicting(t *testing.T) prometheus.Registerer {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "allot_request_duration_seconds", Help: "x"}))
	return reg
}

// Two services in one process share the histogram; a service started
// again on the same registry keeps counting in its own.
func TestRequestDurationsShared(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := service.RequestDurations(reg, "meter")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := service.RequestDurations(reg, "registry"); err != nil {
		t.Fatal(err)
	}
	again, err := service.RequestDurations(reg, "meter")
	if err != nil || again != a {
		t.Errorf("registering the meter's again: %v, same %v", err, again == a)
	}
	a.WithLabelValues("credit", service.OutcomeOK).Observe(0.001)
	if n := testutil.CollectAndCount(reg, "allot_request_duration_seconds"); n != 1 {
		t.Errorf("%d series", n)
	}
	if h, err := service.RequestDurations(nil, "x"); h != nil || err != nil {
		t.Errorf("nil registerer: %v %v", h, err)
	}
}

// Stop answers the requests a handler holds or has queued, and returns
// once they are answered; afterwards nothing serves the endpoint.
func TestStopAnswersWhatHandlersHold(t *testing.T) {
	s := runNATS(t, server.Options{})
	nc := connect(t, s)
	gate, entered := make(chan struct{}), make(chan struct{}, 10)
	eps, err := service.StartEndpoints(nc, service.EndpointsConfig{Name: "echo", Group: "test", Handlers: 1},
		[]service.Endpoint{{Name: "e", Subject: "e", Handler: func(req micro.Request) {
			entered <- struct{}{}
			<-gate
			_ = req.Respond(req.Data())
		}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	client := connect(t, s)
	replies := make(chan error, 3)
	for i := range 3 {
		go func() {
			_, err := client.Request("test.e", []byte{byte('a' + i)}, 5*time.Second)
			replies <- err
		}()
	}
	<-entered
	deadline := time.Now().Add(5 * time.Second)
	for inFlight(t, nc) < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	stopped := make(chan struct{})
	go func() { eps.Stop(); close(stopped) }()
	close(gate)
	<-stopped
	for range 3 {
		if err := <-replies; err != nil {
			t.Error(err)
		}
	}
	if _, err := client.Request("test.e", nil, time.Second); err == nil {
		t.Error("a request after Stop was answered")
	}
}

// inFlight is the echo service's requests in flight, from $SRV.STATS.
func inFlight(t *testing.T, nc *nats.Conn) int {
	t.Helper()
	n := 0
	for _, st := range statsOf(t, nc, "echo", 1) {
		for _, ep := range st.Endpoints {
			var data struct {
				InFlight int `json:"in_flight"`
			}
			if err := json.Unmarshal(ep.Data, &data); err != nil {
				t.Fatal(err)
			}
			n += data.InFlight
		}
	}
	return n
}

// An answer the connection can no longer send is counted as an error,
// and Stop on a closed connection returns.
func TestStatsCountUnsentAnswers(t *testing.T) {
	s := runNATS(t, server.Options{})
	nc := connect(t, s)
	gate, entered, answered := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	eps, err := service.StartEndpoints(nc, service.EndpointsConfig{Name: "echo", Group: "test"},
		[]service.Endpoint{{Name: "e", Subject: "e", Handler: func(req micro.Request) {
			close(entered)
			<-gate
			answered <- req.Respond([]byte("late"))
		}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := connect(t, s).PublishRequest("test.e", "reply.1", nil); err != nil {
		t.Fatal(err)
	}
	<-entered
	nc.Close()
	close(gate)
	if err := <-answered; !errors.Is(err, micro.ErrRespond) {
		t.Errorf("answering on a closed connection: %v", err)
	}
	ep := eps.Stats().Endpoints[0]
	if ep.NumRequests != 1 || ep.NumErrors != 1 || !strings.Contains(ep.LastError, "closed") {
		t.Errorf("stats %+v", ep)
	}
	eps.Stop()
}
