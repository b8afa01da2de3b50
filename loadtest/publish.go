package main

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allot/allot/loadtest/internal/report"
	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

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
