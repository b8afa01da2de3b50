package meter

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/meter/internal/store"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// worker pulls usage events and applies them in batches.
type worker struct {
	m       *Meter
	cons    jetstream.Consumer
	backoff time.Duration // current pause after a Redis failure
}

// refusal is why an event is dead-lettered, with a bounded metric label.
type refusal struct {
	kind   string // label of allot_meter_dead_letters_total
	reason string // the Allot-Error header
}

// item is one fetched message on its way through a batch.
type item struct {
	msg    jetstream.Msg
	uid    string
	op     store.Op
	refuse *refusal
}

// run keeps events flowing from the consumer into chunks until ctx ends.
// A reader goroutine pulls continuously (the client prefetches up to two
// batches), so fetching overlaps applying; the chunks are applied in
// arrival order, one at a time, which keeps a gauge's last value last.
// When ctx ends the iterator is drained: what the client already holds is
// applied and acked before run returns.
func (w *worker) run(ctx context.Context) {
	log := w.m.log
	batch := w.m.cfg.Meter.Batch
	for ctx.Err() == nil {
		it, err := w.cons.Messages(jetstream.PullMaxMessages(2*batch), jetstream.PullExpiry(max(w.m.cfg.Meter.FetchWait, time.Second)))
		if err != nil {
			log.Warn("cannot consume; retrying", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		stop := context.AfterFunc(ctx, it.Drain)
		msgs := make(chan jetstream.Msg, batch)
		go func() {
			defer close(msgs)
			for {
				msg, err := it.Next()
				if err != nil {
					if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
						return
					}
					// A missed heartbeat or a deleted consumer: the iterator
					// recovers or ends; don't spin while it does.
					log.Warn("consuming", "err", err)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				msgs <- msg
			}
		}()
		w.drain(ctx, msgs)
		stop()
		it.Stop()
		for range msgs { // only when drain returned early: let the reader end
		}
	}
}

// drain applies msgs in chunks of whatever has arrived, up to a batch,
// pausing while Redis is away.
func (w *worker) drain(ctx context.Context, msgs <-chan jetstream.Msg) {
	chunk := make([]jetstream.Msg, 0, w.m.cfg.Meter.Batch)
	for msg := range msgs {
		for w.backoff > 0 && ctx.Err() == nil {
			w.waitForRedis(ctx)
		}
		chunk = append(chunk[:0], msg)
	more:
		for len(chunk) < cap(chunk) {
			select {
			case next, ok := <-msgs:
				if !ok {
					break more
				}
				chunk = append(chunk, next)
			default:
				break more
			}
		}
		w.process(chunk)
	}
}

// process applies one chunk: bad events to the dead letters, good ones in
// one pipelined round trip, notices published, then every message acked.
// On a Redis failure it naks the good events with a delay and pauses the
// worker until Redis answers.
func (w *worker) process(msgs []jetstream.Msg) {
	m := w.m
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.Meter.AckWait/2)
	defer cancel()
	m.metrics.batchSize.Observe(float64(len(msgs)))
	items := make([]item, len(msgs))
	var ops []store.Op
	var opItems []int
	for i, msg := range msgs {
		items[i] = w.parse(msg)
		if items[i].refuse == nil {
			ops = append(ops, items[i].op)
			opItems = append(opItems, i)
		}
	}
	if meta, err := msgs[len(msgs)-1].Metadata(); err == nil {
		m.metrics.pending.Set(float64(meta.NumPending))
	}

	if len(ops) > 0 {
		start := time.Now()
		results, err := m.store.Apply(ctx, ops)
		m.metrics.applySeconds.Observe(time.Since(start).Seconds())
		if err != nil {
			m.metrics.redisErrors.Inc()
			w.retryLater(msgs, items, err)
			return
		}
		w.backoff = 0
		var batches []noticeBatch
		var batchItems []*item
		for j, res := range results {
			it := &items[opItems[j]]
			switch {
			case res.Err != nil:
				it.refuse = applyRefusal(it.op, res.Err)
			case res.Applied:
				m.metrics.events.WithLabelValues("applied").Inc()
			default:
				m.metrics.events.WithLabelValues("duplicate").Inc()
			}
			if len(res.Notices) > 0 {
				batches = append(batches, noticeBatch{it.uid, it.op.Metric, it.op.Config, res.Notices})
				batchItems = append(batchItems, it)
			}
		}
		// Every notice of the chunk at once: one wait for the acks, one
		// round trip to clear them.
		for i, err := range m.publishNotices(ctx, batches) {
			if err != nil {
				// Applied, but its notice is not out: redeliver it. The
				// redelivery is a duplicate that returns the notice again.
				it := batchItems[i]
				m.log.Warn("notice not published; event will be redelivered", "uid", it.uid, "err", err)
				_ = it.msg.NakWithDelay(time.Second)
				it.msg = nil
			}
		}
	}
	w.deadLetters(ctx, items)
	for i := range items {
		it := &items[i]
		if it.msg == nil {
			continue
		}
		if err := it.msg.Ack(); err != nil {
			m.log.Warn("ack failed; the event will be redelivered and counted once", "err", err)
		}
	}
}

// parse decodes and checks one message against the contract and the
// metric's declaration, and builds its Op, or says why it is refused.
func (w *worker) parse(msg jetstream.Msg) item {
	m := w.m
	it := item{msg: msg}
	refuse := func(kind, format string, args ...any) item {
		it.refuse = &refusal{kind, fmt.Sprintf(format, args...)}
		return it
	}
	uid, err := m.subj.ParseUsage(msg.Subject())
	if err != nil {
		return refuse("subject", "%v", err)
	}
	it.uid = uid
	if n := len(msg.Data()); n > events.DefaultMaxEventBytes {
		return refuse("oversized", "event: must be at most %d bytes (got %d)", events.DefaultMaxEventBytes, n)
	}
	ev, err := events.Decode(msg.Data(), events.DefaultMaxEventBytes)
	if err != nil {
		return refuse("invalid", "%v", err)
	}
	if err := ev.CheckSubject(uid); err != nil {
		return refuse("subject", "%v", err)
	}
	mc, ok := m.cfg.Metric(ev.Data.Metric)
	if !ok {
		return refuse("unknown_metric", "data.metric: unknown metric %q", ev.Data.Metric)
	}
	if ev.Data.Value < 0 && mc.Style != service.StyleGauge {
		return refuse("value", "data.value: must be a number from 0 to 1e15 for a %s (got %s)", mc.Style, strconv.FormatFloat(ev.Data.Value, 'f', -1, 64))
	}
	names := make([]string, 0, len(ev.Data.Labels))
	for name := range ev.Data.Labels {
		if !mc.AllowsLabel(name) {
			return refuse("label", "data.labels.%s: not declared for metric %s", name, ev.Data.Metric)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	if mc.Scope == service.ScopeInstance && !events.IsToken(ev.Source) {
		return refuse("invalid", "source: must be a token for the instance-scoped metric %s (got %q)", ev.Data.Metric, ev.Source)
	}
	limit, _ := m.cfg.DefaultGrant(ev.Data.Metric)
	it.op = store.Op{
		ID:     ev.ID,
		UID:    uid,
		Source: ev.Source,
		Metric: ev.Data.Metric,
		Config: mc,
		Limit:  limit,
		Value:  ev.Data.Value,
		Field:  keys.LabelSet(names, ev.Data.Labels),
	}
	return it
}

// applyRefusal is why the store refused op: a sum past the largest
// number kept, or a script error.
func applyRefusal(op store.Op, err error) *refusal {
	var rerr *store.RangeError
	if !errors.As(err, &rerr) {
		return &refusal{"apply", err.Error()}
	}
	what := fmt.Sprintf("the used of grant %s", op.Metric)
	if op.Config.Style != service.StyleGrant {
		what = fmt.Sprintf("%s %s{%s}", op.Config.Style, op.Metric, op.Field)
	}
	return &refusal{"range", fmt.Sprintf("data.value: adding %s to %s, which holds %s, would pass 1e15, the largest number allot keeps; nothing was counted",
		rerr.Value, what, rerr.Held)}
}

// deadLetters stores the refused items of a chunk in the dead-letter
// stream, all at once, and waits for the acks; an item whose dead letter
// is not stored is naked for redelivery (its msg set to nil).
func (w *worker) deadLetters(ctx context.Context, items []item) {
	m := w.m
	var refused []*item
	var msgs []*nats.Msg
	for i := range items {
		if it := &items[i]; it.msg != nil && it.refuse != nil {
			refused = append(refused, it)
			msgs = append(msgs, w.deadLetterMsg(it))
		}
	}
	for j, err := range m.publishAll(ctx, msgs) {
		it := refused[j]
		if err != nil {
			m.log.Warn("dead letter not stored; event will be redelivered", "err", fmt.Errorf("meter: dead letter: %w", err))
			_ = it.msg.NakWithDelay(time.Second)
			it.msg = nil
			continue
		}
		m.metrics.events.WithLabelValues("dead").Inc()
		m.metrics.dead.WithLabelValues(it.refuse.kind).Inc()
		m.log.Info("event refused", "subject", it.msg.Subject(), "reason", it.refuse.reason)
	}
}

// deadLetterMsg is the dead letter of a refused item: its body, the
// reason in Allot-Error, and an id from its stream sequence, so a
// redelivered refusal is stored once.
func (w *worker) deadLetterMsg(it *item) *nats.Msg {
	m := w.m
	uid := it.uid
	if uid == "" {
		uid = "_" // the subject had no valid uid token
	}
	dl := nats.NewMsg(m.subj.DeadFor(uid))
	dl.Data = it.msg.Data()
	dl.Header.Set(events.ErrorHeader, it.refuse.reason)
	dl.Header.Set("Allot-Original-Subject", it.msg.Subject())
	id := "dead." + it.msg.Subject()
	if meta, err := it.msg.Metadata(); err == nil {
		seq := strconv.FormatUint(meta.Sequence.Stream, 10)
		dl.Header.Set("Allot-Original-Seq", seq)
		id = "dead." + m.cfg.Streams.Usage + "." + seq
	}
	dl.Header.Set(events.MsgIDHeader, id)
	return dl
}

// retryLater naks every good event of a chunk that met a Redis failure,
// with a delay that doubles up to a minute, dead-letters the bad ones
// (they never depend on Redis) and pauses the worker.
func (w *worker) retryLater(msgs []jetstream.Msg, items []item, err error) {
	m := w.m
	if w.backoff == 0 {
		w.backoff = m.cfg.Meter.RetryDelay
	} else {
		w.backoff = min(2*w.backoff, time.Minute)
	}
	m.log.Warn("redis unavailable; events will be redelivered", "events", len(msgs), "retry_in", w.backoff, "err", err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w.deadLetters(ctx, items) // naks (and clears) those it cannot store
	for i := range items {
		it := &items[i]
		switch {
		case it.msg == nil:
		case it.refuse != nil:
			_ = it.msg.Ack()
		default:
			_ = it.msg.NakWithDelay(w.backoff)
		}
	}
}

// waitForRedis pauses fetching until Redis answers a PING, checking at
// the current backoff.
func (w *worker) waitForRedis(ctx context.Context) {
	sleep(ctx, w.backoff)
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := w.m.store.Ping(pctx); err != nil {
		w.backoff = min(2*w.backoff, time.Minute)
		return
	}
	w.m.log.Info("redis is back; resuming")
	w.backoff = 0
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
