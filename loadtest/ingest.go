package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allot/allot/loadtest/internal/hist"
	"github.com/allot/allot/loadtest/internal/report"
	"github.com/allot/allot/pkg/testenv"
)

// The metrics the run uses: all in allot's default configuration, so an
// external install needs no change.
const (
	metricCounter   = "api_calls_total"   // counter, label resource
	metricGrant     = "photo_daily_total" // grant per day
	metricAuthorize = "email_daily_total" // grant per day, spent by the authorize scenario only
	metricUnknown   = "lt_unknown_metric" // refused by the meter: a bad event
)

var resources = []string{"photo", "album", "list"}

// maxBacklog bounds what a closed-loop ingest phase lets pile up in the
// consumer, so the maximum rate is one the consumer sustains, not the
// rate of filling a queue.
const maxBacklog = 20000

// ingestSpec is one ingest phase.
type ingestSpec struct {
	name, what string
	raw        bool    // through the raw worker's stream instead of the meter's
	rate       float64 // open loop at rate events/s; 0 is closed loop
	dur        time.Duration
	dup, bad   float64
}

// ingest runs one ingest phase: -apps publishers, each an
// events.AsyncPublisher as an app would use, then waits (bounded) until
// the consumer has applied everything and the lag probes are seen.
func (h *harness) ingest(ctx context.Context, s ingestSpec) report.Phase {
	t := h.t
	stream, consumers, subjects := t.cfg.Streams.Usage, t.meterConsumers(), t.cfg.Subjects
	if s.raw {
		stream, consumers, subjects = t.rawStream, []string{t.rawConsumer}, t.rawSubjects
	}
	ph := report.Phase{Name: s.name, What: s.what, Mode: "closed", Concurrency: h.o.Apps, Start: time.Since(h.start).Seconds()}
	if s.rate > 0 {
		ph.Mode, ph.Rate, ph.Concurrency = "open", s.rate, 0
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	out := &sends{} // what the apps put into the stream, for the bound on the backlog
	w, err := watchFloor(wctx, t.js, stream, consumers, out)
	if err != nil {
		ph.Incomplete = err.Error()
		return ph
	}
	start := time.Now()
	deadline := start.Add(s.dur)
	pubLat := hist.New(start)
	pr := newProbes(t.rdb, start)
	go pr.run(wctx)
	lv := h.live.add(s.name, pubLat, pr.lag, func() uint64 { return w.last().backlog })
	defer h.live.remove(lv)
	res := h.sampleStart()
	calls0, _ := testenv.RedisCallsContext(ctx, t.rdb)

	var wg sync.WaitGroup
	var sent, copies, bad atomic.Int64
	errs := newKinds()
	apps := make([]*app1, h.o.Apps)
	for i := range apps {
		apps[i] = &app1{h: h, s: s, id: i, subjects: subjects, probes: pr, lat: pubLat, errs: errs, live: lv, out: out,
			rng: rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))}
	}
	for _, a := range apps {
		wg.Go(func() {
			if err := a.start(); err != nil {
				errs.add("setup", 1)
				h.log.Warn("app could not start", "app", a.id, "err", err)
				return
			}
			a.loop(ctx, start, deadline, w)
		})
	}
	wg.Wait()
	var incomplete []string
	// The last acks: what the stream stored must be known before the
	// ledger is settled and the drain's target is read.
	if err := settleAcks(ctx, "publish acks", apps); err != nil {
		incomplete = append(incomplete, err.Error())
	}
	var streamDups int64
	for _, a := range apps {
		if a.pub != nil {
			streamDups += int64(a.pub.Stats().Duplicates)
		}
		a.finish()
		sent.Add(a.sent)
		copies.Add(a.copies)
		bad.Add(a.bad)
	}
	end := time.Now()
	ph.Seconds = end.Sub(start).Seconds()

	// Drain: everything stored must be applied before the next phase.
	if err := w.drain(ctx, t.js, "drain", stream); err != nil {
		incomplete = append(incomplete, err.Error())
	}
	ph.Incomplete = strings.Join(incomplete, "; ")
	drained := time.Now()
	sctx, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	pr.settle(sctx)
	if n := pr.pending(); n > 0 {
		errs.add("probe_not_applied", int64(n))
	}
	// The rate: events applied per second from the phase's start until
	// the last of them was applied, so a backlog left at the end counts
	// against it.
	ph.Throughput, _ = w.rate(start, drained)
	ph.Ops = sent.Load()
	ph.Counts = map[string]int64{"events": sent.Load()}
	if c := copies.Load(); c > 0 {
		ph.Counts["duplicate_copies"] = c
	}
	if b := bad.Load(); b > 0 {
		ph.Counts["bad"] = b
	}
	if streamDups > 0 {
		// Acked as a repeated id: the copies sent with their id, and
		// resends of events the stream had stored already.
		ph.Counts["stream_duplicates"] = streamDups
	}
	ph.Counts["drain_ms"] = drained.Sub(end).Milliseconds()
	// Redis commands (scripts' own included) from the phase's start to
	// its drain: the probes' polls and anything else on that Redis count
	// too, so this is an upper bound.
	if calls1, err := testenv.RedisCallsContext(ctx, t.rdb); err == nil && calls0 >= 0 && calls1 >= calls0 {
		ph.Counts["redis_commands"] = calls1 - calls0
	}
	ps, ls := pubLat.Summary(), pr.lag.Summary()
	ph.Latency, ph.Lag = &ps, &ls
	ph.Errors = errs.snapshot()
	ph.Series = []report.Series{{Name: seriesName(s.name, "lag"), Points: pr.lag.Timeline(start.Sub(h.start).Seconds())}}
	ph.Resources = h.sampleEnd(res)
	return ph
}

func seriesName(phase, what string) string { return phase + " " + what }

// settleStall is the stall budget of the publishers' last acks: the
// longest an event can take to settle in events.AsyncPublisher with its
// defaults (4 attempts of 5 s, 3 pauses of 250 ms), plus a margin. While
// events are in flight one settles, acked or failed, at least that often.
const settleStall = 25 * time.Second

// settleAcks waits until no event of apps is in flight, for as long as
// acks (or failures) keep arriving.
func settleAcks(ctx context.Context, what string, apps []*app1) error {
	return waitFor(ctx, realClock{}, waitSpec{What: what, Unit: "events settled (acked or failed)", Stall: settleStall,
		StallWhy: "events.AsyncPublisher's longest settle, 4 attempts of 5s, plus 4s", Every: 50 * time.Millisecond},
		func(context.Context) (progress, error) {
			var p progress
			var inFlight, copies int
			for _, a := range apps {
				if a.pub == nil {
					continue
				}
				st := a.pub.Stats()
				p.Done += int64(st.Acked + st.Failed)
				p.Total += int64(st.Acked+st.Failed) + int64(st.InFlight)
				inFlight += st.InFlight
				copies += a.js.PublishAsyncPending()
			}
			p.Complete = inFlight == 0 && copies == 0
			p.State = fmt.Sprintf("%s events in flight, %s copies without an id waiting for their ack", commas(int64(inFlight)), commas(int64(copies)))
			return p, nil
		})
}
