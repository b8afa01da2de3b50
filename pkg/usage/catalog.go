package usage

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/allot/allot/pkg/events"
)

// Catalog is the metrics and grants sections of allot.yaml: every metric
// the meter accepts and the default limit of every grant. Its zero value
// declares nothing: start from Default.
type Catalog struct {
	// Metrics declares every metric the meter accepts, by name. A file's
	// metrics are added to the defaults (DefaultMetrics).
	Metrics map[string]MetricConfig `yaml:"metrics"`
	// Grants holds the default limits (the free tier), by name; per-uid
	// overrides live in Redis. A file's grants are added to the defaults.
	Grants map[string]float64 `yaml:"grants"`
}

// Default returns apicrud's metrics and free tier.
func Default() Catalog {
	return Catalog{Metrics: DefaultMetrics(), Grants: DefaultGrants()}
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

// MetricNames returns the declared metric names, sorted.
func (c Catalog) MetricNames() []string {
	names := make([]string, 0, len(c.Metrics))
	for n := range c.Metrics {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Metric returns the normalized declaration of name.
func (c Catalog) Metric(name string) (MetricConfig, bool) {
	m, ok := c.Metrics[name]
	if !ok {
		return MetricConfig{}, false
	}
	return m.Normalized(), true
}

// DefaultGrant returns the configured default limit of a grant.
func (c Catalog) DefaultGrant(name string) (float64, bool) {
	v, ok := c.Grants[name]
	return v, ok
}

// Validate checks every rule of the metrics and grants and returns all the
// broken ones joined, each naming its field by its YAML path, such as
// "usage: metrics.uploads.period: is required for a grant (...)".
func (c Catalog) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("usage: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	for _, name := range c.MetricNames() {
		m := c.Metrics[name].Normalized()
		field := "metrics." + name
		if !events.IsToken(name) {
			add(field, "metric names must be 1 to 128 characters of A-Z a-z 0-9 _ -")
		}
		switch m.Style {
		case StyleGrant:
			switch m.Period {
			case PeriodHour, PeriodDay, PeriodWeek, PeriodMonth, PeriodIndefinite:
			case "":
				add(field+".period", "is required for a grant (hour, day, week, month or indefinite)")
			default:
				add(field+".period", "must be hour, day, week, month or indefinite, got %q", m.Period)
			}
			if m.Align != AlignRolling && m.Align != AlignCalendar {
				add(field+".align", "must be rolling or calendar, got %q", m.Align)
			}
			if m.Align == AlignCalendar && m.Period == PeriodIndefinite {
				add(field+".align", "an indefinite grant has no calendar")
			}
			if m.Scope != ScopeUser {
				add(field+".scope", "grants are per user; scope must be user")
			}
			if _, ok := c.Grants[name]; !ok {
				add(field, "is a grant without a default limit: add it under grants")
			}
			if len(m.Notify) > MaxNotify {
				add(field+".notify", "at most %d thresholds", MaxNotify)
			}
			for i, p := range m.Notify {
				if math.IsNaN(p) || p <= 0 || p > 1000 {
					add(field+".notify", "percentages must be > 0 and <= 1000, got %v", p)
				}
				if i > 0 && p <= m.Notify[i-1] {
					add(field+".notify", "must be in increasing order")
				}
			}
		case StyleCounter, StyleGauge:
			if m.Period != "" || m.Align != "" || len(m.Notify) > 0 {
				add(field, "period, align and notify apply to grants only")
			}
			switch m.Scope {
			case ScopeUser, ScopeInstance, ScopeGlobal:
			default:
				add(field+".scope", "must be user, instance or global, got %q", m.Scope)
			}
		case "":
			add(field+".style", "is required (grant, counter or gauge)")
		default:
			add(field+".style", "must be grant, counter or gauge, got %q", m.Style)
		}
		if len(m.Labels) > events.MaxLabels {
			add(field+".labels", "at most %d labels", events.MaxLabels)
		}
		for _, l := range m.Labels {
			if !events.IsToken(l) {
				add(field+".labels", "label names must be tokens, got %q", l)
			}
		}
	}
	grants := make([]string, 0, len(c.Grants))
	for name := range c.Grants {
		grants = append(grants, name)
	}
	slices.Sort(grants)
	for _, name := range grants {
		if !events.IsToken(name) {
			add("grants."+name, "grant names must be 1 to 128 characters of A-Z a-z 0-9 _ -")
		}
		// The rule of every number that enters allot: a grant here is a
		// grant set through meter.grants.
		if verr := (*events.ValidationError)(nil); errors.As(events.CheckAmount("grants."+name, c.Grants[name]), &verr) {
			add(verr.Field, "%s", verr.Rule)
		}
	}
	return errors.Join(errs...)
}
