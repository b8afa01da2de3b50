package ratelimit

import (
	"log/slog"
	"sync"
	"time"
)

// failOpenLog says that checks are failing open at most once a second:
// while Redis is away every batch fails, and a line per check would bury
// the log. The counter allot_ratelimit_decisions_total{result=failed_open}
// has every one.
type failOpenLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (f *failOpenLog) note(log *slog.Logger, now time.Time, p pending, err error) {
	f.mu.Lock()
	// A clock that went back starts a new second rather than silencing
	// the log; readings equal to the last one are in its second.
	if !f.last.IsZero() && !now.Before(f.last) && now.Sub(f.last) < time.Second {
		f.suppressed++
		f.mu.Unlock()
		return
	}
	n := f.suppressed
	f.last, f.suppressed = now, 0
	f.mu.Unlock()
	log.Warn("failing open: the window cannot be read", "uid", p.uid, "service", p.service, "err", err, "more_since_last_line", n)
}
