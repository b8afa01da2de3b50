package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allot/allot/loadtest/internal/hist"
	"github.com/allot/allot/loadtest/internal/report"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	stream, consumer, subjects := t.cfg.Streams.Usage, t.cfg.Meter.Consumer, t.cfg.Subjects
	if s.raw {
		stream, consumer, subjects = t.rawStream, t.rawConsumer, t.rawSubjects
	}
	ph := report.Phase{Name: s.name, What: s.what, Mode: "closed", Concurrency: h.o.Apps, Start: time.Since(h.start).Seconds()}
	if s.rate > 0 {
		ph.Mode, ph.Rate, ph.Concurrency = "open", s.rate, 0
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	out := &sends{} // what the apps put into the stream, for the bound on the backlog
	w, err := watchFloor(wctx, t.js, stream, consumer, out)
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
	for _, a := range apps {
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
	ph.Counts["drain_ms"] = drained.Sub(end).Milliseconds()
	ps, ls := pubLat.Summary(), pr.lag.Summary()
	ph.Latency, ph.Lag = &ps, &ls
	ph.Errors = errs.snapshot()
	ph.Series = []report.Series{{Name: seriesName(s.name, "lag"), Points: pr.lag.Timeline(start.Sub(h.start).Seconds())}}
	ph.Resources = h.sampleEnd(res)
	return ph
}

func seriesName(phase, what string) string { return phase + " " + what }

// app1 is one simulated app in an ingest phase.
type app1 struct {
	h        *harness
	s        ingestSpec
	id       int
	subjects events.Subjects
	probes   *probes
	lat      *hist.Recorder
	errs     *kinds
	live     *liveStat
	out      *sends // what the phase's apps put into the stream
	rng      *rand.Rand

	pub    *events.AsyncPublisher // nil if the app could not start
	opts   events.PublisherOptions
	js     jetstream.JetStream // for copies without Nats-Msg-Id
	sends  map[string]int      // event id -> sends through pub, for ids sent more than once
	sent   int64
	copies int64
	bad    int64
	n      int
}

func (a *app1) start() error {
	nc := a.h.t.conns[a.id%len(a.h.t.conns)]
	a.opts = events.PublisherOptions{Subjects: a.subjects, Source: "loadtest-app-" + strconv.Itoa(a.id)}
	pub, err := events.NewAsyncPublisher(nc, events.AsyncOptions{PublisherOptions: a.opts})
	if err != nil {
		return err
	}
	// A timeout, so no copy waits for its ack forever (settleAcks).
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		_, _ = pub.Close(context.Background()) // nothing sent yet
		return err
	}
	a.pub, a.js, a.sends = pub, js, map[string]int{}
	a.out.add(pub)
	return nil
}

func (a *app1) loop(ctx context.Context, start, deadline time.Time, w *floorWatcher) {
	var interval time.Duration
	if a.s.rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(a.h.o.Apps) / a.s.rate)
		// Spread the apps' schedules over one interval.
		start = start.Add(time.Duration(a.id) * interval / time.Duration(a.h.o.Apps))
	}
	for k := 0; ctx.Err() == nil; k++ {
		var intended time.Time
		if interval > 0 {
			intended = start.Add(time.Duration(k) * interval)
			if !intended.Before(deadline) {
				return
			}
			if d := time.Until(intended); d > 200*time.Microsecond {
				time.Sleep(d)
			}
		} else {
			for w.backlogNow() > maxBacklog && time.Now().Before(deadline) && ctx.Err() == nil {
				time.Sleep(2 * time.Millisecond)
			}
			intended = time.Now()
			if !intended.Before(deadline) {
				return
			}
		}
		a.send(ctx, intended)
	}
}

// send publishes one event at its intended time: a bad one, or a good
// one and perhaps a copy of it.
func (a *app1) send(ctx context.Context, intended time.Time) {
	t := a.h.t
	uid := t.uid(a.rng.IntN(a.h.o.UIDs))
	ev := events.Event{Subject: uid, Source: a.opts.Source, Time: intended}
	id, err := events.NewID()
	if err != nil {
		a.errs.add("id", 1)
		return
	}
	ev.ID = id
	meter := !a.s.raw
	if meter && a.rng.Float64() < a.s.bad {
		ev.Data = events.Usage{Metric: metricUnknown, Value: 1}
		if a.n%2 == 1 {
			ev.Data = events.Usage{Metric: metricCounter, Value: -1, Labels: map[string]string{"resource": "photo"}}
		}
		a.n++
		if a.publish(ctx, ev, intended) {
			a.bad++
			a.h.ledger.bad.Add(1)
		}
		return
	}
	value := float64(1 + a.rng.IntN(3))
	var key stateKey
	if a.rng.IntN(2) == 0 {
		r := resources[a.rng.IntN(len(resources))]
		ev.Data = events.Usage{Metric: metricCounter, Value: value, Labels: map[string]string{"resource": r}}
		key = stateKey{uid: uid, metric: metricCounter, field: keys.LabelSet([]string{"resource"}, ev.Data.Labels)}
	} else {
		ev.Data = events.Usage{Metric: metricGrant, Value: value}
		key = stateKey{uid: uid, metric: metricGrant, field: "u", grant: true}
	}
	probe := a.probes.want(intended)
	if probe && !meter {
		// The raw worker keeps no per-event record: a uid of its own
		// makes the probe's counter appear when the event is applied.
		ev.Subject = t.uidPrefix() + "p" + strconv.Itoa(a.id) + "-" + strconv.FormatInt(a.sent, 10)
	}
	if meter {
		a.h.ledger.add(key, value) // before sending: the check must never run ahead of it
	}
	if !a.publish(ctx, ev, intended) {
		if meter {
			a.h.ledger.add(key, -value)
		}
		return
	}
	a.sent++
	a.live.ops.Add(1)
	if meter {
		a.h.ledger.good.Add(1)
	}
	if probe {
		if meter {
			a.probes.add(t.keys.Dedup(keys.UserTag(uid), ev.ID), intended)
		} else {
			a.probes.add(rawKey(t.baselinePrefix(), ev.Subject, ev.Data.Metric), intended)
		}
	}
	if meter && a.rng.Float64() < a.s.dup {
		a.copies++
		a.h.ledger.dups.Add(1)
		if a.copies%2 == 1 {
			// Same id, same Nats-Msg-Id: the stream drops it.
			a.sends[ev.ID] = 2
			if err := a.pub.Publish(ctx, ev); err != nil {
				a.errs.add("publish", 1)
				a.sends[ev.ID] = 1
			} else {
				a.out.queued.Add(1)
			}
		} else {
			// Same event without Nats-Msg-Id: the stream keeps both and
			// the meter's own dedup record must drop the second.
			cp := ev
			msg, err := events.Prepare(&cp, a.opts)
			if err == nil {
				msg.Header.Del(events.MsgIDHeader)
				_, err = a.js.PublishMsgAsync(msg)
			}
			if err != nil {
				a.errs.add("publish_copy", 1)
			} else {
				a.out.queued.Add(1)
			}
		}
	}
}

func (a *app1) publish(ctx context.Context, ev events.Event, intended time.Time) bool {
	err := a.pub.Publish(ctx, ev)
	now := time.Now()
	if err != nil {
		if ctx.Err() == nil {
			a.errs.add(errKind(err), 1)
			a.live.errs.Add(1)
		}
		return false
	}
	a.out.queued.Add(1)
	a.lat.Record(now, now.Sub(intended))
	return true
}

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

// finish closes the app's publisher, after settleAcks, and settles the
// events that failed: an event none of whose sends was stored becomes of
// unknown fate. What is still in flight (settleAcks gave up) is counted
// as publish_unsettled, and the phase is incomplete already.
func (a *app1) finish() {
	if a.pub == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	failed, err := a.pub.Close(ctx)
	if err != nil {
		a.errs.add("publish_unsettled", int64(a.pub.Stats().InFlight))
	}
	if a.s.raw {
		a.errs.add("publish_failed", int64(len(failed)))
		return
	}
	byID := map[string]int{}
	for _, f := range failed {
		byID[f.Event.ID]++
	}
	for _, f := range failed {
		id := f.Event.ID
		sends := max(a.sends[id], 1)
		if byID[id] < sends {
			continue // another send of it was stored
		}
		byID[id] = 0 // settle each id once
		a.errs.add(errKind(f.Err), 1)
		ev := f.Event
		switch {
		case ev.Data.Metric == metricUnknown || ev.Data.Value < 0:
			a.h.ledger.badFailed.Add(1)
		case ev.Data.Metric == metricGrant:
			a.h.ledger.fail(stateKey{uid: ev.Subject, metric: metricGrant, field: "u", grant: true}, ev.Data.Value, true)
		default:
			a.h.ledger.fail(stateKey{uid: ev.Subject, metric: metricCounter, field: keys.LabelSet([]string{"resource"}, ev.Data.Labels)}, ev.Data.Value, true)
		}
	}
}

// publishOnly compares the publisher alone with raw nats.go: closed loop,
// -apps publishers with the same window, into a stream no one consumes.
// The rate is events acknowledged per second, until the last ack.
func (h *harness) publishOnly(ctx context.Context, name string, raw bool, dur time.Duration) report.Phase {
	t := h.t
	what := "events.AsyncPublisher, publish only"
	if raw {
		what = "raw nats.go PublishMsgAsync with Nats-Msg-Id"
	}
	ph := report.Phase{Name: name, What: what, Mode: "closed", Concurrency: h.o.Apps, Start: time.Since(h.start).Seconds()}
	start := time.Now()
	deadline := start.Add(dur)
	lv := h.live.add(name, nil, nil, nil)
	defer h.live.remove(lv)
	errs := newKinds()
	var acked atomic.Int64
	var wg sync.WaitGroup
	for app := range h.o.Apps {
		nc := t.conns[app%len(t.conns)]
		wg.Go(func() {
			if raw {
				acked.Add(rawPublish(ctx, nc, t.pubRaw, app, deadline, lv, errs))
				return
			}
			pub, err := events.NewAsyncPublisher(nc, events.AsyncOptions{PublisherOptions: events.PublisherOptions{Subjects: t.pubSubjects, Source: "loadtest-pub-" + strconv.Itoa(app)}})
			if err != nil {
				errs.add("setup", 1)
				return
			}
			var n int64
			for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				if err := pub.Publish(ctx, events.NewUsage(t.uid(i%h.o.UIDs), metricCounter, 1)); err != nil {
					errs.add(errKind(err), 1)
					continue
				}
				n++
				lv.ops.Add(1)
			}
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			failed, _ := pub.Close(cctx)
			st := pub.Stats()
			errs.add("publish_failed", int64(len(failed)))
			acked.Add(int64(st.Acked))
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	ph.Seconds, ph.Ops = secs, acked.Load()
	ph.Throughput = float64(acked.Load()) / secs
	ph.Errors = errs.snapshot()
	return ph
}

// rawPublish is the publish baseline for one app: nats.go's async publish
// with an id header, bodies encoded once per event, no validation.
func rawPublish(ctx context.Context, nc *nats.Conn, prefix string, app int, deadline time.Time, lv *liveStat, errs *kinds) int64 {
	var acked atomic.Int64
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncAckHandler(func(jetstream.JetStream, *nats.Msg, *jetstream.PubAck) { acked.Add(1) }),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) { errs.add(errKind(err), 1) }),
	)
	if err != nil {
		errs.add("setup", 1)
		return 0
	}
	ev := events.NewUsage("x", metricCounter, 1)
	ev.Source, ev.Time = "loadtest-raw", time.Now()
	buf := make([]byte, 0, 256)
	for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
		ev.ID = "raw-" + strconv.Itoa(app) + "-" + strconv.Itoa(i)
		ev.Subject = "u" + strconv.Itoa(i%1000)
		buf = ev.AppendJSON(buf[:0])
		msg := &nats.Msg{Subject: prefix + "." + ev.Subject, Data: append([]byte(nil), buf...), Header: nats.Header{jetstream.MsgIDHeader: []string{ev.ID}}}
		if _, err := js.PublishMsgAsync(msg); err != nil {
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				i-- // the window was full for too long: send it again
				continue
			}
			errs.add(errKind(err), 1)
			continue
		}
		lv.ops.Add(1)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(20 * time.Second):
		errs.add("publish_unsettled", int64(js.PublishAsyncPending()))
	}
	return acked.Load()
}

// kinds counts errors or outcomes by kind; safe for concurrent use.
type kinds struct {
	mu sync.Mutex
	m  map[string]int64
}

func newKinds() *kinds { return &kinds{m: map[string]int64{}} }

func (k *kinds) add(kind string, n int64) {
	if n == 0 {
		return
	}
	k.mu.Lock()
	k.m[kind] += n
	k.mu.Unlock()
}

func (k *kinds) snapshot() map[string]int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) == 0 {
		return nil
	}
	out := make(map[string]int64, len(k.m))
	for a, b := range k.m {
		out[a] = b
	}
	return out
}

func (k *kinds) total() int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	var n int64
	for _, v := range k.m {
		n += v
	}
	return n
}

// errKind names an error for the report.
func errKind(err error) string {
	var serr *events.ServiceError
	switch {
	case errors.As(err, &serr):
		return string(serr.Code)
	case errors.Is(err, events.ErrTimeout), errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout), errors.Is(err, jetstream.ErrAsyncPublishTimeout):
		return "timeout"
	case errors.Is(err, events.ErrNoResponders), errors.Is(err, nats.ErrNoResponders):
		return "no_responders"
	case errors.Is(err, events.ErrNoStream):
		return "no_stream"
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionReconnecting):
		return "disconnected"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	return "other"
}
