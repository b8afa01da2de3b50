// Package usage is allot's domain vocabulary that several services share:
// the metrics the meter accepts (their styles, periods, alignments and
// scopes) and the default grants, the free tier. The meter applies them,
// the rate limiter counts hits of a counter and reads the "ratelimit"
// grant, the notifier charges email to a grant.
//
// A Catalog is the metrics and grants sections of allot.yaml; each
// service reads it with its own section (pkg/service.LoadSections) and
// checks it with Validate. The package knows nothing of how a service
// runs: no connections, no runtime configuration.
package usage

import "slices"

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
	return slices.Contains(m.Labels, name)
}
