package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// A wait is a stretch of the run that ends on its own when the system
// under test keeps up: a phase's drain (every message stored is applied),
// the publishers' last acks, the wait before the exactness check. A wait
// is bounded by a stall budget: the time it may go without progress.
// Every sign of progress starts the budget again, so a slow machine that
// still makes headway gets the time it needs, and one that has stopped
// is named within the budget, with what was done of what. Besides, every
// wait ends with the run (-duration plus -grace).

// clock is time as a wait sees it; tests pass a fake one.
type clock interface {
	Now() time.Time
	After(time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// waitSpec is one wait.
type waitSpec struct {
	What      string        // "ingest.max drain": the phase, then the step
	Unit      string        // what Done and Total count: "messages applied"
	Stall     time.Duration // the stall budget
	StallWhy  string        // where the budget comes from, for the message
	Every     time.Duration // how often to look
	RecentWin time.Duration // the window of "in the last ..." in the message; 5 s if 0
}

// progress is one look at a wait's state.
type progress struct {
	Complete bool
	Done     int64 // done so far, of Total; a rise is progress
	Total    int64
	Mark     int64  // another count whose rise is progress (e.g. the ack floor)
	State    string // what else there is to say, for the message
}

// waitError says which wait ran out of which budget, and how far it got.
type waitError struct {
	Spec      waitSpec
	Last      progress      // the last good look; zero if none
	Looked    bool          // whether any look succeeded
	Idle      time.Duration // since the last progress
	Recent    int64         // Done's rise within the recent window
	RecentWin time.Duration
	Failed    int   // looks that failed in a row at the end
	LastErr   error // the last failed look's error
	Cause     error // nil: the stall budget ran out; else why ctx ended
}

func (e *waitError) Error() string {
	var b strings.Builder
	s := e.Spec
	b.WriteString(s.What + ": ")
	if e.Looked {
		fmt.Fprintf(&b, "%s of %s %s", commas(e.Last.Done), commas(e.Last.Total), s.Unit)
	} else {
		b.WriteString("no look at its progress succeeded")
	}
	if e.Cause == nil {
		fmt.Fprintf(&b, " when its stall budget of %s ran out (%s): no progress for %s", secs(s.Stall), s.StallWhy, secs(e.Idle))
	} else {
		fmt.Fprintf(&b, " when it was stopped (%v); no progress for %s", e.Cause, secs(e.Idle))
	}
	if e.Looked {
		fmt.Fprintf(&b, ", %s in the last %s", commas(e.Recent), secs(e.RecentWin))
		if e.Last.State != "" {
			b.WriteString("; " + e.Last.State)
		}
	}
	if e.Failed > 0 {
		fmt.Fprintf(&b, "; the last %d looks failed: %v", e.Failed, e.LastErr)
	}
	return b.String()
}

// Unwrap lets errors.Is see why the run's context ended.
func (e *waitError) Unwrap() error { return e.Cause }

func secs(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }

// commas prints a count with thousands separators: 41,230.
func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// waitFor looks every spec.Every until look reports Complete, until it
// has gone spec.Stall without progress (Done or Mark above the best seen
// so far), or until ctx ends. It returns nil, or a *waitError. A look
// that fails is no progress; its error goes into the message.
func waitFor(ctx context.Context, clk clock, spec waitSpec, look func(context.Context) (progress, error)) error {
	if spec.RecentWin <= 0 {
		spec.RecentWin = 5 * time.Second
	}
	type point struct {
		at   time.Time
		done int64
	}
	var (
		last    progress
		looked  bool
		failed  int
		lastErr error
		moved   = clk.Now() // the last progress
		// Done over the recent window: history[0] is the newest point
		// at least RecentWin old, or the oldest there is.
		history []point
	)
	fail := func(cause error) error {
		now := clk.Now()
		e := &waitError{Spec: spec, Last: last, Looked: looked, Idle: now.Sub(moved), Failed: failed, LastErr: lastErr, Cause: cause}
		if len(history) > 0 {
			e.Recent = last.Done - history[0].done
			e.RecentWin = min(spec.RecentWin, now.Sub(history[0].at))
		}
		return e
	}
	for {
		p, err := look(ctx)
		now := clk.Now()
		switch {
		case err != nil:
			failed, lastErr = failed+1, err
		default:
			failed, lastErr = 0, nil
			if p.Complete {
				return nil
			}
			if !looked || p.Done > last.Done || p.Mark > last.Mark {
				moved = now
			}
			// Keep the best seen, so a count that falls back (a
			// redelivery) is not mistaken for progress when it climbs
			// again to where it was.
			if looked {
				p.Done, p.Mark = max(p.Done, last.Done), max(p.Mark, last.Mark)
			}
			last, looked = p, true
			history = append(history, point{now, p.Done})
			for len(history) > 1 && now.Sub(history[1].at) >= spec.RecentWin {
				history = history[1:]
			}
		}
		if ctx.Err() != nil {
			return fail(context.Cause(ctx))
		}
		if now.Sub(moved) >= spec.Stall {
			return fail(nil)
		}
		select {
		case <-ctx.Done():
			return fail(context.Cause(ctx))
		case <-clk.After(spec.Every):
		}
	}
}
