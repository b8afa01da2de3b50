package service

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NewRegistry returns a new Prometheus registry holding the Go runtime and
// process collectors. Each service registers its own metrics on it and
// serves it on /metrics; the global registry is never used.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	// A fresh registry cannot hold a colliding collector, so this cannot fail.
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}
