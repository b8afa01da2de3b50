package meter

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// batchOf hands the meter one batch of requests, built as the batched
// endpoint builds them, and returns the replies in order.
func (e *env) batchOf(serve func([]micro.Request), subjects, bodies []string) []*nats.Msg {
	e.t.Helper()
	inbox := nats.NewInbox()
	sub, err := e.nc.SubscribeSync(inbox + ".*")
	if err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	reqs := make([]micro.Request, len(subjects))
	for i := range subjects {
		reqs[i] = service.NewDetached(e.nc, subjects[i], fmt.Sprintf("%s.%d", inbox, i), []byte(bodies[i]), nil)
	}
	serve(reqs)
	replies := make([]*nats.Msg, len(subjects))
	for range subjects {
		msg, err := sub.NextMsg(2 * time.Second)
		if err != nil {
			e.t.Fatalf("%d replies of %d: %v", countNonNil(replies), len(subjects), err)
		}
		var i int
		_, _ = fmt.Sscanf(msg.Subject[len(inbox)+1:], "%d", &i)
		if replies[i] != nil {
			e.t.Fatalf("request %d answered twice", i)
		}
		replies[i] = msg
	}
	return replies
}

func countNonNil(msgs []*nats.Msg) int {
	n := 0
	for _, m := range msgs {
		if m != nil {
			n++
		}
	}
	return n
}

// status is a reply's error status, 0 for a success.
func status(msg *nats.Msg) (int, string) {
	if serr := events.DecodeServiceError(msg); serr != nil {
		return serr.Status, serr.Field
	}
	return 0, ""
}

func TestACreditBatchAnswersEachRequestOnItsOwn(t *testing.T) {
	e := startEnv(t, testConfig())
	e.publish(events.NewUsage("u-1", "tiny_daily_total", 3))
	e.waitIdle()
	credit := e.cfg.Subjects.Credit
	replies := e.batchOf(e.meter.handleCredits,
		[]string{credit("u-1"), credit("u-1"), credit("u-1"), credit("u-1"), credit("u-2"), e.cfg.Subjects.Meter + ".credit.bad uid", credit("u-1")},
		[]string{`{"metric":"tiny_daily_total"}`, `{"metric":"nope"}`, `{"metric":"api_calls_total"}`, `{not json`, `{"metric":"tiny_daily_total"}`, `{}`, `{}`})
	want := []struct {
		status int
		field  string
	}{{0, ""}, {404, "metric"}, {400, "metric"}, {400, ""}, {0, ""}, {400, "uid"}, {0, ""}}
	for i, w := range want {
		if s, f := status(replies[i]); s != w.status || (w.field != "" && f != w.field) {
			t.Errorf("request %d: %d on %q (%s), want %d on %q", i, s, f, replies[i].Data, w.status, w.field)
		}
	}
	var one events.Credit
	if err := json.Unmarshal(replies[0].Data, &one); err != nil || one.Used != 3 || one.Remaining != 1 || one.UID != "u-1" {
		t.Errorf("u-1's credit in a batch: %+v, %v", one, err)
	}
	if err := json.Unmarshal(replies[4].Data, &one); err != nil || one.Used != 0 || one.Remaining != 4 || one.UID != "u-2" {
		t.Errorf("u-2's credit in the same batch: %+v, %v", one, err)
	}
	var all events.CreditsReply
	if err := json.Unmarshal(replies[6].Data, &all); err != nil || len(all.Credits) < 2 {
		t.Errorf("all of u-1's credits in a batch: %+v, %v", all, err)
	}
}

func TestAnAuthorizeBatchAdmitsExactlyTheLimit(t *testing.T) {
	e := startEnv(t, testConfig())
	// tiny_daily_total allows 4. Twelve requests for one each, in one
	// batch, three of them repeating an id: exactly four new ids pass,
	// and a repeat of an admitted id is admitted again without counting.
	var subjects, bodies []string
	for i := range 12 {
		id := fmt.Sprintf("a-%d", i)
		if i >= 9 {
			id = fmt.Sprintf("a-%d", i-9) // a-0..a-2, admitted earlier in the batch
		}
		subjects = append(subjects, e.cfg.Subjects.Authorize("u-7"))
		bodies = append(bodies, fmt.Sprintf(`{"id":%q,"metric":"tiny_daily_total","amount":1}`, id))
	}
	subjects = append(subjects, e.cfg.Subjects.Authorize("u-7"), e.cfg.Subjects.Authorize("u-7"))
	bodies = append(bodies, `{"id":"x","metric":"nope","amount":1}`, `{"metric":"tiny_daily_total","amount":1}`)
	replies := e.batchOf(e.meter.handleAuthorizes, subjects, bodies)
	allowed, refused := 0, 0
	for i, r := range replies[:12] {
		switch s, f := status(r); {
		case s == 0:
			allowed++
		case s == 429 && f == "amount":
			refused++
			var body overLimitBody
			if err := json.Unmarshal(r.Data, &body); err != nil || body.Allowed || body.Remaining != 0 {
				t.Errorf("request %d: 429 body %s", i, r.Data)
			}
		default:
			t.Errorf("request %d: %d %s", i, s, r.Data)
		}
	}
	if allowed != 4+3 || refused != 5 {
		t.Errorf("%d allowed and %d refused, want 7 (4 ids, 3 repeats) and 5", allowed, refused)
	}
	if s, f := status(replies[12]); s != 404 || f != "metric" {
		t.Errorf("unknown metric in a batch: %d on %q", s, f)
	}
	if s, f := status(replies[13]); s != 400 || f != "id" {
		t.Errorf("missing id in a batch: %d on %q", s, f)
	}
	c, err := e.client.Credit(t.Context(), "u-7", "tiny_daily_total")
	if err != nil || c.Used != 4 {
		t.Errorf("after the batch u-7 has used %v (%v), want 4", c.Used, err)
	}
	// Crossing 50% and 100% inside one batch publishes both notices.
	// once each, though every later decision in the batch saw them pending.
	if got := testutil.ToFloat64(e.meter.metrics.notices); got != 2 {
		t.Errorf("%v notices published, want 2", got)
	}
	st, err := e.js.Stream(t.Context(), e.cfg.Streams.Notify)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(t.Context()); err != nil || info.State.Msgs != 2 {
		t.Errorf("the notify stream holds %v notices (%v), want 2", info.State.Msgs, err)
	}
}

func TestConcurrentAuthorizesThroughNATSAdmitExactlyTheLimit(t *testing.T) {
	cfg := testConfig()
	cfg.Meter.Pipelines = 1 // every request that comes while one batch is in Redis joins the next
	e := startEnv(t, cfg)
	var wg sync.WaitGroup
	var mu sync.Mutex
	results := map[string]int{}
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply, err := e.client.Authorize(t.Context(), "u-8", events.AuthorizeRequest{ID: fmt.Sprintf("c-%d", i), Metric: "tiny_daily_total", Amount: 1})
			key := "allowed"
			switch {
			case errors.Is(err, events.ErrOverLimit):
				key = "refused"
			case err != nil:
				key = err.Error()
			case !reply.Allowed:
				key = "not allowed without a 429"
			}
			mu.Lock()
			results[key]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if results["allowed"] != 4 || results["refused"] != 36 || len(results) != 2 {
		t.Errorf("results %v, want 4 allowed and 36 refused", results)
	}
}

func TestABatchMeetsRedisDownWithA503Each(t *testing.T) {
	e := startEnv(t, testConfig())
	e.mr.Close()
	replies := e.batchOf(e.meter.handleCredits,
		[]string{e.cfg.Subjects.Credit("u-1"), e.cfg.Subjects.Credit("u-2"), e.cfg.Subjects.Credit("u-3")},
		[]string{`{"metric":"tiny_daily_total"}`, `{}`, `{"metric":"nope"}`})
	for i, want := range []int{503, 503, 404} {
		if s, _ := status(replies[i]); s != want {
			t.Errorf("credit %d with Redis down: %d, want %d", i, s, want)
		}
	}
	replies = e.batchOf(e.meter.handleAuthorizes,
		[]string{e.cfg.Subjects.Authorize("u-1"), e.cfg.Subjects.Authorize("u-2")},
		[]string{`{"id":"d-1","metric":"tiny_daily_total","amount":1}`, `{"id":"d-2","metric":"tiny_daily_total","amount":1}`})
	for i, r := range replies {
		if s, _ := status(r); s != 503 {
			t.Errorf("authorize %d with Redis down: %d, want 503", i, s)
		}
	}
}
