package auth

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the auth service's series.
type metrics struct {
	decisions *prometheus.CounterVec
	seconds   prometheus.Histogram
	kicks     *prometheus.CounterVec
	requests  *prometheus.CounterVec
	// reloadFailures counts a reloading backend's failed reloads (a bad
	// keys file); nil for other backends.
	reloadFailures prometheus.CounterFunc
}

// watchReloads exports the failed reloads of a backend that reloads.
func (m *metrics) watchReloads(reg prometheus.Registerer, be Backend) error {
	rf, ok := be.(ReloadFailureCounter)
	if !ok {
		return nil
	}
	m.reloadFailures = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "allot_auth_backend_reload_failures_total",
		Help: "Reloads of the key backend that failed (a bad keys file): the last good keys stay in force.",
	}, func() float64 { return float64(rf.ReloadFailures()) })
	if reg == nil {
		return nil
	}
	if err := reg.Register(m.reloadFailures); err != nil {
		return fmt.Errorf("auth: metrics: %w", err)
	}
	return nil
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_auth_decisions_total",
			Help: "Connections decided by the auth callout: result allowed, refused (reason: no_key, malformed_key, unknown_key, bad_secret, expired, revoked, source_network, client_name, unknown_role, inexpressible, error) or forged (a request not from a server).",
		}, []string{"result", "reason"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "allot_auth_decision_seconds",
			Help:    "Time from a callout request's arrival to its answer.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
		}),
		kicks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_auth_kicks_total",
			Help: "Connections disconnected because their key changed (revoked, overridden, added to, or edited in the file backend), and kicks that failed.",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_auth_requests_total",
			Help: "Requests to the key endpoints, by endpoint and result.",
		}, []string{"endpoint", "result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.decisions, m.seconds, m.kicks, m.requests} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("auth: metrics: %w", err)
			}
		}
	}
	return m, nil
}

// Decided implements CalloutObserver.
func (m *metrics) Decided(result, reason string, took time.Duration) {
	m.decisions.WithLabelValues(result, reason).Inc()
	m.seconds.Observe(took.Seconds())
}
