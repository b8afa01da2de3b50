package service

import (
	"sort"
	"time"

	"github.com/allot/allot/pkg/events"
)

// Rate-limit modes.
const (
	// ModeFixed counts per epoch-aligned window of one interval: exact per
	// window, but a burst at a boundary can pass twice the limit within
	// one interval.
	ModeFixed = "fixed"
	// ModeSliding weights the previous window's count by the part of it
	// still inside the sliding interval, so a boundary burst cannot pass
	// twice the limit.
	ModeSliding = "sliding"
)

// RateLimitGrant is the grant that holds a uid's own rate limit.
const RateLimitGrant = "ratelimit"

// MaxRateLimitServiceName is the longest rate-limited service name: the
// per-uid override of service s is the grant "ratelimit_<s>", which must
// itself be a token of at most 128 characters.
const MaxRateLimitServiceName = 128 - len(RateLimitGrant+"_")

// MaxRateLimit is the largest configured limit of a rate-limited service.
const MaxRateLimit = 1_000_000_000

// RateLimitConfig tunes the rate-limit service.
type RateLimitConfig struct {
	// Interval is the window of the uid's own limit (requests that name no
	// service) and the default of every service. At least 1s. Default 300s.
	Interval time.Duration `yaml:"interval"`
	// Mode is fixed (apicrud's even/odd windows) or sliding. Default fixed.
	Mode string `yaml:"mode"`
	// Handlers is how many request handlers serve each endpoint, in one
	// queue group. Default 2: a check handler only queues the request for
	// a pipeline, and BenchmarkCheck found 2 as fast as 8.
	Handlers int `yaml:"handlers"`
	// Pipelines is how many batches of checks are in Redis at once: each
	// takes the checks that queued up while the others were busy, up to
	// 256, and decides them in one pipelined round trip. Default 2.
	Pipelines int `yaml:"pipelines"`
	// Timeout bounds the Redis work of one decision; past it the service's
	// fail_open decides. Default 50ms.
	Timeout time.Duration `yaml:"timeout"`
	// Shadow decides and counts but never denies, for every service.
	Shadow bool `yaml:"shadow"`
	// FailOpen allows calls when Redis does not answer within Timeout, for
	// every service; false (the default) answers 503.
	FailOpen bool `yaml:"fail_open"`
	// Consumer is the durable consumer of the usage stream that counts
	// hits of services with a metric. It is created only when some service
	// has one, delivering new events only. Default "ratelimit".
	Consumer string `yaml:"consumer"`
	// Hits tunes that consumer.
	Hits ConsumerTuning `yaml:"hits"`
	// Services are the rate-limited services, by name. A check naming a
	// service not listed here is a 404.
	Services map[string]RateLimitService `yaml:"services"`
}

// RateLimitService is the rate limit of one service.
type RateLimitService struct {
	// Interval is the window; default ratelimit.interval.
	Interval time.Duration `yaml:"interval,omitempty"`
	// Mode is fixed or sliding; default ratelimit.mode.
	Mode string `yaml:"mode,omitempty"`
	// Limit is the default limit per window. Unset: the uid's "ratelimit"
	// grant. A uid's grant "ratelimit_<service>" overrides both.
	Limit *int64 `yaml:"limit,omitempty"`
	// Shadow decides and counts but never denies.
	Shadow bool `yaml:"shadow,omitempty"`
	// FailOpen allows calls when Redis does not answer in time; false (the
	// default) answers 503.
	FailOpen bool `yaml:"fail_open,omitempty"`
	// Metric, when set, also counts usage events of this metric (a
	// per-user counter) as hits of the service: each event adds its value
	// to the uid's current window, once however often it is delivered
	// (the meter's rule: a dedup record set in the same script, kept for
	// ratelimit.hits.dedup_ttl). ratelimit.hits tunes the consumer.
	Metric string `yaml:"metric,omitempty"`
	// Cache keeps (uid, service) pairs known to be over the limit in
	// memory until their window lets them in again, answering without
	// Redis. Off by default.
	Cache bool `yaml:"cache,omitempty"`
}

// DefaultRateLimit returns the rate limiter's defaults.
func DefaultRateLimit() RateLimitConfig {
	return RateLimitConfig{
		Interval:  300 * time.Second,
		Mode:      ModeFixed,
		Handlers:  2,
		Pipelines: 2,
		Timeout:   50 * time.Millisecond,
		Consumer:  "ratelimit",
		Hits:      DefaultConsumerTuning(),
	}
}

// HitServices returns, by metric, the services that count its usage
// events as hits.
func (c RateLimitConfig) HitServices() map[string][]string {
	out := map[string][]string{}
	for _, name := range c.ServiceNames() {
		if m := c.Services[name].Metric; m != "" {
			out[m] = append(out[m], name)
		}
	}
	return out
}

// RateLimitFor returns the effective rate limit of service with the
// section's defaults filled in; "" is the uid's own limit. ok is false
// for a service that is not configured.
func (c RateLimitConfig) RateLimitFor(service string) (s RateLimitService, ok bool) {
	if service == "" {
		return RateLimitService{Interval: c.Interval, Mode: c.Mode, Shadow: c.Shadow, FailOpen: c.FailOpen}, true
	}
	s, ok = c.Services[service]
	if !ok {
		return RateLimitService{}, false
	}
	if s.Interval == 0 {
		s.Interval = c.Interval
	}
	if s.Mode == "" {
		s.Mode = c.Mode
	}
	s.Shadow = s.Shadow || c.Shadow
	s.FailOpen = s.FailOpen || c.FailOpen
	return s, true
}

// ServiceNames returns the configured services, sorted.
func (c RateLimitConfig) ServiceNames() []string {
	names := make([]string, 0, len(c.Services))
	for n := range c.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func validMode(mode string) bool { return mode == ModeFixed || mode == ModeSliding }

// validateInterval checks a window: whole milliseconds, from 1s to 31 days.
func validateInterval(errs []error, field string, d time.Duration) []error {
	switch {
	case d < time.Second:
		return append(errs, fieldError(field, "must be at least 1s, got %v", d))
	case d > 31*24*time.Hour:
		return append(errs, fieldError(field, "must be at most 744h (31 days), got %v", d))
	case d%time.Millisecond != 0:
		return append(errs, fieldError(field, "must be whole milliseconds, got %v", d))
	}
	return errs
}

func (c RateLimitConfig) validate(metrics map[string]MetricConfig, duplicates time.Duration) []error {
	var errs []error
	if !events.IsToken(c.Consumer) {
		errs = append(errs, fieldError("ratelimit.consumer", "must be a token, got %q", c.Consumer))
	}
	errs = append(errs, c.Hits.validate("ratelimit.hits", duplicates)...)
	errs = validateInterval(errs, "ratelimit.interval", c.Interval)
	if !validMode(c.Mode) {
		errs = append(errs, fieldError("ratelimit.mode", "must be fixed or sliding, got %q", c.Mode))
	}
	if c.Handlers < 1 || c.Handlers > 256 {
		errs = append(errs, fieldError("ratelimit.handlers", "must be between 1 and 256, got %d", c.Handlers))
	}
	if c.Pipelines < 1 || c.Pipelines > 64 {
		errs = append(errs, fieldError("ratelimit.pipelines", "must be between 1 and 64, got %d", c.Pipelines))
	}
	if c.Timeout < time.Millisecond || c.Timeout > 10*time.Second {
		errs = append(errs, fieldError("ratelimit.timeout", "must be between 1ms and 10s, got %v", c.Timeout))
	}
	for _, name := range c.ServiceNames() {
		s := c.Services[name]
		field := "ratelimit.services." + name
		if !events.IsToken(name) || len(name) > MaxRateLimitServiceName {
			errs = append(errs, fieldError(field, "service names must be 1 to %d characters of A-Z a-z 0-9 _ -", MaxRateLimitServiceName))
		}
		if s.Interval != 0 {
			errs = validateInterval(errs, field+".interval", s.Interval)
		}
		if s.Mode != "" && !validMode(s.Mode) {
			errs = append(errs, fieldError(field+".mode", "must be fixed or sliding, got %q", s.Mode))
		}
		if s.Metric != "" {
			m, ok := metrics[s.Metric]
			m = m.Normalized()
			switch {
			case !ok:
				errs = append(errs, fieldError(field+".metric", "unknown metric %q: declare it under metrics", s.Metric))
			case m.Style != StyleCounter || m.Scope != ScopeUser:
				errs = append(errs, fieldError(field+".metric", "%q must be a counter of scope user to count hits, not a %s of scope %s", s.Metric, m.Style, m.Scope))
			}
		}
		if s.Limit != nil && (*s.Limit < 0 || *s.Limit > MaxRateLimit) {
			errs = append(errs, fieldError(field+".limit", "must be between 0 and %d, got %d", MaxRateLimit, *s.Limit))
		}
	}
	return errs
}
