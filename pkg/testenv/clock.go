package testenv

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// ClockShiftEnv names the variable that moves the tests' clocks: a Go
// duration such as 8760h. CI runs the store suites once with the clocks a
// year ahead, so that a test which secretly depends on today's date (a
// pinned t0 whose keys expire on the server's clock) fails in CI, not on
// the day the calendar passes it.
const ClockShiftEnv = "ALLOT_TEST_CLOCK_SHIFT"

// ClockShift is how far ahead of the real clock the tests' clocks run:
// ALLOT_TEST_CLOCK_SHIFT, or 0 when it is unset. A value that is not a
// duration fails t.
func ClockShift(t testing.TB) time.Duration {
	t.Helper()
	v := os.Getenv(ClockShiftEnv)
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("testenv: %s=%q is not a duration (try 8760h): %v", ClockShiftEnv, v, err)
	}
	return d
}

// Now is the time a test starts its clock at: the real time moved by
// ClockShift, to the millisecond (the scripts' resolution). A test that
// passes a time to Redis takes it from here, never from a calendar date,
// because Redis expires keys on its own clock.
func Now(t testing.TB) time.Time {
	t.Helper()
	return time.Now().Add(ClockShift(t)).UTC().Truncate(time.Millisecond)
}

// Miniredis starts a miniredis for t whose server clock (TIME, and the
// clock EXPIREAT and PEXPIREAT are measured against) is the real clock
// moved by ClockShift, as a real Redis living that far in the future
// would have. Without a shift it is a plain miniredis.RunT. TTLs still
// count down only with FastForward, as in any miniredis.
func Miniredis(t testing.TB) *miniredis.Miniredis {
	t.Helper()
	mr := miniredis.RunT(t)
	shift := ClockShift(t)
	if shift == 0 {
		return mr
	}
	mr.SetTime(time.Now().Add(shift))
	// miniredis keeps a set time still; move it with the real clock, so
	// TIME advances as a server's does.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				mr.SetTime(now.Add(shift))
			}
		}
	})
	t.Cleanup(func() { close(stop); wg.Wait() })
	return mr
}
