package service_test

import (
	"encoding/json"
	"errors"
	"strconv"
	"sync"
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

// gatedBatch is a batch function that answers each request with its own
// body, or a 400 naming "n" for a body "bad", and holds every batch until
// the gate opens.
type gatedBatch struct {
	gate     chan struct{}
	entered  chan int
	replier  service.Replier
	mu       sync.Mutex
	sizes    []int
	observed []int // what ObserveBatch was told
}

func (g *gatedBatch) serve(reqs []micro.Request) {
	g.entered <- len(reqs)
	<-g.gate
	g.mu.Lock()
	g.sizes = append(g.sizes, len(reqs))
	g.mu.Unlock()
	for _, r := range reqs {
		if string(r.Data()) == "bad" {
			g.replier.Reply(r, "echo", nil, events.BadRequest(&events.ValidationError{Field: "n", Rule: "must not be bad"}))
			continue
		}
		g.replier.ReplyBytes(r, "echo", r.Data(), nil)
	}
}

func startBatched(t *testing.T, handlers, pipelines int) (*nats.Conn, *service.Endpoints, *gatedBatch, *prometheus.CounterVec) {
	t.Helper()
	s := runNATS(t, server.Options{})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "requests_total", Help: "x"}, []string{"endpoint", "result"})
	g := &gatedBatch{gate: make(chan struct{}), entered: make(chan int, 100), replier: service.Replier{Requests: requests}}
	eps, err := service.StartEndpoints(nc, service.EndpointsConfig{Name: "echo", Version: "0.0.1", Group: "test", Handlers: handlers, Pipelines: pipelines,
		ObserveBatch: func(endpoint string, n int) {
			g.mu.Lock()
			defer g.mu.Unlock()
			if endpoint == "echo" {
				g.observed = append(g.observed, n)
			}
		}},
		[]service.Endpoint{{Name: "echo", Subject: "echo.*", Batch: g.serve}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eps.Stop)
	return nc, eps, g, requests
}

// send sends n requests at once and returns their replies by body.
func send(t *testing.T, nc *nats.Conn, bodies []string) chan error {
	t.Helper()
	errs := make(chan error, len(bodies))
	for i, body := range bodies {
		go func() {
			msg, err := nc.Request("test.echo.u-"+strconv.Itoa(i), []byte(body), 5*time.Second)
			switch {
			case err != nil:
				errs <- err
			case body == "bad":
				if serr := events.DecodeServiceError(msg); serr == nil || serr.Status != 400 || serr.Field != "n" {
					errs <- errors.New("bad: got " + string(msg.Data))
					return
				}
				errs <- nil
			case string(msg.Data) != body || events.DecodeServiceError(msg) != nil:
				errs <- errors.New(body + ": got " + string(msg.Data))
			default:
				errs <- nil
			}
		}()
	}
	return errs
}

func TestBatchedEndpointGathersWhatArrivesWhileBusy(t *testing.T) {
	nc, _, g, requests := startBatched(t, 3, 1)
	// The first request takes the only pipeline and waits at the gate;
	// the next ones queue up behind it and must come as one batch.
	first := send(t, nc, []string{"first"})
	if n := <-g.entered; n != 1 {
		t.Fatalf("first batch of %d", n)
	}
	bodies := []string{"bad"}
	for i := range 19 {
		bodies = append(bodies, "r"+strconv.Itoa(i))
	}
	rest := send(t, nc, bodies)
	// Wait until the server has delivered all of them into the queue:
	// the requests in flight in $SRV.STATS say so.
	deadline := time.Now().Add(5 * time.Second)
	for queued(t, nc) < 21 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	close(g.gate)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for range bodies {
		if err := <-rest; err != nil {
			t.Error(err)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.sizes) != 2 || g.sizes[1] != 20 {
		t.Errorf("batch sizes %v, want [1 20]", g.sizes)
	}
	if len(g.observed) != 2 || g.observed[1] != 20 {
		t.Errorf("ObserveBatch saw %v, want [1 20]", g.observed)
	}
	if ok, bad := testutil.ToFloat64(requests.WithLabelValues("echo", "ok")), testutil.ToFloat64(requests.WithLabelValues("echo", "bad_request")); ok != 20 || bad != 1 {
		t.Errorf("counted %v ok and %v bad requests, want 20 and 1", ok, bad)
	}
}

// queued sums the requests the echo service's instances have taken in
// and not answered yet, from the data of $SRV.STATS.
func queued(t *testing.T, nc *nats.Conn) int {
	t.Helper()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$SRV.STATS.echo", inbox, nil); err != nil {
		t.Fatal(err)
	}
	total := 0
	for {
		msg, err := sub.NextMsg(100 * time.Millisecond)
		if err != nil {
			return total
		}
		var stats micro.Stats
		if err := json.Unmarshal(msg.Data, &stats); err != nil {
			t.Fatal(err)
		}
		for _, e := range stats.Endpoints {
			var data struct {
				InFlight int `json:"in_flight"`
			}
			if err := json.Unmarshal(e.Data, &data); err != nil {
				t.Fatal(err)
			}
			total += data.InFlight
		}
	}
}

func TestBatchedEndpointStopAnswersWhatIsQueued(t *testing.T) {
	nc, eps, g, _ := startBatched(t, 1, 1)
	first := send(t, nc, []string{"first"})
	<-g.entered
	rest := send(t, nc, []string{"a", "b", "c"})
	deadline := time.Now().Add(5 * time.Second)
	for queued(t, nc) < 4 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	stopped := make(chan struct{})
	go func() { eps.Stop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("Stop returned with a batch still being served")
	case <-time.After(50 * time.Millisecond):
	}
	close(g.gate)
	<-stopped
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-rest; err != nil {
			t.Error(err)
		}
	}
}

func TestEndpointWithHandlerAndBatchIsRefused(t *testing.T) {
	s := runNATS(t, server.Options{})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	_, err = service.StartEndpoints(nc, service.EndpointsConfig{Name: "echo", Group: "test", Handlers: 1}, []service.Endpoint{
		{Name: "ok", Subject: "ok", Batch: func([]micro.Request) {}},
		{Name: "both", Subject: "both", Handler: func(micro.Request) {}, Batch: func([]micro.Request) {}},
	}, nil)
	if err == nil {
		t.Fatal("an endpoint with both a handler and a batch function started")
	}
}

func TestDetachedAnswers(t *testing.T) {
	s := runNATS(t, server.Options{})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	sub, err := nc.SubscribeSync("reply.>")
	if err != nil {
		t.Fatal(err)
	}
	r := service.NewDetached(nc, "x.y", "reply.1", []byte("body"), micro.Headers{"K": {"v"}})
	if r.Subject() != "x.y" || r.Reply() != "reply.1" || string(r.Data()) != "body" || r.Headers().Get("K") != "v" {
		t.Errorf("detached request reads back %q %q %q %v", r.Subject(), r.Reply(), r.Data(), r.Headers())
	}
	if err := r.RespondJSON(map[string]int{"n": 1}, micro.WithHeaders(micro.Headers{"X": {"1"}})); err != nil {
		t.Fatal(err)
	}
	msg, err := sub.NextMsg(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(msg.Data) != `{"n":1}` || msg.Header.Get("X") != "1" {
		t.Errorf("reply %q %v", msg.Data, msg.Header)
	}
	if err := events.RespondError(r, events.NewServiceError(events.CodeOverLimit, "amount", "too much")); err != nil {
		t.Fatal(err)
	}
	if msg, err = sub.NextMsg(time.Second); err != nil {
		t.Fatal(err)
	}
	if serr := events.DecodeServiceError(msg); serr == nil || serr.Status != 429 || serr.Field != "amount" {
		t.Errorf("error reply decodes as %+v", serr)
	}
	// Bad use gets an error, not a publish.
	if err := r.Error("", "", nil); err == nil {
		t.Error("an error reply without a code was sent")
	}
	if err := r.RespondJSON(func() {}); err == nil {
		t.Error("a reply that cannot be encoded was sent")
	}
	if err := service.NewDetached(nc, "x.y", "", nil, nil).Respond([]byte("x")); err == nil {
		t.Error("a reply to a request without a reply subject was sent")
	}
	nc.Close()
	if err := r.Respond([]byte("x")); !errors.Is(err, micro.ErrRespond) {
		t.Errorf("answering on a closed connection: %v", err)
	}
}
