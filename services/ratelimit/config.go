package ratelimit

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/usage"
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

// Grant is the grant that holds a uid's own rate limit.
const Grant = "ratelimit"

// MaxServiceName is the longest rate-limited service name: the per-uid
// override of service s is the grant "ratelimit_<s>", which must itself be
// a token of at most 128 characters.
const MaxServiceName = 128 - len(Grant+"_")

// MaxLimit is the largest configured limit of a rate-limited service.
const MaxLimit = 1_000_000_000

// Settings is the ratelimit section of allot.yaml, which the rate limiter
// owns: its tuning and the rate-limited services.
type Settings struct {
	// Interval is the window of the uid's own limit (requests that name no
	// service) and the default of every service. At least 1s. Default 300s.
	Interval time.Duration `yaml:"interval"`
	// Mode is fixed (apicrud's even/odd windows) or sliding. Default fixed.
	Mode string `yaml:"mode"`
	// Handlers is how many reset requests are served at once, and how
	// many subscriptions take each endpoint's requests in (checks are then
	// served in batches: Pipelines). Default 2: BenchmarkCheck found 2 as
	// fast as 8.
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
	Hits service.ConsumerTuning `yaml:"hits"`
	// LossCheck is how often the rate limiter checks that Redis still
	// holds its windows of hits (the epoch marker ratelimit:epoch), when
	// some service counts hits; when it does not, one replica replays the
	// usage stream into them (loss.go) while checks of those services
	// answer by their fail mode. Default 2s; at least 100ms; 0 turns the
	// check, the marker and the rebuild off.
	LossCheck time.Duration `yaml:"loss_check"`
	// Services are the rate-limited services, by name. A check naming a
	// service not listed here is a 404.
	Services map[string]Service `yaml:"services"`
	// GRPC is the Envoy rate limit service front (grpcconfig.go).
	GRPC GRPCSettings `yaml:"grpc"`
}

// Service is the rate limit of one service.
type Service struct {
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
	// to the uid's window of the time the usage stream stored it, once
	// however often it is delivered
	// (the meter's rule: a dedup record set in the same script, kept for
	// ratelimit.hits.dedup_ttl). ratelimit.hits tunes the consumer.
	Metric string `yaml:"metric,omitempty"`
	// Cache keeps (uid, service) pairs known to be over the limit in
	// memory until their window lets them in again, answering without
	// Redis. Off by default.
	Cache bool `yaml:"cache,omitempty"`
}

// DefaultSettings returns the ratelimit section's defaults.
func DefaultSettings() Settings {
	return Settings{
		Interval:  300 * time.Second,
		Mode:      ModeFixed,
		Handlers:  2,
		Pipelines: 2,
		Timeout:   50 * time.Millisecond,
		Consumer:  "ratelimit",
		Hits:      service.DefaultConsumerTuning(),
		LossCheck: 2 * time.Second,
		GRPC:      DefaultGRPCSettings(),
	}
}

// HitServices returns, by metric, the services that count its usage
// events as hits.
func (s Settings) HitServices() map[string][]string {
	out := map[string][]string{}
	for _, name := range s.ServiceNames() {
		if m := s.Services[name].Metric; m != "" {
			out[m] = append(out[m], name)
		}
	}
	return out
}

// RateLimitFor returns the effective rate limit of service with the
// section's defaults filled in; "" is the uid's own limit. ok is false
// for a service that is not configured.
func (s Settings) RateLimitFor(service string) (svc Service, ok bool) {
	if service == "" {
		return Service{Interval: s.Interval, Mode: s.Mode, Shadow: s.Shadow, FailOpen: s.FailOpen}, true
	}
	svc, ok = s.Services[service]
	if !ok {
		return Service{}, false
	}
	if svc.Interval == 0 {
		svc.Interval = s.Interval
	}
	if svc.Mode == "" {
		svc.Mode = s.Mode
	}
	svc.Shadow = svc.Shadow || s.Shadow
	svc.FailOpen = svc.FailOpen || s.FailOpen
	return svc, true
}

// ServiceNames returns the configured services, sorted.
func (s Settings) ServiceNames() []string {
	names := make([]string, 0, len(s.Services))
	for n := range s.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func validMode(mode string) bool { return mode == ModeFixed || mode == ModeSliding }

// Validate checks s and returns every broken rule joined, each naming its
// field, such as "ratelimit: ratelimit.mode: must be fixed or sliding":
// a service's metric must be a per-user counter of catalog, and the hits'
// dedup_ttl must outlast duplicates, the stream's duplicate window.
func (s Settings) Validate(catalog usage.Catalog, duplicates time.Duration) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("ratelimit: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	// interval checks a window: whole milliseconds, from 1s to 31 days.
	interval := func(field string, d time.Duration) {
		switch {
		case d < time.Second:
			add(field, "must be at least 1s, got %v", d)
		case d > 31*24*time.Hour:
			add(field, "must be at most 744h (31 days), got %v", d)
		case d%time.Millisecond != 0:
			add(field, "must be whole milliseconds, got %v", d)
		}
	}
	if !events.IsToken(s.Consumer) {
		add("ratelimit.consumer", "must be a token, got %q", s.Consumer)
	}
	errs = append(errs, s.Hits.Validate("ratelimit.hits", duplicates))
	if s.LossCheck < 0 || (s.LossCheck > 0 && s.LossCheck < 100*time.Millisecond) {
		add("ratelimit.loss_check", "must be 0 (off) or at least 100ms, got %v", s.LossCheck)
	}
	interval("ratelimit.interval", s.Interval)
	if !validMode(s.Mode) {
		add("ratelimit.mode", "must be fixed or sliding, got %q", s.Mode)
	}
	if s.Handlers < 1 || s.Handlers > 256 {
		add("ratelimit.handlers", "must be between 1 and 256, got %d", s.Handlers)
	}
	if s.Pipelines < 1 || s.Pipelines > 64 {
		add("ratelimit.pipelines", "must be between 1 and 64, got %d", s.Pipelines)
	}
	if s.Timeout < time.Millisecond || s.Timeout > 10*time.Second {
		add("ratelimit.timeout", "must be between 1ms and 10s, got %v", s.Timeout)
	}
	for _, name := range s.ServiceNames() {
		svc := s.Services[name]
		field := "ratelimit.services." + name
		if !events.IsToken(name) || len(name) > MaxServiceName {
			add(field, "service names must be 1 to %d characters of A-Z a-z 0-9 _ -", MaxServiceName)
		}
		if svc.Interval != 0 {
			interval(field+".interval", svc.Interval)
		}
		if svc.Mode != "" && !validMode(svc.Mode) {
			add(field+".mode", "must be fixed or sliding, got %q", svc.Mode)
		}
		if svc.Metric != "" {
			m, ok := catalog.Metric(svc.Metric)
			switch {
			case !ok:
				add(field+".metric", "unknown metric %q: declare it under metrics", svc.Metric)
			case m.Style != usage.StyleCounter || m.Scope != usage.ScopeUser:
				add(field+".metric", "%q must be a counter of scope user to count hits, not a %s of scope %s", svc.Metric, m.Style, m.Scope)
			}
		}
		if svc.Limit != nil && (*svc.Limit < 0 || *svc.Limit > MaxLimit) {
			add(field+".limit", "must be between 0 and %d, got %d", MaxLimit, *svc.Limit)
		}
	}
	errs = append(errs, s.validateGRPC())
	return errors.Join(errs...)
}

// Config is what the rate limiter runs with: the runtime's configuration
// (connections, subjects, streams), the metrics and grants (package
// usage: the "ratelimit" grant, the counters that count as hits) and its
// own section.
type Config struct {
	service.Config `yaml:"-"`
	// Usage is the metrics and grants sections.
	Usage usage.Catalog `yaml:",inline"`
	// RateLimit is the rate limiter's own section.
	RateLimit Settings `yaml:"ratelimit"`
}

// DefaultConfig returns the runtime's defaults with the rate limiter's.
func DefaultConfig() Config {
	return Config{Config: service.Default(), Usage: usage.Default(), RateLimit: DefaultSettings()}
}

// LoadConfig reads what the rate limiter reads of the file at path (none:
// the defaults) and of the environment, over the defaults, beside rt, the
// runtime's configuration loaded from the same file; then it checks the
// whole.
func LoadConfig(rt service.Config, path string, getenv func(string) string) (Config, error) {
	cfg := DefaultConfig()
	cfg.Config = rt
	return service.LoadChecked(cfg, path, getenv)
}

// Validate checks the runtime's configuration, the metrics and grants and
// the ratelimit section, and returns every broken rule joined.
func (c Config) Validate() error {
	return errors.Join(c.Config.Validate(), c.Usage.Validate(), c.RateLimit.Validate(c.Usage, c.Streams.Duplicates))
}

// Section is what the rate limiter reads of allot.yaml besides the
// runtime's sections (metrics, grants, ratelimit), as service.Run checks
// it before starting anything and prints it with -validate.
func Section() service.OwnedSection { return service.SectionOf(LoadConfig) }
