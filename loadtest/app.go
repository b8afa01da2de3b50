package main

import (
	"context"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/allot/allot/loadtest/internal/hist"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/nats-io/nats.go/jetstream"
)

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
			a.probes.add(t.dedupProbe(uid, ev.ID, intended), intended)
		} else {
			a.probes.add(probeKeys{key: rawKey(t.baselinePrefix(), ev.Subject, ev.Data.Metric)}, intended)
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
