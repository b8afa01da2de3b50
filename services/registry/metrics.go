package registry

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the registry's own series.
type metrics struct {
	requests      *prometheus.CounterVec
	registrations *prometheus.CounterVec
	finds         *prometheus.CounterVec
	compressions  prometheus.Counter
	instances     prometheus.Gauge
	undecryptable *prometheus.CounterVec
	expired       prometheus.Counter
	leader        prometheus.Gauge
	changes       *prometheus.CounterVec
	publishErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	mt := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_registry_requests_total",
			Help: "Requests answered, by endpoint (register, find) and result (ok or an error code).",
		}, []string{"endpoint", "result"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_registry_registrations_total",
			Help: "Registrations stored, by what they did: appeared, changed, renewed (a heartbeat), or conflict (refused: the id belongs to another name).",
		}, []string{"change"}),
		finds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_registry_finds_total",
			Help: "Find requests served, by cache: hit (from memory) or miss (read from Redis).",
		}, []string{"cache"}),
		compressions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "allot_registry_find_compressions_total",
			Help: "Find replies gzipped for clients that accept gzip: once per cached reply (each name, until find_cache or a change event drops it), so a cache hit adds none.",
		}),
		instances: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "allot_registry_instances",
			Help: "Live instances this registry could read, as of its last read of Redis.",
		}),
		undecryptable: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_registry_undecryptable_total",
			Help: "Entries skipped because no configured key opens them, by where (find, reap) and reason (unknown_key: another cluster or a rotated-out key; corrupt).",
		}, []string{"where", "reason"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "allot_registry_expired_total",
			Help: "Expired registrations removed by the reaper.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "allot_registry_reaper_leader",
			Help: "1 while this replica holds the reaper lock and reaps.",
		}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_registry_changes_total",
			Help: "Change events published on registry.changed.<name>, by change: appeared, changed, expired.",
		}, []string{"change"}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "allot_registry_change_publish_errors_total",
			Help: "Change events that could not be published.",
		}),
	}
	if reg == nil {
		return mt, nil
	}
	for _, c := range []prometheus.Collector{mt.requests, mt.registrations, mt.finds, mt.compressions, mt.instances,
		mt.undecryptable, mt.expired, mt.leader, mt.changes, mt.publishErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return mt, nil
}
