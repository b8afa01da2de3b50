package ratelimit

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the rate limiter's series. The service label takes the
// configured service names and "(uid)" for the uid's own limit, so its
// values are bounded by the config.
type metrics struct {
	decisions *prometheus.CounterVec
	nearLimit *prometheus.CounterVec
	overLimit *prometheus.CounterVec
	peeks     *prometheus.CounterVec
	cacheHits *prometheus.CounterVec
	latency   prometheus.Histogram
	batchSize prometheus.Histogram
	requests  *prometheus.CounterVec
	hits      *prometheus.CounterVec
	hitEvents *prometheus.CounterVec

	rebuilding  prometheus.Gauge
	rebuilds    *prometheus.CounterVec
	rebuildDone prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	mt := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_ratelimit_decisions_total",
			Help: "Rate-limit decisions (peeks apart), by service and result: allowed, denied, shadow_denied (would have been denied; allowed in shadow mode), failed_open (Redis did not answer; allowed), failed_closed (Redis did not answer; 503).",
		}, []string{"service", "result"}),
		nearLimit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_ratelimit_near_limit_total",
			Help: "Decisions (peeks included) that left the window at 80% of its limit or more, by service.",
		}, []string{"service"}),
		overLimit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_ratelimit_over_limit_total",
			Help: "Decisions (peeks apart) over the limit, denied or shadow_denied, by service.",
		}, []string{"service"}),
		peeks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_ratelimit_peeks_total",
			Help: "Checks with cost 0, which consume nothing, by service.",
		}, []string{"service"}),
		cacheHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_ratelimit_cache_hits_total",
			Help: "Refusals answered from the local over-limit cache without Redis, by service.",
		}, []string{"service"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "allot_ratelimit_decision_seconds",
			Help:    "Time to decide one check, Redis included.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14),
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "allot_ratelimit_batch_size",
			Help:    "Checks per batch: those that queued up while the pipelines were busy, decided in one Redis round trip.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 9), // 1 to 256, the largest batch
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_ratelimit_requests_total",
			Help: "Requests answered, by endpoint and result (ok or an error code).",
		}, []string{"endpoint", "result"}),
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_ratelimit_hits_total",
			Help: "Hits from usage events, by service and result: counted, duplicate (counted before), refused (the window would pass 1e15), failed (a script error; not retried).",
		}, []string{"service", "result"}),
		hitEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_ratelimit_hit_events_skipped_total",
			Help: "Usage events the hit consumer skipped, by reason: other_metric (no service counts it) or invalid (the meter dead-letters it).",
		}, []string{"reason"}),
		rebuilding: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "allot_ratelimit_rebuilding",
			Help: "1 while Redis lacks the rate limiter's windows of hits from usage events (no epoch marker): checks of the services that count hits answer by their fail mode until a replay of the usage stream puts them back.",
		}),
		rebuilds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_ratelimit_rebuilds_total",
			Help: "Rebuilds of the lost windows of hits from the usage stream this replica ran, by result: done, or failed (tried again after ratelimit.loss_check).",
		}, []string{"result"}),
		rebuildDone: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "allot_ratelimit_rebuild_progress_ratio",
			Help: "How far this replica's last rebuild of the windows of hits came, 0 to 1: the share of the usage stream's events it replayed (1: done).",
		}),
	}
	for _, r := range []string{"done", "failed"} {
		mt.rebuilds.WithLabelValues(r)
	}
	if reg == nil {
		return mt, nil
	}
	for _, c := range []prometheus.Collector{mt.decisions, mt.nearLimit, mt.overLimit, mt.peeks, mt.cacheHits, mt.latency, mt.batchSize, mt.requests, mt.hits, mt.hitEvents,
		mt.rebuilding, mt.rebuilds, mt.rebuildDone} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return mt, nil
}
