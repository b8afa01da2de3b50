package store

import (
	"time"

	"github.com/allot/allot/pkg/usage"
)

// Bounds returns the start and end of the grant period that begins at now
// (rolling) or contains now (calendar), in UTC. The end is zero for an
// indefinite period. It is the Go twin of period_bounds in periods.lua; a
// test holds the two to the same answers.
func Bounds(period, align string, now time.Time) (start, end time.Time) {
	now = now.UTC().Truncate(time.Millisecond)
	if period == usage.PeriodIndefinite {
		return now, time.Time{}
	}
	if align == usage.AlignCalendar {
		y, m, d := now.Date()
		switch period {
		case usage.PeriodHour:
			s := now.Truncate(time.Hour)
			return s, s.Add(time.Hour)
		case usage.PeriodDay:
			s := time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
			return s, s.AddDate(0, 0, 1)
		case usage.PeriodWeek:
			s := time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
			s = s.AddDate(0, 0, -((int(s.Weekday()) + 6) % 7)) // back to Monday
			return s, s.AddDate(0, 0, 7)
		default:
			s := time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
			return s, s.AddDate(0, 1, 0)
		}
	}
	switch period {
	case usage.PeriodHour:
		return now, now.Add(time.Hour)
	case usage.PeriodDay:
		return now, now.AddDate(0, 0, 1)
	case usage.PeriodWeek:
		return now, now.AddDate(0, 0, 7)
	}
	return now, addMonth(now)
}

// addMonth is the same day and time one month later, clamped to the end
// of a shorter month (Jan 31 -> Feb 28), unlike time.AddDate, which
// would roll over into March.
func addMonth(t time.Time) time.Time {
	y, m, d := t.Date()
	first := time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
	last := first.AddDate(0, 1, -1).Day()
	if d > last {
		d = last
	}
	tod := t.Sub(time.Date(y, m, t.Day(), 0, 0, 0, 0, time.UTC))
	return time.Date(first.Year(), first.Month(), d, 0, 0, 0, 0, time.UTC).Add(tod)
}
