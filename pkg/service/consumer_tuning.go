package service

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ConsumerTuning is the configuration section of a service's consumer of
// a stream, inlined in the meter's section and under ratelimit.hits.
type ConsumerTuning struct {
	// Batch is the most messages handled in one chunk (one Redis round
	// trip).
	Batch int `yaml:"batch"`
	// FetchWait is how long one pull stays open at the server; its
	// heartbeat is half of it. The consumer pulls continuously, so this is
	// no delay; a short one on a busy machine misses heartbeats and makes
	// the client drop what a re-pull brings (redelivered only after the
	// ack wait). At least 1s.
	FetchWait time.Duration `yaml:"fetch_wait"`
	// AckWait is how long the server waits for an ack before redelivering.
	AckWait time.Duration `yaml:"ack_wait"`
	// MaxAckPending bounds the messages handed out and not yet acked.
	MaxAckPending int `yaml:"max_ack_pending"`
	// DedupTTL is how long a handled message's id is remembered. It must
	// outlast redelivery: several ack waits (and the stream's duplicate
	// window).
	DedupTTL time.Duration `yaml:"dedup_ttl"`
	// RetryDelay is the first pause before a chunk that met a backend
	// error is redelivered; it doubles up to a minute.
	RetryDelay time.Duration `yaml:"retry_delay"`
	// MaxDeliver is how often the server hands one message out before it
	// gives up on it; the service then dead-letters it with the reason
	// (WatchMaxDeliveries). While the backend is away the consumer holds
	// what it has taken in (in progress), so an outage uses no deliveries;
	// a chunk that still fails once the backend answers is nak'ed, and
	// from then on (or when the worker restarts mid-outage) a message is
	// handed out at most about once per ack wait (or per retry delay, when
	// that is longer), so the default, 500, outlasts about four hours of
	// that with the default ack wait of 30s: see MaxDeliverOutlasts.
	MaxDeliver int `yaml:"max_deliver"`
}

// DefaultMaxDeliver is the default of ConsumerTuning.MaxDeliver.
const DefaultMaxDeliver = 500

// MaxDeliverOutlasts is the shortest backend outage that can exhaust
// maxDeliver deliveries of one message, with the consumer's retry delays
// (first retryDelay, doubling up to maxRetryDelay) and its ack wait: a
// message the consumer holds is handed out again when its nak delay runs
// out or, while the consumer pauses, when its ack wait does, whichever
// comes first; so the quickest redeliveries are the growing retry delays
// until they reach the ack wait, then one per ack wait (or per
// maxRetryDelay when that is shorter). The defaults (500, 1s, 1m, 30s)
// give 4h10m.
func MaxDeliverOutlasts(maxDeliver int, retryDelay, maxRetryDelay, ackWait time.Duration) time.Duration {
	var total time.Duration
	step := retryDelay
	steady := min(ackWait, maxRetryDelay)
	for n := 1; n < maxDeliver; n++ {
		total += min(step, steady)
		step = min(2*step, maxRetryDelay)
	}
	return total
}

// DefaultConsumerTuning returns the defaults: chunks of 500, pulls open
// 30s, ack wait 30s, 20,000 unacked at most, ids remembered a day, first
// retry after a second, a message given up on after 500 deliveries.
func DefaultConsumerTuning() ConsumerTuning {
	return ConsumerTuning{Batch: 500, FetchWait: 30 * time.Second, AckWait: 30 * time.Second, MaxAckPending: 20000, DedupTTL: 24 * time.Hour, RetryDelay: time.Second, MaxDeliver: DefaultMaxDeliver}
}

// Validate checks t and returns every broken rule joined, each naming its
// field under section (meter, ratelimit.hits); dedup_ttl must also outlast
// duplicates (the stream's duplicate window; 0 for none).
func (t ConsumerTuning) Validate(section string, duplicates time.Duration) error {
	return errors.Join(t.validate(section, duplicates)...)
}

func (t ConsumerTuning) validate(section string, duplicates time.Duration) []error {
	var errs []error
	if t.Batch < 1 || t.Batch > 10000 {
		errs = append(errs, fieldError(section+".batch", "must be between 1 and 10000, got %d", t.Batch))
	}
	if t.FetchWait < time.Second {
		errs = append(errs, fieldError(section+".fetch_wait", "must be at least 1s, got %v", t.FetchWait))
	}
	if t.AckWait < time.Second {
		errs = append(errs, fieldError(section+".ack_wait", "must be at least 1s, got %v", t.AckWait))
	}
	if t.MaxAckPending < t.Batch {
		errs = append(errs, fieldError(section+".max_ack_pending", "must be at least %s.batch (%d), got %d", section, t.Batch, t.MaxAckPending))
	}
	// An id must be remembered while the stream could still hand it out
	// again: past its duplicate window and a good number of redeliveries.
	if min := max(duplicates, 10*t.AckWait); t.DedupTTL < min {
		errs = append(errs, fieldError(section+".dedup_ttl", "must be at least %v (the stream's duplicate window and 10 ack waits), got %v", min, t.DedupTTL))
	}
	if t.RetryDelay <= 0 || t.RetryDelay > time.Minute {
		errs = append(errs, fieldError(section+".retry_delay", "must be > 0 and at most 1m, got %v", t.RetryDelay))
	}
	if t.MaxDeliver < 2 || t.MaxDeliver > 1_000_000 {
		errs = append(errs, fieldError(section+".max_deliver", "must be between 2 and 1000000 (a message is dead-lettered after that many deliveries), got %d", t.MaxDeliver))
	}
	return errs
}

// ConsumerConfig is the Consumer's configuration from t, for the consumer
// called name.
func (t ConsumerTuning) ConsumerConfig(name string) ConsumerConfig {
	return ConsumerConfig{Name: name, Batch: t.Batch, PullExpiry: t.FetchWait, AckWait: t.AckWait, MaxAckPending: t.MaxAckPending, RetryDelay: t.RetryDelay}
}

// ConsumerMetrics are a consumer's series, named under a prefix such as
// allot_meter: <prefix>_batch_size (messages per chunk),
// <prefix>_consumer_pending (messages in the stream not yet delivered, as
// of the last chunk), <prefix>_consumer_lag_seconds (from a chunk's last
// message being stored to its being handled), and
// <prefix>_consumer_retries_total (messages naked for redelivery), and
// <prefix>_consumer_max_deliveries_total{outcome} (messages the server
// gave up on after max_deliver: dead_lettered, or failed when the dead
// letter could not be stored).
type ConsumerMetrics struct {
	batchSize     prometheus.Histogram
	pending       prometheus.Gauge
	lag           prometheus.Histogram
	retries       prometheus.Counter
	maxDeliveries *prometheus.CounterVec
}

// MaxDeliveryCounted counts one max-deliveries advisory by its outcome,
// as MaxDeliveries.Counted.
func (m *ConsumerMetrics) MaxDeliveryCounted(outcome string) {
	m.maxDeliveries.WithLabelValues(outcome).Inc()
}

// SetPending sets <prefix>_consumer_pending from the consumer's info. A
// replica standing by on a pinned consumer handles no chunk, so without
// it its value would stay at its last chunk's.
func (m *ConsumerMetrics) SetPending(n uint64) {
	m.pending.Set(float64(n))
}

// NewConsumerMetrics registers a consumer's series under prefix with reg
// (nil registers none) and returns them.
func NewConsumerMetrics(reg prometheus.Registerer, prefix, what string) (*ConsumerMetrics, error) {
	m := &ConsumerMetrics{
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    prefix + "_batch_size",
			Help:    what + " per chunk handled at once.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prefix + "_consumer_pending",
			Help: "Messages in the stream not yet delivered to this consumer, as of the last chunk.",
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    prefix + "_consumer_lag_seconds",
			Help:    "Time from a chunk's last message being stored in the stream to the chunk being handled.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: prefix + "_consumer_retries_total",
			Help: "Messages naked for redelivery (the backend away, or a part of their handling failed).",
		}),
		maxDeliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "_consumer_max_deliveries_total",
			Help: "Messages the server gave up on after max_deliver deliveries, by outcome: dead_lettered, or failed (left in the stream, logged).",
		}, []string{"outcome"}),
	}
	for _, o := range []string{"dead_lettered", "failed"} {
		m.maxDeliveries.WithLabelValues(o)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.batchSize, m.pending, m.lag, m.retries, m.maxDeliveries} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("service: consumer metrics: %w", err)
			}
		}
	}
	return m, nil
}
