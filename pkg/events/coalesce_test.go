package events

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// fakeLimiter answers ratelimit.check.<uid> and ratelimit.check_many.<scope>
// as the rate limiter's wire contract says, with remaining = the uid's
// length times 10 minus the cost, and a 404 for service "nope". It holds a
// single request's reply for hold, so that calls pile up behind it, and
// counts what it got.
type fakeLimiter struct {
	hold       time.Duration
	noBatches  bool // leave the batch subject unanswered (an older service)
	muteBatch  bool // take batches in, never answer
	mu         sync.Mutex
	singles    int
	batches    []int      // the size of each batch
	batchScope []string   // and its subject's scope
	uids       [][]string // and the uids in it
}

func (f *fakeLimiter) answer(uid string, body []byte) (int, []byte) {
	var req CheckRequest
	if err := DecodeRequest(body, &req); err != nil {
		return 400, BadRequest(err).Body()
	}
	if req.Service == "nope" {
		return 404, NewServiceError(CodeNotFound, "service", "unknown service %q", req.Service).Body()
	}
	b, _ := json.Marshal(CheckReply{Allowed: true, Limit: 100, Remaining: int64(10*len(uid)) - req.CostOrDefault()})
	return 200, b
}

func (f *fakeLimiter) start(t *testing.T, nc *nats.Conn) {
	t.Helper()
	single, err := nc.Subscribe("ratelimit.check.*", func(m *nats.Msg) {
		f.mu.Lock()
		f.singles++
		f.mu.Unlock()
		time.Sleep(f.hold)
		uid := m.Subject[len("ratelimit.check."):]
		status, body := f.answer(uid, m.Data)
		if status != 200 {
			_ = m.RespondMsg(&nats.Msg{Data: body, Header: nats.Header{"Nats-Service-Error-Code": {strconv.Itoa(status)}, "Nats-Service-Error": {"x"}}})
			return
		}
		_ = m.Respond(body)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = single.Unsubscribe() })
	if f.noBatches {
		return
	}
	many, err := nc.Subscribe("ratelimit.check_many.*", func(m *nats.Msg) {
		b, err := DecodeBatchRequest(m.Data)
		if err != nil {
			t.Errorf("batch refused: %v", err)
			return
		}
		f.mu.Lock()
		f.batches = append(f.batches, len(b.Requests))
		f.batchScope = append(f.batchScope, m.Subject[len("ratelimit.check_many."):])
		var uids []string
		for _, it := range b.Requests {
			uids = append(uids, it.UID)
		}
		f.uids = append(f.uids, uids)
		f.mu.Unlock()
		if f.muteBatch {
			return
		}
		results := make([]BatchResult, len(b.Requests))
		for i, it := range b.Requests {
			results[i].Status, results[i].Body = f.answer(it.UID, it.Body)
		}
		_ = m.Respond(AppendBatchReply(nil, results))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = many.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// pileUp makes one call that the fake holds, then n more while it is in
// flight, and returns their replies and errors (the first's last).
func pileUp(t *testing.T, c *Client, n int, uid func(i int) string, req func(i int) CheckRequest) ([]CheckReply, []error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	replies, errs := make([]CheckReply, n+1), make([]error, n+1)
	first := make(chan struct{})
	go func() {
		defer close(first)
		replies[n], errs[n] = c.Check(ctx, "first", CheckRequest{})
	}()
	waitInFlight(t, c)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { replies[i], errs[i] = c.Check(ctx, uid(i), req(i)) })
	}
	wg.Wait()
	<-first
	return replies, errs
}

// waitInFlight waits until the client has a call in flight.
func waitInFlight(t *testing.T, c *Client) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.coalescer.mu.Lock()
		busy := false
		for _, ln := range c.coalescer.lanes {
			busy = busy || ln.inFlight > 0
		}
		c.coalescer.mu.Unlock()
		if busy {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no call in flight")
}

func batchingClient(t *testing.T, nc *nats.Conn, opts BatchOptions) *Client {
	t.Helper()
	opts.Enabled = true
	if opts.MaxInFlight == 0 {
		opts.MaxInFlight = 1 // the first call holds the lane: the rest wait
	}
	c, err := NewClient(nc, ClientOptions{Batch: opts, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBatchingCoalescesCallsInFlightTogether(t *testing.T) {
	nc := connect(t, startServer(t, "", 0).ClientURL())
	f := &fakeLimiter{hold: 200 * time.Millisecond}
	f.start(t, nc)
	// MaxSize 10 and a long wait: the tenth call sends the batch.
	c := batchingClient(t, nc, BatchOptions{MaxWait: time.Minute, MaxSize: 10})
	uids := []string{"a", "bb", "ccc", "dddd", "eeeee", "a", "bb", "x", "yy", "zzz"}
	replies, errs := pileUp(t, c, 10, func(i int) string { return uids[i] }, func(i int) CheckRequest {
		if i == 7 {
			return CheckRequest{Service: "nope"}
		}
		return CheckRequest{Cost: Cost(int64(i))}
	})
	for i, uid := range uids {
		switch {
		case i == 7:
			var serr *ServiceError
			if !errors.Is(errs[i], ErrNotFound) || !errors.As(errs[i], &serr) || serr.Field != "service" {
				t.Errorf("call %d: %v, want its own 404 on service", i, errs[i])
			}
		case errs[i] != nil:
			t.Errorf("call %d: %v", i, errs[i])
		case replies[i].Remaining != int64(10*len(uid)-i):
			t.Errorf("call %d (%s, cost %d): remaining %d, want %d: another call's answer?", i, uid, i, replies[i].Remaining, 10*len(uid)-i)
		}
	}
	if errs[10] != nil || replies[10].Remaining != 49 {
		t.Errorf("the first call: %+v, %v", replies[10], errs[10])
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.singles != 1 || len(f.batches) != 1 || f.batches[0] != 10 || f.batchScope[0] != ScopeAll {
		t.Errorf("%d alone, batches %v on %v; want the first alone and one batch of 10 on %s", f.singles, f.batches, f.batchScope, ScopeAll)
	}
}

// What waits goes as soon as a message in flight is answered, without
// waiting out MaxWait: batches follow the round trips.
func TestBatchingSendsWhenAnswered(t *testing.T) {
	nc := connect(t, startServer(t, "", 0).ClientURL())
	f := &fakeLimiter{hold: 100 * time.Millisecond}
	f.start(t, nc)
	c := batchingClient(t, nc, BatchOptions{MaxWait: time.Minute, MaxSize: 100})
	start := time.Now()
	_, errs := pileUp(t, c, 5, func(int) string { return "u" }, func(int) CheckRequest { return CheckRequest{} })
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d: %v", i, err)
		}
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("took %v: the batch waited out MaxWait", d)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.singles != 1 || len(f.batches) != 1 || f.batches[0] != 5 {
		t.Errorf("%d alone, batches %v; want 1 alone, then one batch of 5", f.singles, f.batches)
	}
}

// With room for two in flight, two calls go alone at once.
func TestBatchingMaxInFlight(t *testing.T) {
	nc := connect(t, startServer(t, "", 0).ClientURL())
	f := &fakeLimiter{}
	f.start(t, nc)
	c := batchingClient(t, nc, BatchOptions{MaxWait: time.Minute, MaxSize: 100, MaxInFlight: 2})
	c.coalescer.mu.Lock() // hold the lane: nothing is answered meanwhile
	ln := &lane{subject: c.subj.CheckMany(ScopeAll), inFlight: 1}
	c.coalescer.lanes[ln.subject] = ln
	c.coalescer.mu.Unlock()
	if _, err := c.Check(t.Context(), "u", CheckRequest{}); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.singles != 1 || len(f.batches) != 0 {
		t.Errorf("%d alone, batches %v: a call with room in flight waited", f.singles, f.batches)
	}
}

// Calls made at the same moment while their lane has room go together:
// the first one yields once, and those released with it join its
// message. (Before, each found room and went alone.) How many join
// depends on the scheduler, so the test asks for one batch in 20 rounds.
func TestBatchingGathersCallsMadeTogether(t *testing.T) {
	nc := connect(t, startServer(t, "", 0).ClientURL())
	f := &fakeLimiter{}
	f.start(t, nc)
	c := batchingClient(t, nc, BatchOptions{MaxWait: time.Minute, MaxSize: 100, MaxInFlight: 100})
	for range 20 {
		release := make(chan struct{})
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				<-release
				if _, err := c.Check(t.Context(), "u-"+strconv.Itoa(i), CheckRequest{}); err != nil {
					t.Error(err)
				}
			})
		}
		time.Sleep(10 * time.Millisecond) // every caller waits on release
		close(release)
		wg.Wait()
		f.mu.Lock()
		batches, singles := f.batches, f.singles
		f.mu.Unlock()
		if len(batches) > 0 {
			if n := singles + sum(batches); n%8 != 0 {
				t.Errorf("%d alone, batches %v: not every call answered once", singles, batches)
			}
			return
		}
	}
	t.Errorf("20 rounds of 8 calls made at once, with room in flight for all: all %d went alone", f.singles)
}

func TestBatchingWaitsAtMostMaxWait(t *testing.T) {
	nc := connect(t, startServer(t, "", 0).ClientURL())
	f := &fakeLimiter{hold: 300 * time.Millisecond}
	f.start(t, nc)
	c := batchingClient(t, nc, BatchOptions{MaxWait: 20 * time.Millisecond, MaxSize: 100})
	start := time.Now()
	replies, errs := pileUp(t, c, 3, func(int) string { return "u" }, func(int) CheckRequest { return CheckRequest{} })
	for i, err := range errs[:3] {
		if err != nil || replies[i].Remaining != 9 {
			t.Errorf("call %d: %+v, %v", i, replies[i], err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if sum(f.batches) != 3 {
		t.Errorf("batches %v, want the 3 calls behind the first batched", f.batches)
	}
	// The batch went at its wait's end, not when the first call came
	// back: all were answered well before two holds.
	if d := time.Since(start); d > 550*time.Millisecond {
		t.Logf("took %v (a loaded machine?)", d)
	}
}

func TestBatchingPerUID(t *testing.T) {
	nc := connect(t, startServer(t, "", 0).ClientURL())
	f := &fakeLimiter{hold: 200 * time.Millisecond}
	f.start(t, nc)
	c := batchingClient(t, nc, BatchOptions{MaxWait: 50 * time.Millisecond, MaxSize: 100, PerUID: true})
	uids := []string{"first", "first", "other", "first", "other"}
	_, errs := pileUp(t, c, len(uids), func(i int) string { return uids[i] }, func(int) CheckRequest { return CheckRequest{} })
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d: %v", i, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, scope := range f.batchScope {
		for _, uid := range f.uids[i] {
			if uid != scope {
				t.Errorf("batch on %s carried %s's call", scope, uid)
			}
		}
	}
	// Every call was answered once, alone or in a batch of its own
	// uid's; a message alone on its own subject, a batch of one never
	// wrapped. (How the piled-up calls split between messages depends
	// on when each goroutine runs: calls made while their lane has room
	// go at once, taking along those made at the same moment.)
	if n := f.singles + sum(f.batches); n != len(uids)+1 {
		t.Errorf("%d alone, batches %v: %d calls answered, want %d", f.singles, f.batches, n, len(uids)+1)
	}
	for _, n := range f.batches {
		if n < 2 {
			t.Errorf("batches %v: a batch of one was sent wrapped", f.batches)
		}
	}
	c.coalescer.mu.Lock()
	defer c.coalescer.mu.Unlock()
	if len(c.coalescer.lanes) != 0 {
		t.Errorf("%d idle per-uid lanes kept", len(c.coalescer.lanes))
	}
}

func TestBatchingFallsBackWithoutBatchResponders(t *testing.T) {
	nc := connect(t, startServer(t, "", 0).ClientURL())
	f := &fakeLimiter{hold: 100 * time.Millisecond, noBatches: true}
	f.start(t, nc)
	c := batchingClient(t, nc, BatchOptions{MaxWait: time.Minute, MaxSize: 4})
	replies, errs := pileUp(t, c, 4, func(int) string { return "uu" }, func(int) CheckRequest { return CheckRequest{} })
	for i, err := range errs[:4] {
		if err != nil || replies[i].Remaining != 19 {
			t.Errorf("call %d: %+v, %v", i, replies[i], err)
		}
	}
	// Then calls go alone for a while, without asking the batch subject.
	_, errs = pileUp(t, c, 4, func(int) string { return "uu" }, func(int) CheckRequest { return CheckRequest{} })
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d after the fallback: %v", i, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.singles != 10 {
		t.Errorf("%d answered alone, want all 10", f.singles)
	}
}

func TestBatchingTimeoutsAndCancels(t *testing.T) {
	nc := connect(t, startServer(t, "", 0).ClientURL())
	f := &fakeLimiter{hold: 300 * time.Millisecond, muteBatch: true}
	f.start(t, nc)
	c := batchingClient(t, nc, BatchOptions{MaxWait: 30 * time.Millisecond, MaxSize: 100})
	go func() { _, _ = c.Check(context.Background(), "first", CheckRequest{}) }()
	waitInFlight(t, c)

	// A caller whose context ends before its batch goes is taken out of
	// it; one whose batch is never answered times out with its context.
	canceled, cancel := context.WithCancel(context.Background())
	short, cancelShort := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancelShort()
	done := make(chan error, 2)
	go func() {
		_, err := c.Check(canceled, "gone", CheckRequest{})
		done <- err
	}()
	go func() {
		time.Sleep(5 * time.Millisecond)
		_, err := c.Check(short, "stays", CheckRequest{})
		done <- err
	}()
	time.Sleep(2 * time.Millisecond)
	cancel()
	var errs []error
	for range 2 {
		errs = append(errs, <-done)
	}
	var timedOut, wasCanceled int
	for _, err := range errs {
		switch {
		case errors.Is(err, ErrTimeout):
			timedOut++
		case errors.Is(err, context.Canceled):
			wasCanceled++
		default:
			t.Errorf("unexpected: %v", err)
		}
	}
	if timedOut != 1 || wasCanceled != 1 {
		t.Errorf("%d timed out, %d canceled: %v", timedOut, wasCanceled, errs)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, uids := range f.uids {
		for _, uid := range uids {
			if uid == "gone" {
				t.Error("a canceled call was still sent")
			}
		}
	}
}

func TestBatchingRefusesBadInputLocally(t *testing.T) {
	nc := connect(t, startServer(t, "", 0).ClientURL())
	c := batchingClient(t, nc, BatchOptions{})
	ctx := context.Background()
	if _, err := c.Check(ctx, "not a uid", CheckRequest{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad uid: %v", err)
	}
	if _, err := c.Check(ctx, "dead", CheckRequest{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("reserved uid: %v", err)
	}
	if _, err := c.Check(ctx, "u", CheckRequest{Cost: Cost(-1)}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad cost: %v", err)
	}
	if _, err := c.Credit(ctx, "u", "no such!"); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad metric: %v", err)
	}
	// Nothing answers: no responders, alone or batched.
	if _, err := c.Check(ctx, "u", CheckRequest{}); !errors.Is(err, ErrNoResponders) {
		t.Errorf("no service: %v", err)
	}
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}
