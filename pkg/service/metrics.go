package service

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NewRegistry returns a new Prometheus registry holding the Go runtime and
// process collectors and allot_build_info. Each service registers its own
// metrics on it and serves it on /metrics; the global registry is never
// used.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	// A fresh registry cannot hold a colliding collector, so this cannot fail.
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newBuildInfoGauge(Build()),
	)
	return reg
}

// newBuildInfoGauge is allot_build_info: 1, labelled with what the binary
// was built from, the usual way to join a version to other series
// (… * on(instance) group_left(version) allot_build_info).
func newBuildInfoGauge(b BuildInfo) prometheus.Gauge {
	rev := b.Revision
	if rev == "" {
		rev = "unknown"
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "allot_build_info",
		Help:        "Always 1; its labels say what the binary was built from: version (semantic), VCS revision, Go version.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": rev, "go_version": b.GoVersion},
	})
	g.Set(1)
	return g
}

// RequestDurationBuckets are allot_request_duration_seconds's buckets:
// 100µs (a reply from memory) to 10s (far past any client's timeout).
var RequestDurationBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Outcomes of a request, by the status of its reply: ok (no error),
// bad_request (400), refused (401, 403, 429: a denial, such as a grant
// or a rate limit used up), not_found (404), conflict (409), unavailable
// (503: a backend down, or shutting down) and internal (500 and
// anything else, including an answer that could not be sent).
const (
	OutcomeOK          = "ok"
	OutcomeBadRequest  = "bad_request"
	OutcomeRefused     = "refused"
	OutcomeNotFound    = "not_found"
	OutcomeConflict    = "conflict"
	OutcomeUnavailable = "unavailable"
	OutcomeInternal    = "internal"
)

type outcome int

const (
	outcomeOK outcome = iota
	outcomeBadRequest
	outcomeRefused
	outcomeNotFound
	outcomeConflict
	outcomeUnavailable
	outcomeInternal
	numOutcomes
)

var outcomeNames = [numOutcomes]string{OutcomeOK, OutcomeBadRequest, OutcomeRefused, OutcomeNotFound,
	OutcomeConflict, OutcomeUnavailable, OutcomeInternal}

// outcomeOf maps a reply's status (0: not an error) to its outcome; a
// reply that failed to go out is internal whatever it carried.
func outcomeOf(status int, failure string) outcome {
	switch {
	case failure == "" && status == 0:
		return outcomeOK
	case status == 400:
		return outcomeBadRequest
	case status == 401 || status == 403 || status == 429:
		return outcomeRefused
	case status == 404:
		return outcomeNotFound
	case status == 409:
		return outcomeConflict
	case status == 503:
		return outcomeUnavailable
	}
	return outcomeInternal
}

// RequestDurations registers on reg, and returns, the histogram of a
// service's request endpoints: allot_request_duration_seconds{service,
// endpoint, outcome}, the time from a request's arrival to its reply.
// service is a constant label, so the services of one process (allot
// dev) share the one metric; registering a service's twice returns the
// first. A nil reg registers nothing and returns nil.
func RequestDurations(reg prometheus.Registerer, service string) (*prometheus.HistogramVec, error) {
	if reg == nil {
		return nil, nil
	}
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "allot_request_duration_seconds",
		Help: "Time from a request's arrival to its reply, by service, endpoint and outcome " +
			"(ok, bad_request, refused, not_found, conflict, unavailable, internal).",
		ConstLabels: prometheus.Labels{"service": service},
		Buckets:     RequestDurationBuckets,
	}, []string{"endpoint", "outcome"})
	if err := reg.Register(h); err != nil {
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			if h, ok := already.ExistingCollector.(*prometheus.HistogramVec); ok {
				return h, nil
			}
		}
		return nil, fmt.Errorf("%s: register allot_request_duration_seconds: %w", service, err)
	}
	return h, nil
}

// observersOf returns an endpoint's histogram for each outcome, every
// series made at once so that a rate over an outcome never seen is 0,
// not absent; without a histogram, observers that drop the value.
func observersOf(h *prometheus.HistogramVec, endpoint string) [numOutcomes]prometheus.Observer {
	var obs [numOutcomes]prometheus.Observer
	for o := range numOutcomes {
		if h == nil {
			obs[o] = prometheus.ObserverFunc(func(float64) {})
			continue
		}
		obs[o] = h.WithLabelValues(endpoint, outcomeNames[o])
	}
	return obs
}
