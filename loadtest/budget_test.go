package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeClock moves only when waitFor sleeps on it, so a wait of minutes
// runs in microseconds and every figure in its message is exact.
type fakeClock struct{ now time.Time }

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1000, 0)} }

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

// script is a synthetic look: f gives the progress at each second of the
// fake clock since the wait began. A wait that goes on for an hour of
// fake time fails the test instead of hanging it.
func script(t *testing.T, clk *fakeClock, f func(sec int) (progress, error)) func(context.Context) (progress, error) {
	t0 := clk.Now()
	return func(context.Context) (progress, error) {
		sec := int(clk.Now().Sub(t0) / time.Second)
		if sec > 3600 {
			t.Fatalf("the wait went on for an hour of fake time")
		}
		return f(sec)
	}
}

func spec(stall time.Duration) waitSpec {
	return waitSpec{What: "ingest.max drain", Unit: "messages applied", Stall: stall, StallWhy: "test budget", Every: time.Second}
}

func TestWaitForWaitsAsLongAsProgressIsMade(t *testing.T) {
	clk := newFakeClock()
	t0 := clk.Now()
	// One message a second, 100 of them: far longer than the stall
	// budget of 3 s, but never 3 s without progress.
	err := waitFor(t.Context(), clk, spec(3*time.Second), script(t, clk, func(sec int) (progress, error) {
		return progress{Complete: sec >= 100, Done: int64(sec), Total: 100}, nil
	}))
	if err != nil {
		t.Fatalf("waitFor = %v, want nil", err)
	}
	if got := clk.Now().Sub(t0); got != 100*time.Second {
		t.Errorf("waited %v, want 100s (until complete, not longer)", got)
	}
}

func TestWaitForNamesWhatRanOutOfItsStallBudget(t *testing.T) {
	clk := newFakeClock()
	// 4,123 a second up to 41,230 of 48,000, then nothing.
	err := waitFor(t.Context(), clk, spec(20*time.Second), script(t, clk, func(sec int) (progress, error) {
		return progress{Done: int64(min(sec, 10)) * 4123, Total: 48000, State: "6,770 not yet delivered"}, nil
	}))
	var we *waitError
	if !errors.As(err, &we) {
		t.Fatalf("waitFor = %v, want a *waitError", err)
	}
	want := "ingest.max drain: 41,230 of 48,000 messages applied when its stall budget of 20.0s ran out (test budget): " +
		"no progress for 20.0s, 0 in the last 5.0s; 6,770 not yet delivered"
	if d := cmp.Diff(want, err.Error()); d != "" {
		t.Errorf("message (-want +got):\n%s", d)
	}
	if we.Cause != nil || we.Idle != 20*time.Second {
		t.Errorf("cause %v idle %v, want nil and 20s", we.Cause, we.Idle)
	}
}

func TestWaitForCountsRecentProgress(t *testing.T) {
	clk := newFakeClock()
	// 10 a second for 30 s, then nothing: the last 5 s before the stall
	// budget of 2 s ran out hold the last 3 s of progress.
	err := waitFor(t.Context(), clk, spec(2*time.Second), script(t, clk, func(sec int) (progress, error) {
		return progress{Done: int64(min(sec, 30)) * 10, Total: 1000}, nil
	}))
	var we *waitError
	if !errors.As(err, &we) {
		t.Fatalf("waitFor = %v, want a *waitError", err)
	}
	if we.Last.Done != 300 || we.Recent != 30 || we.RecentWin != 5*time.Second {
		t.Errorf("done %d, recent %d in %v; want 300, 30 in 5s", we.Last.Done, we.Recent, we.RecentWin)
	}
}

func TestWaitForProgressSignals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		look    func(sec int) progress
		wantErr bool
	}{
		{"a rising mark is progress", func(sec int) progress {
			return progress{Complete: sec >= 50, Done: 5, Total: 10, Mark: int64(sec)}
		}, false},
		{"falling back and climbing to the best again is not", func(sec int) progress {
			return progress{Done: int64(10 - sec%2), Total: 20} // 10, 9, 10, 9, ...
		}, true},
		{"stuck from the start", func(int) progress { return progress{Done: 3, Total: 9} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			err := waitFor(t.Context(), clk, spec(5*time.Second), script(t, clk, func(sec int) (progress, error) { return tc.look(sec), nil }))
			if (err != nil) != tc.wantErr {
				t.Errorf("waitFor = %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

func TestWaitForFailedLooks(t *testing.T) {
	clk := newFakeClock()
	boom := errors.New("consumer info: context deadline exceeded")
	err := waitFor(t.Context(), clk, spec(3*time.Second), script(t, clk, func(int) (progress, error) { return progress{}, boom }))
	want := "ingest.max drain: no look at its progress succeeded when its stall budget of 3.0s ran out (test budget): " +
		"no progress for 3.0s; the last 4 looks failed: consumer info: context deadline exceeded"
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}

	// Looks that fail after good ones keep the last good figures.
	clk = newFakeClock()
	err = waitFor(t.Context(), clk, spec(3*time.Second), script(t, clk, func(sec int) (progress, error) {
		if sec < 2 {
			return progress{Done: int64(sec), Total: 10}, nil
		}
		return progress{}, boom
	}))
	if err == nil || !strings.Contains(err.Error(), "1 of 10 messages applied") || !strings.Contains(err.Error(), "the last 3 looks failed") {
		t.Errorf("got %v", err)
	}
}

func TestWaitForEndsWithTheRun(t *testing.T) {
	cause := errors.New("the run went past -duration + -grace (1m40s)")
	ctx, cancel := context.WithCancelCause(t.Context())
	clk := newFakeClock()
	err := waitFor(ctx, clk, spec(time.Hour), script(t, clk, func(sec int) (progress, error) {
		if sec == 7 {
			cancel(cause)
		}
		return progress{Done: int64(sec) * 100, Total: 5000}, nil
	}))
	if !errors.Is(err, cause) {
		t.Fatalf("waitFor = %v, want it to wrap the run's cause", err)
	}
	want := "ingest.max drain: 700 of 5,000 messages applied when it was stopped (the run went past -duration + -grace (1m40s)); " +
		"no progress for 0.0s, 500 in the last 5.0s"
	if err.Error() != want {
		t.Errorf("got  %s\nwant %s", err, want)
	}
}

func TestCommas(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 41230: "41,230", 1234567: "1,234,567", -48000: "-48,000"} {
		if got := commas(n); got != want {
			t.Errorf("commas(%d) = %q, want %q", n, got, want)
		}
	}
}
