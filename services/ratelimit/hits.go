package ratelimit

import (
	"context"
	"errors"
	"fmt"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/mutex"
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
		FilterSubject: l.cfg.Streams.UsageFilter(l.cfg.Subjects),
		// Old events belong to windows long gone: start from now.
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fmt.Errorf("ratelimit: consumer %s on %s: %w", l.cfg.RateLimit.Consumer, l.cfg.Streams.Usage, err)
	}
	if guards(l.cfg) {
		if err := l.startEpoch(ctx, js); err != nil {
			return err
		}
	}
	cc := h.ConsumerConfig(l.cfg.RateLimit.Consumer)
	cc.Ready, cc.Metrics = l.hitsReady, l.consumerMetrics
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
	stopEpoch := func() {}
	if guards(l.cfg) {
		ectx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { defer close(done); l.watchEpoch(ectx) }()
		stopEpoch = func() { cancel(); <-done }
	}
	l.stopHits = func(ctx context.Context) error {
		defer stopWatch()
		stopEpoch()
		return stopConsumer(ctx)
	}
	return nil
}

// startEpoch finds the usage stream and the epoch marker (adopting
// windows from before the marker) and the rebuild lock, before the hit
// consumer starts: it must not count into windows Redis has lost.
func (l *Limiter) startEpoch(ctx context.Context, js jetstream.JetStream) error {
	var err error
	if l.usage, err = js.Stream(ctx, l.cfg.Streams.Usage); err != nil {
		return fmt.Errorf("ratelimit: stream %s: %w", l.cfg.Streams.Usage, err)
	}
	l.epoch = newEpoch(l.rdb, l.store.Keys())
	if err := l.adoptOrCheckEpoch(ctx); err != nil {
		return fmt.Errorf("ratelimit: %w", err)
	}
	if l.locker, err = mutex.New(l.rdb, mutex.Options{Prefix: l.cfg.Redis.KeyPrefix, Registerer: l.registerer}); err != nil {
		return fmt.Errorf("ratelimit: %w", err)
	}
	return nil
}

// HandleChunk implements service.ChunkHandler: the chunk's hits in one
// round trip; a Redis failure returns the error, and the consumer naks
// the chunk with a growing delay and pauses until Redis answers. While
// the windows of hits are lost it counts nothing and waits the same way
// for their rebuild.
func (w hitCounter) HandleChunk(ctx context.Context, msgs []jetstream.Msg) ([]service.Outcome, error) {
	return w.PrepareChunk(msgs)(ctx)
}

// PrepareChunk implements service.ChunkPreparer: the chunk's events are
// decoded into hits while the chunk before is counted.
func (w hitCounter) PrepareChunk(msgs []jetstream.Msg) func(context.Context) ([]service.Outcome, error) {
	p := w.parseAll(msgs)
	return func(ctx context.Context) ([]service.Outcome, error) {
		out := make([]service.Outcome, len(msgs)) // all acked
		if w.l.lost.Load() {
			return out, errRebuilding
		}
		_, err := w.countParsed(ctx, p)
		return out, err
	}
}

// hitTally is what count did with a chunk: events skipped, and hits by
// result, per (event, service).
type hitTally struct {
	skipped, counted, duplicate, refused, failed int64
}

// parsedHits are a chunk's hits, and why each event skipped was.
type parsedHits struct {
	hits    []store.Hit
	skipped []string // the reason of each event skipped
}

// count counts the hits of msgs, the live consumer's and a rebuild's
// path alike, recording them in the metrics. The error is a failed round
// trip: nothing can be said of any hit, and sending them all again is
// safe.
func (w hitCounter) count(ctx context.Context, msgs []jetstream.Msg) (hitTally, error) {
	return w.countParsed(ctx, w.parseAll(msgs))
}

// parseAll parses every event of a chunk.
func (w hitCounter) parseAll(msgs []jetstream.Msg) parsedHits {
	var p parsedHits
	for _, msg := range msgs {
		hs, reason := w.parse(msg)
		if reason != "" {
			p.skipped = append(p.skipped, reason)
			continue
		}
		p.hits = append(p.hits, hs...)
	}
	return p
}

// countParsed is count of a parsed chunk.
func (w hitCounter) countParsed(ctx context.Context, p parsedHits) (hitTally, error) {
	l := w.l
	var t hitTally
	for _, reason := range p.skipped {
		l.metrics.hitEvents.WithLabelValues(reason).Inc()
		t.skipped++
	}
	hits := p.hits
	if len(hits) == 0 {
		return t, nil
	}
	counted, errs, err := l.store.Hits(ctx, hits, l.cfg.RateLimit.Hits.DedupTTL)
	if err != nil {
		return hitTally{}, err
	}
	for i, h := range hits {
		switch {
		case errors.Is(errs[i], store.ErrOutOfRange):
			t.refused++
			l.metrics.hits.WithLabelValues(h.Service, "refused").Add(float64(h.Value))
			l.log.Warn("hit not counted", "uid", h.UID, "service", h.Service, "event", h.ID, "err", errs[i])
		case errs[i] != nil:
			t.failed++
			l.metrics.hits.WithLabelValues(h.Service, "failed").Inc()
			l.log.Error("hit not counted", "uid", h.UID, "service", h.Service, "event", h.ID, "err", errs[i])
		case counted[i]:
			t.counted++
			l.metrics.hits.WithLabelValues(h.Service, "counted").Add(float64(h.Value))
		default:
			t.duplicate++
			l.metrics.hits.WithLabelValues(h.Service, "duplicate").Add(float64(h.Value))
		}
	}
	return t, nil
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
