package service_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// echoReply is what the echo batch function answers.
type echoReply struct {
	UID  string `json:"uid"`
	Echo string `json:"echo"`
}

// echoRequest is its request: fail makes it a 404.
type echoRequest struct {
	Say  string `json:"say"`
	Fail bool   `json:"fail"`
}

func (echoRequest) Validate() error { return nil }

// startEcho serves test.echo.<uid> batched, with its batch messages on
// test.echo_many.<scope>, and returns the sizes of the batches it served.
func startEcho(t *testing.T, nc *nats.Conn) func() []int {
	t.Helper()
	var mu sync.Mutex
	var sizes []int
	serve := func(reqs []micro.Request) {
		mu.Lock()
		sizes = append(sizes, len(reqs))
		mu.Unlock()
		for _, req := range reqs {
			uid, err := events.ParseUID(req.Subject(), "test.echo")
			var body echoRequest
			if err == nil {
				err = events.DecodeRequest(req.Data(), &body)
			}
			switch {
			case err != nil:
				_ = events.RespondError(req, err)
			case body.Fail:
				_ = events.RespondError(req, events.NewServiceError(events.CodeNotFound, "say", "no %q here", body.Say))
			default:
				_ = events.Respond(req, echoReply{UID: uid, Echo: body.Say})
			}
		}
	}
	eps, err := service.StartEndpoints(nc, service.EndpointsConfig{Name: "echo", Version: "0.0.1", Group: "test", Handlers: 2, Pipelines: 1},
		[]service.Endpoint{{Name: "echo", Subject: "echo.*", Batch: serve, Many: "echo_many"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eps.Stop)
	return func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), sizes...)
	}
}

func TestBatchMessages(t *testing.T) {
	nc := connectNATS(t)
	sizes := startEcho(t, nc)

	// One of each kind of request, in one batch: each answered in its
	// place, the bad ones with their own errors.
	body := `{"requests":[
		{"uid":"u-1","body":{"say":"a"}},
		{"uid":"u 2","body":{"say":"b"}},
		{"uid":"u-3","body":{"say":"c","fail":true}},
		{"uid":"u-4"},
		{"uid":"u-5","body":{"sya":"typo"}},
		{"uid":"u-6","body":null},
		{"uid":"u-7","body":{"say":"x","say":"y"}},
		{"uid":"dead","body":{}},
		{"uid":"u-9","body":{"say":"last"}}]}`
	want := []struct {
		status int
		field  string
		echo   string
	}{{200, "", "a"}, {400, "uid", ""}, {404, "say", ""}, {200, "", ""}, {400, "sya", ""}, {400, "request", ""}, {400, "say", ""}, {400, "uid", ""}, {200, "", "last"}}
	got := batch(t, nc, "test.echo_many."+events.ScopeAll, body)
	if len(got) != len(want) {
		t.Fatalf("%d results for %d requests", len(got), len(want))
	}
	for i, w := range want {
		r := got[i]
		if r.Status != w.status {
			t.Errorf("request %d: status %d (%s), want %d", i, r.Status, r.Body, w.status)
			continue
		}
		if w.status != 200 {
			if err := r.Err(); err == nil {
				t.Errorf("request %d: no error from status %d", i, r.Status)
			} else if f := fieldOf(err); f != w.field {
				t.Errorf("request %d: error %v names %q, want %q", i, err, f, w.field)
			}
			continue
		}
		var e echoReply
		if err := json.Unmarshal(r.Body, &e); err != nil || e.Echo != w.echo || e.UID != fmt.Sprintf("u-%d", i+1) {
			t.Errorf("request %d: %s (%v), want %q for u-%d", i, r.Body, err, w.echo, i+1)
		}
	}
	// The batch function served the requests as one batch, in their
	// order: 8 of the 9 (the uid that is no token never got there; "dead"
	// is a token, which the endpoint refuses as a reserved uid).
	if got := sizes(); len(got) != 1 || got[0] != 8 {
		t.Errorf("the batch function served batches of %v, want one of 8", got)
	}

	// A batch scoped to a uid carries that uid's requests only.
	got = batch(t, nc, "test.echo_many.u-1", `{"requests":[{"uid":"u-1","body":{"say":"mine"}},{"uid":"u-2","body":{"say":"theirs"}}]}`)
	if got[0].Status != 200 || got[1].Status != 400 || fieldOf(got[1].Err()) != "uid" || !strings.Contains(string(got[1].Body), "scope") {
		t.Errorf("scoped batch: %+v", got)
	}
}

func TestBatchMessageRefused(t *testing.T) {
	nc := connectNATS(t)
	startEcho(t, nc)
	many := make([]string, events.MaxBatchRequests+1)
	for i := range many {
		many[i] = `{"uid":"u"}`
	}
	for name, c := range map[string]struct{ subject, body, field string }{
		"not JSON":      {"test.echo_many.~all", `{"requests":[`, "request"},
		"null":          {"test.echo_many.~all", `null`, "request"},
		"empty":         {"test.echo_many.~all", ``, "requests"},
		"no requests":   {"test.echo_many.~all", `{"requests":[]}`, "requests"},
		"too many":      {"test.echo_many.~all", `{"requests":[` + strings.Join(many, ",") + `]}`, "requests"},
		"unknown field": {"test.echo_many.~all", `{"requests":[{"uid":"u"}],"extra":1}`, "extra"},
		"twice":         {"test.echo_many.~all", `{"requests":[{"uid":"u"}],"requests":[]}`, "requests"},
		"item twice":    {"test.echo_many.~all", `{"requests":[{"uid":"u","uid":"v"}]}`, "requests[0].uid"},
		"item array":    {"test.echo_many.~all", `{"requests":[["u"]]}`, "requests[0]"},
		"uid number":    {"test.echo_many.~all", `{"requests":[{"uid":1}]}`, "requests[0].uid"},
		"item unknown":  {"test.echo_many.~all", `{"requests":[{"uid":"u","cost":1}]}`, "requests[0].cost"},
		"not an object": {"test.echo_many.~all", `[]`, "request"},
		"trailing":      {"test.echo_many.~all", `{"requests":[{"uid":"u"}]} {}`, "request"},
		"bad scope":     {"test.echo_many.~any", `{"requests":[{"uid":"u"}]}`, "scope"},
		"too large":     {"test.echo_many.~all", `{"requests":[{"uid":"u","body":{"say":"` + strings.Repeat("x", events.MaxBatchBytes) + `"}}]}`, "request"},
	} {
		msg, err := nc.Request(c.subject, []byte(c.body), 2*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		serr := events.DecodeServiceError(msg)
		if serr == nil || serr.Status != 400 || serr.Field != c.field {
			t.Errorf("%s: %+v (%s), want a 400 on %q", name, serr, msg.Data, c.field)
		}
	}
}

func TestBatchMessageStats(t *testing.T) {
	nc := connectNATS(t)
	startEcho(t, nc)
	batch(t, nc, "test.echo_many.~all", `{"requests":[{"uid":"u-1"},{"uid":"u-2","body":{"fail":true}},{"uid":"!"}]}`)
	batch(t, nc, "test.echo_many.~all", `{"requests":[{"uid":"u-1"}]}`)
	if _, err := nc.Request("test.echo_many.~all", []byte(`{}`), time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Request("test.echo.u-1", nil, time.Second); err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request("$SRV.STATS.echo", nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var stats micro.Stats
	if err := json.Unmarshal(msg.Data, &stats); err != nil {
		t.Fatal(err)
	}
	want := map[string][2]int{"echo": {5, 2}, "echo_many": {3, 1}} // requests, errors
	for _, ep := range stats.Endpoints {
		if w, ok := want[ep.Name]; !ok || ep.NumRequests != w[0] || ep.NumErrors != w[1] {
			t.Errorf("%s: %d requests, %d errors; want %v", ep.Name, ep.NumRequests, ep.NumErrors, w)
		}
		delete(want, ep.Name)
	}
	if len(want) > 0 {
		t.Errorf("no stats for %v", want)
	}
}

func TestBatchNeedsABatchFunction(t *testing.T) {
	nc := connectNATS(t)
	for name, ep := range map[string]service.Endpoint{
		"handler":    {Name: "a", Subject: "a.*", Handler: func(micro.Request) {}, Many: "a_many"},
		"no uid":     {Name: "a", Subject: "a", Batch: func([]micro.Request) {}, Many: "a_many"},
		"bad name":   {Name: "a", Subject: "a.*", Batch: func([]micro.Request) {}, Many: "a.many"},
		"empty name": {Name: "a", Subject: "a.*", Batch: func([]micro.Request) {}, Many: "a many"},
	} {
		if eps, err := service.StartEndpoints(nc, service.EndpointsConfig{Name: "x", Version: "0.0.1", Group: "g"}, []service.Endpoint{ep}, nil); err == nil {
			eps.Stop()
			t.Errorf("%s: started", name)
		}
	}
}

// connectNATS connects to an embedded NATS server of the test's own.
func connectNATS(t *testing.T) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(runNATS(t, server.Options{}).ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// batch sends a batch message and returns its results.
func batch(t *testing.T, nc *nats.Conn, subject, body string) []events.BatchResult {
	t.Helper()
	msg, err := nc.Request(subject, []byte(body), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if serr := events.DecodeServiceError(msg); serr != nil {
		t.Fatalf("batch refused: %v", serr)
	}
	var reply events.BatchReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		t.Fatalf("%s: %v", msg.Data, err)
	}
	return reply.Replies
}

// fieldOf is the field a service error names.
func fieldOf(err error) string {
	if serr, ok := err.(*events.ServiceError); ok {
		return serr.Field
	}
	return ""
}
