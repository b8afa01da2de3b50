package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/services/notifier"
)

// What a fault scenario waits for: a consumer catching up, a service
// answering again, and the probe of the requests sent while Redis is away.

// lastSeq is a stream's last sequence.
func (f *faultRun) lastSeq(ctx context.Context, stream string) (uint64, error) {
	var last uint64
	err := retryFor(ctx, 30*time.Second, func(ctx context.Context) error {
		s, err := f.h.t.js.Stream(ctx, stream)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		last = info.State.LastSeq
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", stream, err)
	}
	return last, nil
}

// retryFor calls try, each call bounded to 2 s, every 100 ms until it
// succeeds or limit has passed; a server that is starting again fails
// for a while.
func retryFor(ctx context.Context, limit time.Duration, try func(ctx context.Context) error) error {
	deadline := time.Now().Add(limit)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := try(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing after %s: %w", limit, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFloorAll waits until consumer's ack floor on stream reaches seq:
// everything stored up to seq is handled.
func (f *faultRun) waitFloorAll(ctx context.Context, stream, consumer string, seq uint64, limit time.Duration) error {
	if seq == 0 {
		return nil
	}
	var floor uint64
	err := retryFor(ctx, limit, func(ctx context.Context) error {
		c, err := f.h.t.js.Consumer(ctx, stream, consumer)
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if floor = info.AckFloor.Stream; floor < seq {
			return fmt.Errorf("ack floor at %s of %s (%s not delivered, %d delivered and not acked)", commas(int64(floor)), commas(int64(seq)),
				commas(int64(info.NumPending)), info.NumAckPending)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("consumer %s on %s: %w", consumer, stream, err)
	}
	return nil
}

// waitMeter waits until the meter has applied everything up to seq and
// meter.credit answers (not 503).
func (f *faultRun) waitMeter(ctx context.Context, seq uint64) error {
	if err := f.waitFloorAll(ctx, f.h.t.cfg.Streams.Usage, f.h.t.meter.Consumer, seq, 2*time.Minute); err != nil {
		return err
	}
	return f.waitAnswer(ctx, "meter")
}

// waitAll waits until the meter has applied everything up to seq, every
// service answers, and the notifier has taken every notice published.
func (f *faultRun) waitAll(ctx context.Context, seq uint64) error {
	if err := f.waitMeter(ctx, seq); err != nil {
		return err
	}
	for _, svc := range []string{"ratelimit", "registry"} {
		if err := f.waitAnswer(ctx, svc); err != nil {
			return err
		}
	}
	n, err := f.lastSeq(ctx, f.h.t.cfg.Streams.Notify)
	if err != nil {
		return err
	}
	return f.waitFloorAll(ctx, f.h.t.cfg.Streams.Notify, notifier.DefaultSettings().Durable, n, time.Minute)
}

// recoveryMark is what svc must catch up with after a kill: the stream
// sequence it consumes up to now (meter: USAGE; notifier: NOTIFY).
func (f *faultRun) recoveryMark(ctx context.Context, svc string) (uint64, error) {
	switch svc {
	case "meter":
		return f.lastSeq(ctx, f.h.t.cfg.Streams.Usage)
	case "notifier":
		return f.lastSeq(ctx, f.h.t.cfg.Streams.Notify)
	}
	return 0, nil
}

// waitRecovered waits until svc works again after a kill: the meter and
// the notifier have handled everything up to mark; the rate limiter and
// the registry answer.
func (f *faultRun) waitRecovered(ctx context.Context, svc string, mark uint64) error {
	t := f.h.t
	switch svc {
	case "meter":
		return f.waitFloorAll(ctx, t.cfg.Streams.Usage, t.meter.Consumer, mark, 2*time.Minute)
	case "notifier":
		return f.waitFloorAll(ctx, t.cfg.Streams.Notify, notifier.DefaultSettings().Durable, mark, 2*time.Minute)
	}
	return f.waitAnswer(ctx, svc)
}

// waitAnswer waits until svc answers a request with something other
// than an error of its backend: meter.credit, ratelimit.check,
// registry.find.
func (f *faultRun) waitAnswer(ctx context.Context, svc string) error {
	t := f.h.t
	c, err := events.NewClient(t.ctl, events.ClientOptions{Subjects: t.cfg.Subjects, Timeout: time.Second})
	if err != nil {
		return err
	}
	call := map[string]func(ctx context.Context) error{
		"meter": func(ctx context.Context) error { _, err := c.Credit(ctx, t.uid(0), metricGrant); return err },
		"ratelimit": func(ctx context.Context) error {
			_, err := c.Check(ctx, t.uid(0), events.CheckRequest{Cost: events.Cost(0)})
			return err
		},
		"registry": func(ctx context.Context) error { _, err := c.Find(ctx, "lt"+t.runID); return err },
	}[svc]
	if call == nil {
		return fmt.Errorf("no request to ask %s", svc)
	}
	err = retryFor(ctx, 2*time.Minute, func(ctx context.Context) error {
		err := call(ctx)
		if err != nil && definite(err) {
			return nil // an answer
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%s does not answer: %w", svc, err)
	}
	return nil
}

// outageProbe asks meter.credit, meter.authorize and ratelimit.check ten
// times a second each, each request on its own so that a slow one does
// not hold the next back, and records when each was sent, how long its
// answer took and what it was.
type outageProbe struct {
	mu      sync.Mutex
	results []probeResult
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

type probeResult struct {
	op   string
	sent time.Time
	took time.Duration
	kind string // "ok", or errKind
}

func (f *faultRun) startOutageProbe(ctx context.Context) *outageProbe {
	t := f.h.t
	p := &outageProbe{}
	ctx, p.cancel = context.WithCancel(ctx)
	// Longer than any service's own timeout, so their answer is what is
	// measured, not the client giving up.
	c, err := events.NewClient(t.conns[0], events.ClientOptions{Subjects: t.cfg.Subjects, Timeout: 10 * time.Second})
	if err != nil {
		f.fail("the outage probe: %v", err)
		return p
	}
	auth := f.opAuthorize()
	ops := map[string]func(ctx context.Context, i int64) error{
		"credit": func(ctx context.Context, i int64) error {
			_, err := c.Credit(ctx, t.uid(int(i%int64(f.o.UIDs))), metricGrant)
			return err
		},
		"authorize": func(ctx context.Context, i int64) error { _, err := auth(ctx, c, i); return err },
		"check": func(ctx context.Context, i int64) error {
			_, err := c.Check(ctx, t.uid(int(i%int64(f.o.UIDs))), events.CheckRequest{})
			return err
		},
	}
	for name, op := range ops {
		p.wg.Go(func() {
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for i := int64(0); ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				p.wg.Go(func() {
					sent := time.Now()
					err := op(context.WithoutCancel(ctx), i)
					r := probeResult{op: name, sent: sent, took: time.Since(sent), kind: "ok"}
					if err != nil {
						r.kind = errKind(err)
					}
					p.mu.Lock()
					p.results = append(p.results, r)
					p.mu.Unlock()
				})
			}
		})
	}
	return p
}

func (p *outageProbe) stop() {
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
}

// probeSlack is how much later than its configured timeout a request
// may fail on a loaded machine and still count as failing within it.
const probeSlack = 500 * time.Millisecond

// judge checks the requests sent while Redis was away (from cut until
// the request's own timeout before healed): each must have failed the
// way its service is configured to, within its timeout plus probeSlack.
func (p *outageProbe) judge(f *faultRun, cut, healed time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rt := f.h.t.cfg.NATS.RequestTimeout // the meter's bound on a request (nats.request_timeout)
	type rule struct {
		limit time.Duration
		want  string
		why   string
	}
	rules := map[string]rule{
		"credit":    {rt, "unavailable", fmt.Sprintf("503 within nats.request_timeout (%s)", rt)},
		"authorize": {rt, "unavailable", fmt.Sprintf("503 within nats.request_timeout (%s)", rt)},
		"check":     {ratelimitTimeout, "unavailable", fmt.Sprintf("503, failing closed, within ratelimit.timeout (%s)", ratelimitTimeout)},
	}
	var parts []string
	for _, op := range []string{"credit", "authorize", "check"} {
		r := rules[op]
		kinds := map[string]int64{}
		var n int64
		var worst time.Duration
		var late, wrong int64
		for _, x := range p.results {
			if x.op != op || x.sent.Before(cut) || !x.sent.Add(r.limit+probeSlack).Before(healed) {
				continue
			}
			n++
			kinds[x.kind]++
			worst = max(worst, x.took)
			if x.took > r.limit+probeSlack {
				late++
			}
			if x.kind != r.want {
				wrong++
			}
		}
		parts = append(parts, fmt.Sprintf("%s %s (%s), slowest %s", op, commas(n), kindsText(kinds), worst.Round(time.Millisecond)))
		switch {
		case n == 0:
			f.fail("no %s request was sent while Redis was away", op)
		case late > 0 || wrong > 0:
			f.fail("%s while Redis was away: %d of %d answered later than %s and %d not with %s (want %s)", op, late, n, r.limit+probeSlack, wrong, r.want, r.why)
		}
	}
	f.note("requests sent while Redis was away: %s", strings.Join(parts, "; "))
}

// ratelimitTimeout is the rate limiter's default ratelimit.timeout.
var ratelimitTimeout = 50 * time.Millisecond
