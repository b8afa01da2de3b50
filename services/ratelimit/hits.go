package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/services/ratelimit/internal/store"
	"github.com/nats-io/nats.go/jetstream"
)

// hitWorker counts usage events of the metrics named by services'
// `metric` as hits of those services. It has its own durable consumer;
// an event is counted once per service however often it is delivered,
// by a dedup record set in the same script (the meter's rule). Events
// that are not valid are acked and skipped: the meter dead-letters them.
type hitWorker struct {
	l        *Limiter
	cons     jetstream.Consumer
	byMetric map[string][]string // metric -> services
	backoff  time.Duration       // current pause after a Redis failure
}

// startHits creates the consumer and starts the worker, when some
// service counts hits from events.
func (l *Limiter) startHits(ctx context.Context) error {
	byMetric := l.cfg.RateLimit.HitServices()
	if len(byMetric) == 0 {
		return nil
	}
	js, err := jetstream.New(l.nc)
	if err != nil {
		return fmt.Errorf("ratelimit: %w", err)
	}
	if err := events.EnsureStreams(ctx, js, l.cfg.Subjects, l.cfg.Streams); err != nil {
		return fmt.Errorf("ratelimit: %w", err)
	}
	m := l.cfg.Meter
	cons, err := js.CreateOrUpdateConsumer(ctx, l.cfg.Streams.Usage, jetstream.ConsumerConfig{
		Durable:       l.cfg.RateLimit.Consumer,
		Description:   "allot rate limiter: counts usage events as hits",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       m.AckWait,
		MaxDeliver:    -1, // transient failures are retried
		MaxAckPending: m.MaxAckPending,
		FilterSubject: l.cfg.Subjects.UsageStreamSubject(),
		// Old events belong to windows long gone: start from now.
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fmt.Errorf("ratelimit: consumer %s on %s: %w", l.cfg.RateLimit.Consumer, l.cfg.Streams.Usage, err)
	}
	w := &hitWorker{l: l, cons: cons, byMetric: byMetric}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.cancel = cancel
	l.done = make(chan struct{})
	go func() {
		defer close(l.done)
		w.run(wctx)
	}()
	return nil
}

// run fetches and counts until ctx ends; what it fetched last is counted
// and acked before it returns.
func (w *hitWorker) run(ctx context.Context) {
	m := w.l.cfg.Meter
	for ctx.Err() == nil {
		if w.backoff > 0 {
			w.waitForRedis(ctx)
			continue
		}
		batch, err := w.cons.Fetch(m.Batch, jetstream.FetchMaxWait(m.FetchWait))
		if err != nil {
			w.l.log.Warn("cannot fetch usage events; retrying", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		var msgs []jetstream.Msg
		for msg := range batch.Messages() {
			msgs = append(msgs, msg)
		}
		if len(msgs) > 0 {
			w.process(msgs)
		}
	}
}

// process counts one batch in one round trip, then acks it; on a Redis
// failure it naks it with a delay and pauses until Redis answers.
func (w *hitWorker) process(msgs []jetstream.Msg) {
	l := w.l
	var hits []store.Hit
	for _, msg := range msgs {
		hs, reason := w.parse(msg)
		if reason != "" {
			l.metrics.hitEvents.WithLabelValues(reason).Inc()
			continue
		}
		hits = append(hits, hs...)
	}
	if len(hits) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.Meter.AckWait/2)
		counted, errs, err := l.store.Hits(ctx, hits, l.cfg.Meter.DedupTTL)
		cancel()
		if err != nil {
			w.retryLater(msgs, err)
			return
		}
		for i, h := range hits {
			switch {
			case errors.Is(errs[i], store.ErrOutOfRange):
				l.metrics.hits.WithLabelValues(h.Service, "refused").Add(float64(h.Value))
				l.log.Warn("hit not counted", "uid", h.UID, "service", h.Service, "event", h.ID, "err", errs[i])
			case errs[i] != nil:
				l.metrics.hits.WithLabelValues(h.Service, "failed").Inc()
				l.log.Error("hit not counted", "uid", h.UID, "service", h.Service, "event", h.ID, "err", errs[i])
			case counted[i]:
				l.metrics.hits.WithLabelValues(h.Service, "counted").Add(float64(h.Value))
			default:
				l.metrics.hits.WithLabelValues(h.Service, "duplicate").Add(float64(h.Value))
			}
		}
	}
	for _, msg := range msgs {
		if err := msg.Ack(); err != nil {
			l.log.Warn("ack", "err", err)
		}
	}
}

// hitRange is what an event may add to a window: a whole number of hits.
var hitRange = events.Range{Min: 0, Max: events.MaxNumber, Integer: true}

// parse returns the hits of one event, or why it is skipped: other_metric
// (not counted by any service) or invalid.
func (w *hitWorker) parse(msg jetstream.Msg) ([]store.Hit, string) {
	l := w.l
	uid, err := l.cfg.Subjects.ParseUsage(msg.Subject())
	if err != nil {
		return nil, "invalid"
	}
	ev, err := events.Decode(msg.Data(), events.DefaultMaxEventBytes)
	if err != nil || ev.CheckSubject(uid) != nil {
		return nil, "invalid"
	}
	services := w.byMetric[ev.Data.Metric]
	if len(services) == 0 {
		return nil, "other_metric"
	}
	v := ev.Data.Value
	if events.CheckNumber("data.value", v, hitRange) != nil {
		return nil, "invalid"
	}
	hits := make([]store.Hit, 0, len(services))
	for _, svc := range services {
		rl, _ := l.cfg.RateLimit.RateLimitFor(svc)
		hits = append(hits, store.Hit{ID: ev.ID, UID: uid, Service: svc, Interval: rl.Interval, Value: int64(v)})
	}
	return hits, ""
}

func (w *hitWorker) retryLater(msgs []jetstream.Msg, err error) {
	retry := w.l.cfg.Meter.RetryDelay
	if w.backoff == 0 {
		w.backoff = retry
	} else {
		w.backoff = min(2*w.backoff, time.Minute)
	}
	w.l.log.Warn("redis unavailable; usage events will be redelivered", "events", len(msgs), "retry_in", w.backoff, "err", err)
	for _, msg := range msgs {
		_ = msg.NakWithDelay(w.backoff)
	}
}

// waitForRedis pauses fetching until Redis answers a PING.
func (w *hitWorker) waitForRedis(ctx context.Context) {
	sleep(ctx, w.backoff)
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := w.l.store.Ping(pctx); err != nil {
		if !errors.Is(err, context.Canceled) {
			w.backoff = min(2*w.backoff, time.Minute)
		}
		return
	}
	w.l.log.Info("redis is back; counting hits again")
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
