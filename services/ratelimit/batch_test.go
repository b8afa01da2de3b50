package ratelimit

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// call is one check of a batch: its subject's uid and its body.
type call struct{ uid, body string }

// answer is a check's reply or its error, as the caller sees it.
type answer struct {
	Reply  events.CheckReply
	Status int
	Field  string
}

// batch hands calls to the check endpoint's batch function as one batch,
// as the batcher would, and returns their answers in order; each call
// must be answered once.
func (e *env) batch(calls ...call) []answer {
	e.t.Helper()
	inbox := e.nc.NewInbox()
	sub, err := e.nc.SubscribeSync(inbox + ".*")
	if err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	reqs := make([]micro.Request, len(calls))
	for i, c := range calls {
		reqs[i] = service.NewDetached(e.nc, e.cfg.Subjects.Check(c.uid), inbox+"."+strconv.Itoa(i), []byte(c.body), nil)
	}
	e.lim.handleChecks(reqs)
	out := make([]answer, len(calls))
	seen := make([]bool, len(calls))
	for range calls {
		msg, err := sub.NextMsg(2 * time.Second)
		if err != nil {
			e.t.Fatalf("waiting for answers: %v", err)
		}
		i, _ := strconv.Atoi(msg.Subject[len(inbox)+1:])
		if seen[i] {
			e.t.Fatalf("call %d answered twice", i)
		}
		seen[i] = true
		out[i] = decodeAnswer(e.t, msg)
	}
	if msg, err := sub.NextMsg(50 * time.Millisecond); err == nil {
		e.t.Errorf("an extra answer: %s %q", msg.Subject, msg.Data)
	}
	return out
}

func decodeAnswer(t *testing.T, msg *nats.Msg) answer {
	t.Helper()
	if serr := events.DecodeServiceError(msg); serr != nil {
		return answer{Status: serr.Status, Field: serr.Field}
	}
	var a answer
	if err := json.Unmarshal(msg.Data, &a.Reply); err != nil {
		t.Fatalf("reply %q: %v", msg.Data, err)
	}
	a.Status = 200
	return a
}

// batchSizes returns how many batches were served and how many checks
// they held, from allot_ratelimit_batch_size.
func (e *env) batchSizes() (batches uint64, checks float64) {
	e.t.Helper()
	batches, checks, err := histogramOf(e.reg, "allot_ratelimit_batch_size")
	if err != nil {
		e.t.Fatal(err)
	}
	return batches, checks
}

// histogramOf returns the sample count and sum of the histogram name
// (without labels) in g; zero if it has none yet.
func histogramOf(g prometheus.Gatherer, name string) (count uint64, sum float64, err error) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum(), nil
		}
	}
	return 0, 0, nil
}

// Checks arriving at once over NATS are decided in batches exactly as
// they would be one by one: of 3x the limit on one (uid, service),
// exactly the limit is admitted and the rest refused with a retry time.
// With one pipeline and Redis held back, the checks that queue up
// behind the first batch must go together in the next.
func TestConcurrentChecksOverNATS(t *testing.T) {
	for _, held := range []bool{false, true} {
		t.Run(fmt.Sprintf("held=%v", held), func(t *testing.T) {
			const limit = 20
			cfg := testConfig()
			cfg.RateLimit.Timeout = 5 * time.Second // the held batch must not fail
			cfg.RateLimit.Services["burst"] = Service{Limit: ptr(limit), Interval: time.Minute}
			proxy := &hangProxy{}
			if held {
				cfg.RateLimit.Pipelines = 1
			}
			e := startEnvVia(t, cfg, proxy)
			proxy.hold.Store(held)
			var wg sync.WaitGroup
			replies := make([]events.CheckReply, 3*limit)
			errs := make([]error, len(replies))
			for i := range replies {
				wg.Go(func() {
					replies[i], errs[i] = e.client.Check(t.Context(), "u-1", events.CheckRequest{Service: "burst"})
				})
			}
			if held {
				// The first batch is in Redis; let the rest queue up.
				for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
					if n, _ := e.batchSizes(); n > 0 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("no batch started")
					}
				}
				time.Sleep(200 * time.Millisecond)
				proxy.hold.Store(false)
			}
			wg.Wait()
			allowed := 0
			for i, r := range replies {
				switch {
				case errs[i] != nil:
					t.Fatalf("check %d: %v", i, errs[i])
				case r.Allowed:
					allowed++
				case r.RetryAfterMs <= 0 || r.Remaining != 0 || r.Limit != limit:
					t.Errorf("check %d refused without a retry time: %+v", i, r)
				}
			}
			if allowed != limit {
				t.Errorf("%d allowed of %d, want exactly %d", allowed, len(replies), limit)
			}
			if a, d := e.decisions("burst", "allowed"), e.decisions("burst", "denied"); a != limit || d != 2*limit {
				t.Errorf("counted %v allowed and %v denied, want %d and %d", a, d, limit, 2*limit)
			}
			if n := e.mr.HGet(evenOrOdd(e, "u-1", "burst"), "n"); n != strconv.Itoa(limit) {
				t.Errorf("the window holds %q, want %d", n, limit)
			}
			batches, checks := e.batchSizes()
			if checks != float64(len(replies)) {
				t.Errorf("batches held %v checks, want %d", checks, len(replies))
			}
			t.Logf("%d checks in %d batches", len(replies), batches)
			if held && batches >= uint64(len(replies)) {
				t.Errorf("%d checks in %d batches: the queued checks were not batched", len(replies), batches)
			}
		})
	}
}

// One batch holding every kind of check answers each as Check alone
// would: bad requests and an unknown service without Redis, a cached
// refusal from the cache, a shadow service allowing what it counts as
// denied, and the rest decided in order.
func TestBatchAnswersEachCheck(t *testing.T) {
	e := startEnv(t, testConfig())
	for range 3 {
		e.check("u-1", "feed", nil) // the 3rd of 2 is refused and cached
	}
	e.advance(10 * time.Second)
	ownReset := 300_000 - e.clock.Now().UnixMilli()%300_000 // the uid's own limit: 300s windows
	feedWindow := e.mr.HGet(evenOrOdd(e, "u-1", "feed"), "n")
	got := e.batch(
		call{"u-1", `{"service":"upload","cost":-1}`},
		call{"u!1", `{"service":"upload"}`},
		call{"u-1", `{`},
		call{"u-1", `{"service":"video"}`},
		call{"u-1", `{"service":"feed"}`},
		call{"u-2", `{"service":"preview"}`},
		call{"u-2", `{"service":"preview"}`},
		call{"u-3", `{"service":"upload"}`},
		call{"u-3", `{"service":"upload","cost":2}`},
		call{"u-3", `{"service":"upload"}`},
		call{"u-3", `{"cost":0}`},
	)
	want := []answer{
		{Status: 400, Field: "cost"},
		{Status: 400, Field: "uid"},
		{Status: 400, Field: "request"},
		{Status: 404, Field: "service"},
		{Status: 200, Reply: events.CheckReply{Limit: 2, RetryAfterMs: 50000, ResetAfterMs: 50000}}, // cached
		{Status: 200, Reply: events.CheckReply{Allowed: true, Limit: 1, ResetAfterMs: 50000}},       // shadow, 1 of 1
		{Status: 200, Reply: events.CheckReply{Allowed: true, Limit: 1, ResetAfterMs: 50000}},       // shadow, over
		{Status: 200, Reply: events.CheckReply{Allowed: true, Limit: 3, Remaining: 2, ResetAfterMs: 50000}},
		{Status: 200, Reply: events.CheckReply{Allowed: true, Limit: 3, Remaining: 0, ResetAfterMs: 50000}},
		{Status: 200, Reply: events.CheckReply{Limit: 3, ResetAfterMs: 50000, RetryAfterMs: 50000}},
		{Status: 200, Reply: events.CheckReply{Allowed: true, Limit: 500, Remaining: 500, ResetAfterMs: ownReset}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
	if n := testutil.ToFloat64(e.lim.metrics.cacheHits.WithLabelValues("feed")); n != 1 {
		t.Errorf("cache hits %v, want 1", n)
	}
	if n := e.mr.HGet(evenOrOdd(e, "u-1", "feed"), "n"); n != feedWindow {
		t.Errorf("the cached refusal reached Redis: window %q, was %q", n, feedWindow)
	}
	for _, c := range []struct {
		svc, result string
		want        float64
	}{
		{"feed", "denied", 2}, {"preview", "allowed", 1}, {"preview", "shadow_denied", 1},
		{"upload", "allowed", 2}, {"upload", "denied", 1},
	} {
		if n := e.decisions(c.svc, c.result); n != c.want {
			t.Errorf("%s %s: %v, want %v", c.svc, c.result, n, c.want)
		}
	}
	if n := testutil.ToFloat64(e.lim.metrics.peeks.WithLabelValues("(uid)")); n != 1 {
		t.Errorf("peeks %v, want 1", n)
	}
	for result, want := range map[events.ErrorCode]float64{"ok": 7 + 3, events.CodeBadRequest: 3, events.CodeNotFound: 1} {
		if n := testutil.ToFloat64(e.lim.metrics.requests.WithLabelValues("check", string(result))); n != want {
			t.Errorf("requests %s: %v, want %v", result, n, want)
		}
	}
}

// A batch that finds Redis has forgotten the script loads it again and
// decides every check once.
func TestBatchAfterScriptFlush(t *testing.T) {
	e := startEnv(t, testConfig())
	if err := e.rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	var calls []call
	for range 4 {
		calls = append(calls, call{"u-1", `{"service":"upload"}`})
	}
	var allowed []bool
	for i, a := range e.batch(calls...) {
		if a.Status != 200 {
			t.Fatalf("check %d: status %d (%s)", i, a.Status, a.Field)
		}
		allowed = append(allowed, a.Reply.Allowed)
	}
	if diff := cmp.Diff([]bool{true, true, true, false}, allowed); diff != "" {
		t.Errorf("allowed (-want +got):\n%s", diff)
	}
	if n := e.mr.HGet(evenOrOdd(e, "u-1", "upload"), "n"); n != "3" {
		t.Errorf("the window holds %q, want 3", n)
	}
}

// When Redis stops answering, a batch waits ratelimit.timeout once, not
// once per check: a fail_open service is allowed, the others are 503s,
// each counted.
func TestBatchRedisUnavailable(t *testing.T) {
	cfg := testConfig()
	cfg.RateLimit.Timeout = 50 * time.Millisecond
	proxy := &hangProxy{}
	e := startEnvVia(t, cfg, proxy)
	e.check("u-1", "upload", nil)
	proxy.hang.Store(true)

	calls := []call{
		{"u-1", `{"service":"avatar"}`},
		{"u-1", `{"service":"upload"}`},
		{"u-1", `{}`},
		{"u-2", `{"service":"avatar"}`},
		{"u-1", `{"service":"upload","cost":-1}`},
	}
	want := []answer{
		{Status: 200, Reply: events.CheckReply{Allowed: true, Limit: 1}},
		{Status: 503},
		{Status: 503},
		{Status: 200, Reply: events.CheckReply{Allowed: true, Limit: 1}},
		{Status: 400, Field: "cost"},
	}
	for i := range 10 {
		calls = append(calls, call{"v-" + strconv.Itoa(i), `{"service":"search"}`})
		want = append(want, answer{Status: 503})
	}
	start := time.Now()
	got := e.batch(calls...)
	took := time.Since(start)
	if took > cfg.RateLimit.Timeout+250*time.Millisecond { // slack for a loaded machine; a budget per check would be 500ms
		t.Errorf("answered after %v, budget %v", took, cfg.RateLimit.Timeout)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
	for _, c := range []struct {
		svc, result string
		want        float64
	}{{"avatar", "failed_open", 2}, {"upload", "failed_closed", 1}, {"", "failed_closed", 1}, {"search", "failed_closed", 10}} {
		if n := e.decisions(c.svc, c.result); n != c.want {
			t.Errorf("%q %s: %v, want %v", c.svc, c.result, n, c.want)
		}
	}
	if n := testutil.ToFloat64(e.lim.metrics.requests.WithLabelValues("check", string(events.CodeUnavailable))); n != 12 {
		t.Errorf("503s counted %v, want 12", n)
	}
}
