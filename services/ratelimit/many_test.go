package ratelimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go/micro"
)

// Calls batched by the client are decided as if they had come alone: the
// same windows, the limit held exactly, each its own answer and error.
func TestClientBatchingDecidesAsAlone(t *testing.T) {
	e := startEnv(t, testConfig())
	batching, err := events.NewClient(e.nc, events.ClientOptions{Timeout: 5 * time.Second,
		Batch: events.BatchOptions{Enabled: true, MaxWait: 2 * time.Millisecond, MaxSize: 32}})
	if err != nil {
		t.Fatal(err)
	}
	const uids, each = 20, 8
	type result struct {
		uid string
		r   events.CheckReply
		err error
	}
	results := make(chan result, uids*each+uids)
	var wg sync.WaitGroup
	for i := range uids * each {
		uid := fmt.Sprintf("u-%d", i%uids)
		wg.Go(func() {
			r, err := batching.Check(t.Context(), uid, events.CheckRequest{Service: "upload"})
			results <- result{uid, r, err}
		})
		if i%each == 0 { // a bad neighbour in every batch or so
			wg.Go(func() {
				_, err := batching.Check(t.Context(), uid, events.CheckRequest{Service: "nope"})
				results <- result{"nope", events.CheckReply{}, err}
			})
		}
	}
	wg.Wait()
	close(results)
	allowed := map[string][]int64{}
	for res := range results {
		switch {
		case res.uid == "nope":
			var serr *events.ServiceError
			if !errors.Is(res.err, events.ErrNotFound) || !errors.As(res.err, &serr) || serr.Field != "service" {
				t.Errorf("unknown service: %v, want its own 404", res.err)
			}
		case res.err != nil:
			t.Errorf("%s: %v", res.uid, res.err)
		case res.r.Allowed:
			allowed[res.uid] = append(allowed[res.uid], res.r.Remaining)
		}
	}
	for i := range uids {
		uid := fmt.Sprintf("u-%d", i)
		if got := allowed[uid]; len(got) != 3 || sumOf(got) != 3 {
			t.Errorf("%s: allowed with remaining %v, want exactly 3 (2, 1, 0) of the upload limit", uid, got)
		}
	}
	// The same window alone: every uid is spent.
	if r := e.check("u-0", "upload", ptr(0)); r.Allowed || r.Remaining != 0 {
		t.Errorf("alone after the batches: %+v", r)
	}
	// And the batches did travel as batches.
	if n := endpointRequests(t, e, "check_many"); n == 0 {
		t.Error("no batch message reached check_many")
	}
}

// A batch message sent by hand: each request answered in its place, the
// bad ones refused alone.
func TestBatchMessageToTheLimiter(t *testing.T) {
	e := startEnv(t, testConfig())
	body := `{"requests":[{"uid":"u-1","body":{"service":"upload"}},{"uid":"u-1","body":{"service":"upload","cost":-1}},` +
		`{"uid":"u-2","body":{"servic":"upload"}},{"uid":"u-1","body":{"service":"upload","cost":0}},{"uid":"u 3"}]}`
	msg, err := e.nc.Request(e.cfg.Subjects.CheckMany(events.ScopeAll), []byte(body), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var reply events.BatchReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil || len(reply.Replies) != 5 {
		t.Fatalf("%s: %v", msg.Data, err)
	}
	wantStatus := []int{200, 400, 400, 200, 400}
	for i, r := range reply.Replies {
		if r.Status != wantStatus[i] {
			t.Errorf("request %d: %d %s, want %d", i, r.Status, r.Body, wantStatus[i])
		}
	}
	var peek events.CheckReply
	if err := json.Unmarshal(reply.Replies[3].Body, &peek); err != nil || peek.Remaining != 2 {
		t.Errorf("the peek after one upload: %s", reply.Replies[3].Body)
	}
	// A uid-scoped batch refuses another uid's request, alone.
	msg, err = e.nc.Request(e.cfg.Subjects.CheckMany("u-1"), []byte(`{"requests":[{"uid":"u-2","body":{"service":"upload"}},{"uid":"u-1","body":{"service":"upload"}}]}`), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Replies[0].Status != 400 || reply.Replies[1].Status != 200 {
		t.Errorf("scoped batch: %s", msg.Data)
	}
}

func sumOf(xs []int64) int64 {
	var n int64
	for _, x := range xs {
		n += x
	}
	return n
}

// endpointRequests is num_requests of one endpoint in $SRV.STATS.
func endpointRequests(t *testing.T, e *env, endpoint string) int {
	t.Helper()
	msg, err := e.nc.Request("$SRV.STATS.ratelimit", nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var stats micro.Stats
	if err := json.Unmarshal(msg.Data, &stats); err != nil {
		t.Fatal(err)
	}
	for _, ep := range stats.Endpoints {
		if ep.Name == endpoint {
			return ep.NumRequests
		}
	}
	t.Fatalf("no endpoint %s in %s", endpoint, msg.Data)
	return 0
}
