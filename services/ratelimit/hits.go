package ratelimit

import (
	"context"
	"errors"
	"fmt"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/ratelimit/internal/store"
	"github.com/nats-io/nats.go/jetstream"
)

// hitCounter counts usage events of the metrics named by services'
// `metric` as hits of those services: a handler of USAGE chunks on its
// own durable consumer (service.Consumer pulls, acks and pauses). An
// event is counted once per service however often it is delivered, by a
// dedup record set in the same script (the meter's rule). Events that are
// not valid are acked and skipped: the meter dead-letters them.
type hitCounter struct {
	l        *Limiter
	byMetric map[string][]string // metric -> services
}

// startHits creates the consumer and starts counting, when some service
// counts hits from events. ratelimit.hits tunes it.
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
	h := l.cfg.RateLimit.Hits
	cons, err := js.CreateOrUpdateConsumer(ctx, l.cfg.Streams.Usage, jetstream.ConsumerConfig{
		Durable:     l.cfg.RateLimit.Consumer,
		Description: "allot rate limiter: counts usage events as hits",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     h.AckWait,
		// Past it the server gives up on an event; WatchMaxDeliveries
		// dead-letters it, naming this consumer.
		MaxDeliver:    h.MaxDeliver,
		MaxAckPending: h.MaxAckPending,
		FilterSubject: l.cfg.Subjects.UsageStreamSubject(),
		// Old events belong to windows long gone: start from now.
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fmt.Errorf("ratelimit: consumer %s on %s: %w", l.cfg.RateLimit.Consumer, l.cfg.Streams.Usage, err)
	}
	cc := h.ConsumerConfig(l.cfg.RateLimit.Consumer)
	cc.Ready, cc.Metrics = l.store.Ping, l.consumerMetrics
	consumer, err := service.NewConsumer(cons, js, hitCounter{l: l, byMetric: byMetric}, cc, l.log)
	if err != nil {
		return fmt.Errorf("ratelimit: %w", err)
	}
	subj := l.cfg.Subjects
	stopWatch, err := service.WatchMaxDeliveries(js, service.MaxDeliveries{
		Stream: l.cfg.Streams.Usage, Consumer: l.cfg.RateLimit.Consumer, Counted: l.consumerMetrics.MaxDeliveryCounted,
		DeadLetters: &service.DeadLetters{Subject: func(subject string) string {
			uid, err := subj.ParseUsage(subject)
			if err != nil {
				uid = "_"
			}
			return subj.DeadFor(uid)
		}},
	}, l.log)
	if err != nil {
		return fmt.Errorf("ratelimit: %w", err)
	}
	stopConsumer := consumer.Start(ctx)
	l.stopHits = func(ctx context.Context) error {
		defer stopWatch()
		return stopConsumer(ctx)
	}
	return nil
}

// HandleChunk implements service.ChunkHandler: the chunk's hits in one
// round trip; a Redis failure returns the error, and the consumer naks
// the chunk with a growing delay and pauses until Redis answers.
func (w hitCounter) HandleChunk(ctx context.Context, msgs []jetstream.Msg) ([]service.Outcome, error) {
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
	out := make([]service.Outcome, len(msgs)) // all acked
	if len(hits) == 0 {
		return out, nil
	}
	counted, errs, err := l.store.Hits(ctx, hits, l.cfg.RateLimit.Hits.DedupTTL)
	if err != nil {
		return out, err
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
	return out, nil
}

// hitRange is what an event may add to a window: a whole number of hits.
var hitRange = events.Range{Min: 0, Max: events.MaxNumber, Integer: true}

// parse returns the hits of one event, or why it is skipped: other_metric
// (not counted by any service) or invalid.
func (w hitCounter) parse(msg jetstream.Msg) ([]store.Hit, string) {
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
	md, err := msg.Metadata()
	if err != nil {
		return nil, "invalid"
	}
	hits := make([]store.Hit, 0, len(services))
	for _, svc := range services {
		rl, _ := l.cfg.RateLimit.RateLimitFor(svc)
		hits = append(hits, store.Hit{ID: ev.ID, UID: uid, Service: svc, Interval: rl.Interval, Value: int64(v), At: md.Timestamp})
	}
	return hits, ""
}
