package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allot/allot/loadtest/internal/hist"
	"github.com/allot/allot/loadtest/internal/report"
	"github.com/allot/allot/pkg/events"
)

// requestTimeout bounds one request of a request phase.
const requestTimeout = 2 * time.Second

// reqOp makes request number i from client c and returns its outcome
// (e.g. "allowed", "denied"; "" for plain success) or its error.
type reqOp func(ctx context.Context, c *events.Client, i int64) (string, error)

// reqSpec is one request/reply phase.
type reqSpec struct {
	name, what  string
	op          reqOp
	rate        float64 // open loop; 0 is closed loop with concurrency clients
	concurrency int
	dur         time.Duration
	batch       bool // one client for all workers, batching the calls in flight together
}

// requests runs one request phase. Closed loop: concurrency clients, each
// sending its next request when the last one is answered; latency from
// sending. Open loop: requests are scheduled at the rate and handed to a
// pool; latency is from the scheduled time, so a stall shows in full
// instead of delaying what would have been measured (coordinated
// omission).
func (h *harness) requests(ctx context.Context, s reqSpec) report.Phase {
	ph := report.Phase{Name: s.name, What: s.what, Mode: "closed", Concurrency: s.concurrency, Start: time.Since(h.start).Seconds()}
	if s.rate > 0 {
		ph.Mode, ph.Rate, ph.Concurrency = "open", s.rate, 0
	}
	conns := h.t.conns
	if s.batch {
		// One client for all the workers, as one app process has: its
		// calls in flight together are what it batches.
		conns = conns[:1]
	}
	clients := make([]*events.Client, len(conns))
	for i, nc := range conns {
		c, err := events.NewClient(nc, events.ClientOptions{Subjects: h.t.cfg.Subjects, Timeout: requestTimeout,
			Batch: events.BatchOptions{Enabled: s.batch, MaxWait: h.o.BatchWait, MaxInFlight: h.o.BatchInFlight}})
		if err != nil {
			ph.Incomplete = err.Error()
			return ph
		}
		clients[i] = c
	}
	start := time.Now()
	deadline := start.Add(s.dur)
	lat := hist.New(start)
	lv := h.live.add(s.name, lat, nil, nil)
	defer h.live.remove(lv)
	errs, outcomes := newKinds(), newKinds()
	res := h.sampleStart()
	var seq atomic.Int64
	var ok atomic.Int64
	do := func(c *events.Client, from time.Time) {
		i := seq.Add(1) - 1
		// The client's own timeout applies only to a context without a
		// deadline, and the run's has one: a request whose reply is lost
		// (its service died) would wait for the end of the run.
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		out, err := s.op(rctx, c, i)
		cancel()
		now := time.Now()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			errs.add(errKind(err), 1)
			lv.errs.Add(1)
			return
		}
		lat.Record(now, now.Sub(from))
		ok.Add(1)
		lv.ops.Add(1)
		if out != "" {
			outcomes.add(out, 1)
		}
	}
	var wg sync.WaitGroup
	if s.rate <= 0 {
		for w := range s.concurrency {
			c := clients[w%len(clients)]
			wg.Go(func() {
				for ctx.Err() == nil {
					now := time.Now()
					if !now.Before(deadline) {
						return
					}
					do(c, now)
				}
			})
		}
	} else {
		queue := make(chan time.Time, 100_000)
		workers := min(max(s.concurrency, 256), 4096)
		stopBy := deadline.Add(5 * time.Second)
		var dropped atomic.Int64
		for w := range workers {
			c := clients[w%len(clients)]
			wg.Go(func() {
				for intended := range queue {
					if time.Now().After(stopBy) || ctx.Err() != nil {
						dropped.Add(1)
						continue
					}
					do(c, intended)
				}
			})
		}
		interval := time.Duration(float64(time.Second) / s.rate)
		for k := 0; ctx.Err() == nil; k++ {
			intended := start.Add(time.Duration(k) * interval)
			if !intended.Before(deadline) {
				break
			}
			if d := time.Until(intended); d > 200*time.Microsecond {
				time.Sleep(d)
			}
			select {
			case queue <- intended:
			case <-ctx.Done():
			}
		}
		close(queue)
		defer func() { errs.add("not_sent_overloaded", dropped.Load()) }()
	}
	wg.Wait()
	ph.Seconds = time.Since(start).Seconds()
	ph.Ops = ok.Load()
	ph.Throughput = float64(ok.Load()) / ph.Seconds
	sum := lat.Summary()
	ph.Latency = &sum
	ph.Errors = errs.snapshot()
	ph.Counts = outcomes.snapshot()
	ph.Series = []report.Series{{Name: seriesName(s.name, "latency"), Points: lat.Timeline(start.Sub(h.start).Seconds())}}
	ph.Resources = h.sampleEnd(res)
	return ph
}

// The request scenarios' operations.

// opRaw asks the raw responder: one Redis GET per request.
func (h *harness) opRaw() reqOp { return h.opPlain(h.t.rawReply) }

// opBare asks the bare responder, which answers at once: the floor of
// one NATS message each way per request.
func (h *harness) opBare() reqOp { return h.opPlain(h.t.bareReply) }

// opBareBatched asks the bare responders' check through one client with
// batching on, of its own, whose rate limiter subjects are the bare
// responders': the floor of batching, what the batching client reaches
// when the service does no work.
func (h *harness) opBareBatched() reqOp {
	subjects := h.t.cfg.Subjects
	subjects.RateLimit = h.t.bareReply
	c, err := events.NewClient(h.t.conns[0], events.ClientOptions{Subjects: subjects, Timeout: requestTimeout,
		Batch: events.BatchOptions{Enabled: true, MaxWait: h.o.BatchWait, MaxInFlight: h.o.BatchInFlight}})
	return func(ctx context.Context, _ *events.Client, i int64) (string, error) {
		if err != nil {
			return "", err
		}
		_, err := c.Check(ctx, h.t.uid(int(i%int64(h.o.UIDs))), events.CheckRequest{})
		return "", err
	}
}

// opPlain sends a plain NATS request to <prefix>.<uid>, spread over the
// apps' connections, and judges the reply's error headers.
func (h *harness) opPlain(prefix string) reqOp {
	nc := h.t.conns
	var n atomic.Int64
	return func(ctx context.Context, _ *events.Client, i int64) (string, error) {
		c := nc[int(n.Add(1))%len(nc)]
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		msg, err := c.RequestWithContext(rctx, prefix+"."+h.t.uid(int(i%int64(h.o.UIDs))), nil)
		if err != nil {
			return "", fmt.Errorf("%w: %w", events.ErrTimeout, err)
		}
		if serr := events.DecodeServiceError(msg); serr != nil {
			return "", serr
		}
		return "", nil
	}
}

func (h *harness) opCredit() reqOp {
	return func(ctx context.Context, c *events.Client, i int64) (string, error) {
		_, err := c.Credit(ctx, h.t.uid(int(i%int64(h.o.UIDs))), metricGrant)
		return "", err
	}
}

// opAuthorize admits 1 email per request under an id fresh for the whole
// run (the endpoint is idempotent on it); every allowed one must show in
// the uid's grant, which the exactness check reads.
func (h *harness) opAuthorize() reqOp {
	return func(ctx context.Context, c *events.Client, i int64) (string, error) {
		uid := h.t.uid(int(i % int64(h.o.UIDs)))
		key := stateKey{uid: uid, metric: metricAuthorize, field: "u", grant: true}
		id := h.t.uidPrefix() + "a" + strconv.FormatInt(h.authSeq.Add(1), 10)
		rep, err := c.Authorize(ctx, uid, events.AuthorizeRequest{ID: id, Metric: metricAuthorize, Amount: 1})
		switch {
		case err == nil && rep.Allowed:
			h.ledger.add(key, 1)
			return "allowed", nil
		case errors.Is(err, events.ErrOverLimit):
			h.ledger.add(key, 0)
			return "refused_over_limit", nil
		case err == nil:
			return "refused", nil
		case errors.Is(err, events.ErrTimeout) || errors.Is(err, events.ErrUnavailable):
			h.ledger.maybe(key, 1) // it may have been recorded
		}
		return "", err
	}
}

func (h *harness) opCheck() reqOp {
	return func(ctx context.Context, c *events.Client, i int64) (string, error) {
		rep, err := c.Check(ctx, h.t.uid(int(i%int64(h.o.UIDs))), events.CheckRequest{})
		if err != nil {
			return "", err
		}
		if rep.Allowed {
			return "allowed", nil
		}
		return "denied", nil
	}
}

// registryLoad registers instances of a few services of this run and,
// per request: every 10th registers a new instance, 6 in 10 heartbeat
// one (register it again, unchanged), 3 in 10 find one service.
type registryLoad struct {
	h    *harness
	mu   sync.Mutex
	regs []events.RegisterRequest
}

func (r *registryLoad) name(i int64) string {
	return "lt" + r.h.t.runID + "-svc" + strconv.FormatInt(i%5, 10)
}

func (r *registryLoad) newInstance(i int64) events.RegisterRequest {
	return events.RegisterRequest{
		Name:      r.name(i),
		ID:        "lt" + r.h.t.runID + "-i" + strconv.FormatInt(i, 10),
		Endpoints: []string{"lt" + r.h.t.runID + "res" + strconv.FormatInt(i%5, 10)},
		IPv4:      "10.0." + strconv.FormatInt(i%250, 10) + "." + strconv.FormatInt(i%200+1, 10),
		Port:      8080,
		PublicURL: "https://" + r.name(i) + ".example.com",
	}
}

func (r *registryLoad) op() reqOp {
	return func(ctx context.Context, c *events.Client, i int64) (string, error) {
		switch {
		case i%10 == 0:
			req := r.newInstance(i)
			if _, err := c.Register(ctx, req); err != nil {
				return "", err
			}
			r.mu.Lock()
			r.regs = append(r.regs, req)
			r.mu.Unlock()
			return "register", nil
		case i%10 <= 6:
			r.mu.Lock()
			n := len(r.regs)
			var req events.RegisterRequest
			if n > 0 {
				req = r.regs[int(i)%n]
			}
			r.mu.Unlock()
			if n == 0 {
				return "", nil
			}
			_, err := c.Register(ctx, req)
			return "heartbeat", err
		default:
			_, err := c.Find(ctx, r.name(i))
			return "find", err
		}
	}
}

// cleanUp deregisters every instance the run registered.
func (r *registryLoad) cleanUp(ctx context.Context) {
	c, err := events.NewClient(r.h.t.ctl, events.ClientOptions{Subjects: r.h.t.cfg.Subjects})
	if err != nil {
		return
	}
	r.mu.Lock()
	regs := r.regs
	r.regs = nil
	r.mu.Unlock()
	for _, req := range regs {
		if ctx.Err() != nil {
			return
		}
		_ = c.Deregister(ctx, req.Name, req.ID)
	}
}
