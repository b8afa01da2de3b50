package service

import (
	"errors"
	"math"
	"sort"

	"github.com/allot/allot/pkg/events"
)

// Metric styles.
const (
	StyleGrant   = "grant"   // a limit per period: used, remaining, overage, resets_at
	StyleCounter = "counter" // a sum that only grows
	StyleGauge   = "gauge"   // the last value reported
)

// Grant periods.
const (
	PeriodHour       = "hour"
	PeriodDay        = "day"
	PeriodWeek       = "week"
	PeriodMonth      = "month"
	PeriodIndefinite = "indefinite"
)

// Period alignments.
const (
	AlignRolling  = "rolling"  // the period starts at first use (apicrud's behaviour)
	AlignCalendar = "calendar" // UTC hours, days, ISO weeks (Monday) and months
)

// Metric scopes.
const (
	ScopeUser     = "user"     // one value per uid (the event's subject)
	ScopeInstance = "instance" // one value per publishing instance (the event's source)
	ScopeGlobal   = "global"   // one value for everyone
)

// MaxNotify is the most notify thresholds one grant may have.
const MaxNotify = 8

// MetricConfig declares one metric the meter accepts.
type MetricConfig struct {
	// Style is grant, counter or gauge.
	Style string `yaml:"style"`
	// Period is how long a grant's limit lasts: hour, day, week, month or
	// indefinite. Grants only.
	Period string `yaml:"period,omitempty"`
	// Align is rolling (from first use, the default) or calendar (UTC
	// boundaries). Grants only.
	Align string `yaml:"align,omitempty"`
	// Scope is user (default), instance or global. Grants are per user.
	Scope string `yaml:"scope,omitempty"`
	// Labels are the label names events may carry; others are refused.
	Labels []string `yaml:"labels,omitempty"`
	// Notify lists percentages of the limit (e.g. 80, 100) whose crossing
	// publishes one notify.usage.<uid> per period. Grants only.
	Notify []float64 `yaml:"notify,omitempty"`
	// Help describes the metric in /metrics.
	Help string `yaml:"help,omitempty"`
}

// MeterConfig tunes the meter service.
type MeterConfig struct {
	// Consumer is the durable consumer name all meter replicas share.
	Consumer string `yaml:"consumer"`
	// ConsumerTuning tunes the consumer of the usage stream (batch,
	// fetch_wait, ack_wait, max_ack_pending, dedup_ttl, retry_delay).
	ConsumerTuning `yaml:",inline"`
	// Handlers is how many request handlers serve each endpoint, in one
	// queue group, so a slow request never holds up the rest.
	Handlers int `yaml:"handlers"`
	// Pipelines is how many batches of credit or authorize requests are
	// in Redis at once. Requests that arrive while they are busy gather
	// into the next batch, one pipelined round trip for all of them.
	Pipelines int `yaml:"pipelines"`
	// ExportPerUID exports every uid's grants as Prometheus series.
	// Cardinality grows with users: off by default.
	ExportPerUID bool `yaml:"export_per_uid"`
	// ExportMaxUIDs caps the uids exported when ExportPerUID is on.
	ExportMaxUIDs int `yaml:"export_max_uids"`
}

// DefaultMetrics declares apicrud's default usage metrics: the
// *_daily_total grants per day and *_monthly_total per month, notifying at
// 80% and 100%, plus an api_calls_total counter.
func DefaultMetrics() map[string]MetricConfig {
	m := map[string]MetricConfig{
		"api_calls_total": {Style: StyleCounter, Scope: ScopeUser, Labels: []string{"resource"}, Help: "API calls made"},
	}
	for _, name := range []string{"email", "message", "photo", "sms", "video"} {
		m[name+"_daily_total"] = MetricConfig{Style: StyleGrant, Period: PeriodDay, Notify: []float64{80, 100}, Help: name + " uses per day"}
	}
	for _, name := range []string{"email", "sms"} {
		m[name+"_monthly_total"] = MetricConfig{Style: StyleGrant, Period: PeriodMonth, Notify: []float64{80, 100}, Help: name + " uses per month"}
	}
	return m
}

// DefaultGrants is apicrud's free tier. Grants without a metric (albums,
// media_size_max, ratelimit, ...) are limits apps and the rate limiter read
// through meter.grants.
func DefaultGrants() map[string]float64 {
	return map[string]float64{
		"albums":              10,
		"album_size":          64,
		"apikeys":             2,
		"contacts":            8,
		"email_daily_total":   200,
		"email_monthly_total": 1000,
		"lists":               12,
		"list_size":           250,
		"media_size_max":      16777216,
		"message_daily_total": 200,
		"photo_res_max":       1080,
		"photo_daily_total":   200,
		"ratelimit":           500,
		"sms_daily_total":     100,
		"sms_monthly_total":   1000,
		"video_duration_max":  60,
		"video_daily_total":   50,
	}
}

// DefaultMeter returns the meter's defaults.
func DefaultMeter() MeterConfig {
	return MeterConfig{
		Consumer:       "meter",
		ConsumerTuning: DefaultConsumerTuning(),
		Handlers:       4,
		Pipelines:      2,
		ExportMaxUIDs:  1000,
	}
}

// Normalized returns m with its defaults filled in: scope user, align
// rolling for grants.
func (m MetricConfig) Normalized() MetricConfig {
	if m.Scope == "" {
		m.Scope = ScopeUser
	}
	if m.Style == StyleGrant && m.Align == "" {
		m.Align = AlignRolling
	}
	return m
}

// AllowsLabel reports whether events of m may carry label name.
func (m MetricConfig) AllowsLabel(name string) bool {
	for _, l := range m.Labels {
		if l == name {
			return true
		}
	}
	return false
}

func validateMetering(metrics map[string]MetricConfig, grants map[string]float64, meter MeterConfig, streams events.StreamConfig) []error {
	var errs []error
	names := make([]string, 0, len(metrics))
	for name := range metrics {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		m := metrics[name].Normalized()
		field := "metrics." + name
		if !events.IsToken(name) {
			errs = append(errs, fieldError(field, "metric names must be 1 to 128 characters of A-Z a-z 0-9 _ -"))
		}
		switch m.Style {
		case StyleGrant:
			switch m.Period {
			case PeriodHour, PeriodDay, PeriodWeek, PeriodMonth, PeriodIndefinite:
			case "":
				errs = append(errs, fieldError(field+".period", "is required for a grant (hour, day, week, month or indefinite)"))
			default:
				errs = append(errs, fieldError(field+".period", "must be hour, day, week, month or indefinite, got %q", m.Period))
			}
			if m.Align != AlignRolling && m.Align != AlignCalendar {
				errs = append(errs, fieldError(field+".align", "must be rolling or calendar, got %q", m.Align))
			}
			if m.Align == AlignCalendar && m.Period == PeriodIndefinite {
				errs = append(errs, fieldError(field+".align", "an indefinite grant has no calendar"))
			}
			if m.Scope != ScopeUser {
				errs = append(errs, fieldError(field+".scope", "grants are per user; scope must be user"))
			}
			if _, ok := grants[name]; !ok {
				errs = append(errs, fieldError(field, "is a grant without a default limit: add it under grants"))
			}
			if len(m.Notify) > MaxNotify {
				errs = append(errs, fieldError(field+".notify", "at most %d thresholds", MaxNotify))
			}
			for i, p := range m.Notify {
				if math.IsNaN(p) || p <= 0 || p > 1000 {
					errs = append(errs, fieldError(field+".notify", "percentages must be > 0 and <= 1000, got %v", p))
				}
				if i > 0 && p <= m.Notify[i-1] {
					errs = append(errs, fieldError(field+".notify", "must be in increasing order"))
				}
			}
		case StyleCounter, StyleGauge:
			if m.Period != "" || m.Align != "" || len(m.Notify) > 0 {
				errs = append(errs, fieldError(field, "period, align and notify apply to grants only"))
			}
			switch m.Scope {
			case ScopeUser, ScopeInstance, ScopeGlobal:
			default:
				errs = append(errs, fieldError(field+".scope", "must be user, instance or global, got %q", m.Scope))
			}
		case "":
			errs = append(errs, fieldError(field+".style", "is required (grant, counter or gauge)"))
		default:
			errs = append(errs, fieldError(field+".style", "must be grant, counter or gauge, got %q", m.Style))
		}
		if len(m.Labels) > events.MaxLabels {
			errs = append(errs, fieldError(field+".labels", "at most %d labels", events.MaxLabels))
		}
		for _, l := range m.Labels {
			if !events.IsToken(l) {
				errs = append(errs, fieldError(field+".labels", "label names must be tokens, got %q", l))
			}
		}
	}
	for name, v := range grants {
		if !events.IsToken(name) {
			errs = append(errs, fieldError("grants."+name, "grant names must be 1 to 128 characters of A-Z a-z 0-9 _ -"))
		}
		// The rule of every number that enters allot: a grant here is a
		// grant set through meter.grants.
		if verr := (*events.ValidationError)(nil); errors.As(events.CheckAmount("grants."+name, v), &verr) {
			errs = append(errs, fieldError(verr.Field, "%s", verr.Rule))
		}
	}
	if !events.IsToken(meter.Consumer) {
		errs = append(errs, fieldError("meter.consumer", "must be a token, got %q", meter.Consumer))
	}
	errs = append(errs, meter.ConsumerTuning.validate("meter", streams.Duplicates)...)
	if meter.Handlers < 1 || meter.Handlers > 256 {
		errs = append(errs, fieldError("meter.handlers", "must be between 1 and 256, got %d", meter.Handlers))
	}
	if meter.Pipelines < 1 || meter.Pipelines > 64 {
		errs = append(errs, fieldError("meter.pipelines", "must be between 1 and 64, got %d", meter.Pipelines))
	}
	if meter.ExportMaxUIDs < 0 {
		errs = append(errs, fieldError("meter.export_max_uids", "must be >= 0"))
	}
	return errs
}

// MetricNames returns the declared metric names, sorted.
func (c Config) MetricNames() []string {
	names := make([]string, 0, len(c.Metrics))
	for n := range c.Metrics {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Metric returns the normalized declaration of name.
func (c Config) Metric(name string) (MetricConfig, bool) {
	m, ok := c.Metrics[name]
	if !ok {
		return MetricConfig{}, false
	}
	return m.Normalized(), true
}

// DefaultGrant returns the configured default limit of a grant.
func (c Config) DefaultGrant(name string) (float64, bool) {
	v, ok := c.Grants[name]
	return v, ok
}
