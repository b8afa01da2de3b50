package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/loadtest/internal/hist"
	"github.com/allot/allot/loadtest/internal/report"
	"github.com/allot/allot/pkg/events"
)

// The load every fault scenario runs, and the authorizations it sends
// again after a fault.

// traffic runs the scenario's load for d: the apps publishing at the
// fault rate with -dup copies and -bad events (the harness's ingest,
// which also waits until the meter has applied everything), light
// request load (meter.credit, meter.authorize unless authorize is false,
// ratelimit.check, the registry), and inject beside them.
func (f *faultRun) traffic(ctx context.Context, d time.Duration, authorize bool, inject func(ctx context.Context, start time.Time) error) error {
	h := f.h
	start := time.Now()
	f.trafficStart = start
	var wg sync.WaitGroup
	var ing report.Phase
	wg.Go(func() {
		ing = h.ingest(ctx, ingestSpec{name: "traffic", what: "apps at the rate, with duplicates and bad events", rate: f.o.faultRate(),
			dup: f.o.DupRatio, bad: f.o.BadRatio, dur: d})
	})
	reg := &registryLoad{h: h}
	specs := []reqSpec{
		{name: "credit", op: h.opCredit(), rate: 20},
		{name: "ratelimit", op: h.opCheck(), rate: 20},
		{name: "registry", op: reg.op(), rate: 10},
	}
	if authorize {
		specs = append(specs, reqSpec{name: "authorize", op: f.opAuthorize(), rate: 10})
	}
	if u := f.uidErrs; u != nil {
		for i := range specs {
			if name := map[string]string{"credit": "credit", "ratelimit": "check", "authorize": "authorize"}[specs[i].name]; name != "" {
				specs[i].op = u.wrap(name, f.o.UIDs, specs[i].op)
			}
		}
	}
	phases := make([]report.Phase, len(specs))
	for i, s := range specs {
		s.concurrency, s.dur = 1, d
		wg.Go(func() { phases[i] = h.requests(ctx, s) })
	}
	var injErr error
	wg.Go(func() { injErr = inject(ctx, start) })
	wg.Wait()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	reg.cleanUp(cctx)
	cancel()

	f.published += ing.Counts["events"] + ing.Counts["duplicate_copies"] + ing.Counts["bad"]
	f.streamDups += ing.Counts["stream_duplicates"]
	if ing.Incomplete != "" {
		f.note("the traffic's own wait: %s", ing.Incomplete)
	}
	if len(ing.Errors) > 0 {
		f.note("publishing: %s", kindsText(ing.Errors))
	}
	if ing.Lag != nil && ing.Lag.Count > 0 {
		f.note("lag of the sampled events p50 %s ms, p99 %s ms, max %s ms", report.Num(ing.Lag.P50), report.Num(ing.Lag.P99), report.Num(ing.Lag.Max))
	}
	var reqs []string
	for i, p := range phases {
		s := fmt.Sprintf("%s %s ok", specs[i].name, commas(p.Ops))
		if len(p.Errors) > 0 {
			s += " (" + kindsText(p.Errors) + ")"
		}
		reqs = append(reqs, s)
	}
	f.note("requests: %s", strings.Join(reqs, "; "))
	return injErr
}

// kindsText lists counts by kind, largest first.
func kindsText(m map[string]int64) string {
	type kv struct {
		k string
		v int64
	}
	var all []kv
	for k, v := range m {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || (all[i].v == all[j].v && all[i].k < all[j].k) })
	parts := make([]string, len(all))
	for i, x := range all {
		parts[i] = fmt.Sprintf("%s %s", x.k, commas(x.v))
	}
	return strings.Join(parts, ", ")
}

// publishBacklog publishes n events through the harness's apps (with
// -dup copies and -bad events, in the ledger), as fast as the stream
// takes them, and waits for every ack.
func (f *faultRun) publishBacklog(ctx context.Context, n int) error {
	h := f.h
	start := time.Now()
	f.trafficStart = start
	s := ingestSpec{name: "backlog", dup: f.o.DupRatio, bad: f.o.BadRatio}
	pubLat := hist.New(start)
	pr := newProbes(h.t.rdb, start) // not polled: nothing is applied meanwhile
	lv := h.live.add("backlog", pubLat, nil, nil)
	defer h.live.remove(lv)
	errs := newKinds()
	out := &sends{}
	apps := make([]*app1, h.o.Apps)
	for i := range apps {
		apps[i] = &app1{h: h, s: s, id: i, subjects: h.t.cfg.Subjects, probes: pr, lat: pubLat, errs: errs, live: lv, out: out,
			rng: rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))}
	}
	var wg sync.WaitGroup
	for _, a := range apps {
		wg.Go(func() {
			if err := a.start(); err != nil {
				errs.add("setup", 1)
				return
			}
			for k := a.id; k < n && ctx.Err() == nil; k += len(apps) {
				a.send(ctx, time.Now())
			}
		})
	}
	wg.Wait()
	err := settleAcks(ctx, "backlog acks", apps)
	for _, a := range apps {
		if a.pub != nil {
			f.streamDups += int64(a.pub.Stats().Duplicates)
		}
		a.finish()
		f.published += a.sent + a.copies + a.bad
	}
	if e := errs.snapshot(); len(e) > 0 {
		f.note("publishing: %s", kindsText(e))
	}
	return err
}

// moments returns n random offsets within the middle of d, sorted, at
// least 1.5 s apart when d allows.
func (f *faultRun) moments(n int, d time.Duration) []time.Duration {
	lo, hi := 0.1*float64(d), 0.85*float64(d)
	gap := min(1500*time.Millisecond, time.Duration((hi-lo)/float64(n+1)))
	// n uniform points in the span less the n-1 gaps, sorted, the i-th
	// moved on by i gaps: uniform among the placements that keep the gap,
	// in one draw (drawing until the gaps happen to hold never ended for
	// a dozen kills in a short profile).
	free := hi - lo - float64(n-1)*float64(gap)
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(f.rng.Float64() * free)
	}
	slices.Sort(out)
	for i := range out {
		out[i] += time.Duration(lo) + time.Duration(i)*gap
	}
	return out
}

// between is a random offset between fractions a and b of d.
func (f *faultRun) between(a, b float64, d time.Duration) time.Duration {
	return time.Duration((a + f.rng.Float64()*(b-a)) * float64(d))
}

func sleepUntil(ctx context.Context, t time.Time) error {
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-time.After(time.Until(t)):
		return nil
	}
}

// authAttempt is an authorization whose answer was lost: it is sent
// again with its id once the fault is over.
type authAttempt struct {
	uid, id string
}

// opAuthorize admits 1 email per request under a fresh id, as the
// harness's opAuthorize does, but keeps the requests that got no answer
// (a timeout, a 503, no responders) to send again with the same id
// after the fault: the endpoint is idempotent on it, so the ledger can
// count each exactly, and an id applied twice shows as double-counted.
func (f *faultRun) opAuthorize() reqOp {
	h := f.h
	return func(ctx context.Context, c *events.Client, i int64) (string, error) {
		uid := h.t.uid(int(i % int64(h.o.UIDs)))
		id := h.t.uidPrefix() + "a" + strconv.FormatInt(h.authSeq.Add(1), 10)
		out, err := f.authorizeOnce(ctx, c, uid, id)
		if err != nil && definite(err) {
			return "", err
		}
		if err != nil {
			f.mu.Lock()
			f.retry = append(f.retry, authAttempt{uid, id})
			f.mu.Unlock()
		}
		return out, err
	}
}

// authorizeOnce sends one authorization and books a definite answer.
func (f *faultRun) authorizeOnce(ctx context.Context, c *events.Client, uid, id string) (string, error) {
	key := stateKey{uid: uid, metric: metricAuthorize, field: "u", grant: true}
	rep, err := c.Authorize(ctx, uid, events.AuthorizeRequest{ID: id, Metric: metricAuthorize, Amount: 1})
	switch {
	case err == nil && rep.Allowed:
		f.h.ledger.add(key, 1)
		return "allowed", nil
	case errors.Is(err, events.ErrOverLimit), err == nil:
		f.h.ledger.add(key, 0)
		return "refused_over_limit", nil
	}
	return "", err
}

// definite says whether an error is an answer that nothing was recorded
// (a refusal of the request itself), as opposed to a lost answer.
func definite(err error) bool {
	var serr *events.ServiceError
	return errors.As(err, &serr) && serr.Status < 500
}

// settleAuthorizations sends every authorization whose answer was lost
// again, with its id, until it gets an answer (for up to 30 s each
// round).
func (f *faultRun) settleAuthorizations(ctx context.Context) {
	f.mu.Lock()
	pending := f.retry
	f.retry = nil
	f.mu.Unlock()
	if len(pending) == 0 {
		return
	}
	c, err := events.NewClient(f.h.t.ctl, events.ClientOptions{Subjects: f.h.t.cfg.Subjects, Timeout: 5 * time.Second})
	if err != nil {
		f.fail("authorizations not sent again: %v", err)
		return
	}
	deadline := time.Now().Add(30 * time.Second)
	left := pending
	for len(left) > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		var again []authAttempt
		for _, a := range left {
			if _, err := f.authorizeOnce(ctx, c, a.uid, a.id); err != nil && !definite(err) {
				again = append(again, a)
			}
		}
		left = again
		if len(left) > 0 {
			time.Sleep(200 * time.Millisecond)
		}
	}
	for _, a := range left {
		f.h.ledger.maybe(stateKey{uid: a.uid, metric: metricAuthorize, field: "u", grant: true}, 1)
	}
	f.note("%s authorizations that got no answer during the fault were sent again with their ids (%d still unanswered)", commas(int64(len(pending))), len(left))
}
