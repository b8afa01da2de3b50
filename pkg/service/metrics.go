package service

import (
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
