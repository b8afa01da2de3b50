package meter

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

// Authorize and credit calls batched by the client are decided as if they
// had come alone: the grant held exactly, a repeated id charged once, a
// refusal carrying its decision, each call its own error.
func TestClientBatchingAuthorizesAsAlone(t *testing.T) {
	e := startEnv(t, testConfig())
	c, err := events.NewClient(e.nc, events.ClientOptions{Timeout: 5 * time.Second,
		Batch: events.BatchOptions{Enabled: true, MaxWait: 2 * time.Millisecond, MaxSize: 16}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const uids = 10
	var mu sync.Mutex
	allowed, refused := map[string]int{}, map[string]int{}
	var wg sync.WaitGroup
	for i := range uids * 8 {
		uid := fmt.Sprintf("u-%d", i%uids)
		// Every id twice: tiny_daily_total's grant is 4, so 4 distinct
		// ids pass per uid and the rest are refused.
		id := fmt.Sprintf("%s-%d", uid, i/(2*uids))
		wg.Go(func() {
			r, err := c.Authorize(ctx, uid, events.AuthorizeRequest{ID: id, Metric: "tiny_daily_total", Amount: 1})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && r.Allowed:
				allowed[uid]++
			case errors.Is(err, events.ErrOverLimit) && !r.Allowed && !r.ResetsAt.IsZero():
				refused[uid]++
			default:
				t.Errorf("%s %s: %+v, %v", uid, id, r, err)
			}
		})
		if i%7 == 0 {
			wg.Go(func() {
				_, err := c.Authorize(ctx, uid, events.AuthorizeRequest{ID: "x", Metric: "no_such_metric", Amount: 1})
				if !errors.Is(err, events.ErrNotFound) {
					t.Errorf("unknown metric: %v, want its own 404", err)
				}
			})
		}
	}
	wg.Wait()
	for i := range uids {
		uid := fmt.Sprintf("u-%d", i)
		// 4 distinct ids, each sent twice: both answers of an id agree.
		if allowed[uid] != 8 || refused[uid] != 0 {
			t.Errorf("%s: %d allowed, %d refused; want all 8 (4 ids twice) allowed", uid, allowed[uid], refused[uid])
		}
		cr, err := c.Credit(ctx, uid, "tiny_daily_total")
		if err != nil || cr.Used != 4 || cr.Remaining != 0 {
			t.Errorf("%s credit: %+v, %v; want 4 used, charged once per id", uid, cr, err)
		}
	}
	// A fifth id is refused with the decision, batched or not.
	var wg2 sync.WaitGroup
	for i := range uids {
		uid := fmt.Sprintf("u-%d", i)
		wg2.Go(func() {
			r, err := c.Authorize(ctx, uid, events.AuthorizeRequest{ID: uid + "-5", Metric: "tiny_daily_total", Amount: 1})
			if !errors.Is(err, events.ErrOverLimit) || r.Allowed || r.Remaining != 0 || r.ResetsAt.IsZero() {
				t.Errorf("%s past the grant: %+v, %v", uid, r, err)
			}
		})
		wg2.Go(func() {
			all, err := c.Credits(ctx, uid)
			if err != nil || all.UID != uid || len(all.Credits) == 0 {
				t.Errorf("%s credits: %+v, %v", uid, all, err)
			}
		})
	}
	wg2.Wait()
	msg, err := e.nc.Request("$SRV.STATS.meter", nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var stats micro.Stats
	if err := json.Unmarshal(msg.Data, &stats); err != nil {
		t.Fatal(err)
	}
	for _, ep := range stats.Endpoints {
		if ep.Name == "authorize_many" && ep.NumRequests == 0 {
			t.Error("no batch message reached authorize_many")
		}
	}
}
