package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/loadtest/internal/report"
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

// The meter's client dropped 64 messages; the server redelivers them only
// after the consumer's ack wait (30 s), and until then the ack floor
// cannot pass the first of them, although everything else is applied.
// This is what made the quick profile incomplete on a busy machine: its
// drain had a fixed 30 s.
func TestDrainOutlastsARedeliveryAfterTheAckWait(t *testing.T) {
	const from, seq = 1000, 36000
	sample := func(sec int) floorSample {
		switch {
		case sec < 5: // applying
			left := uint64(35000 - sec*7000)
			return floorSample{floor: 4504, backlog: left + 64, pending: left, ackPending: 64}
		case sec < 36: // everything applied but the dropped 64
			return floorSample{floor: 4504, backlog: 64, ackPending: 64}
		case sec < 37: // redelivered
			return floorSample{floor: 4504, backlog: 64, ackPending: 64, redelivered: 64}
		}
		return floorSample{floor: seq}
	}
	look := func(clk *fakeClock) func(context.Context) (progress, error) {
		return script(t, clk, func(sec int) (progress, error) { return consumerProgress(sample(sec), from, seq), nil })
	}

	if stall, why := drainStall(5*time.Second, 35*time.Second); stall != 45*time.Second || !strings.Contains(why, "pinned TTL of 35s") {
		t.Errorf("drainStall(5s, 35s) = %v, %q", stall, why)
	}
	stall, why := drainStall(30*time.Second, 0)
	if stall != 40*time.Second || !strings.Contains(why, "ack wait of 30s") {
		t.Errorf("drainStall(30s) = %v, %q", stall, why)
	}
	s := spec(stall)
	s.StallWhy = why
	clk := newFakeClock()
	if err := waitFor(t.Context(), clk, s, look(clk)); err != nil {
		t.Errorf("with the ack wait's budget: %v, want nil", err)
	}

	// The old fixed budget, measured the same way, runs out first, and
	// says why.
	clk = newFakeClock()
	err := waitFor(t.Context(), clk, spec(30*time.Second), look(clk))
	want := "ingest.max drain: 34,936 of 35,000 messages applied when its stall budget of 30.0s ran out (test budget): " +
		"no progress for 30.0s, 0 in the last 5.0s; 0 not yet delivered, 64 delivered and not acked (0 of them redelivered); " +
		"the ack floor is at stream sequence 4,504 of 36,000"
	if err == nil || err.Error() != want {
		t.Errorf("with 30s: %v\nwant %s", err, want)
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

func TestConsumerProgress(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    floorSample
		want progress
	}{
		{"nothing stored since the phase began", floorSample{floor: 50}, progress{Complete: true}},
		{"half applied", floorSample{floor: 60, backlog: 40, pending: 30, ackPending: 10},
			progress{Done: 10, Total: 50, Mark: 60}},
		{"all but a gap applied", floorSample{floor: 70, backlog: 3, ackPending: 3, redelivered: 3},
			progress{Done: 47, Total: 50, Mark: 70}},
		{"a backlog from before the phase counts as nothing done", floorSample{floor: 40, backlog: 80, pending: 80},
			progress{Done: 0, Total: 50, Mark: 40}},
		{"the floor at the target", floorSample{floor: 100}, progress{Complete: true, Done: 50, Total: 50, Mark: 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from, seq := uint64(50), uint64(100)
			if tc.name == "nothing stored since the phase began" {
				seq = 50
			}
			got := consumerProgress(tc.s, from, seq)
			got.State = ""
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

// The closed-loop bound on the backlog counts what was handed to the
// publishers and not acked when the last sample was asked for, so it
// holds while the sample is old and while the publishers' windows fill.
func TestBacklogNowCountsWhatTheSampleCannotSee(t *testing.T) {
	out := &sends{}
	out.queued.Store(1000)
	w := &floorWatcher{sends: out, samp: []floorSample{{backlog: 19000, acked: 1000}}}
	if got := w.backlogNow(); got != 19000 {
		t.Errorf("backlogNow = %d, want 19000", got)
	}
	out.queued.Add(5000) // in the windows or stored since: the sample knows of neither
	if got := w.backlogNow(); got != 24000 {
		t.Errorf("after handing over 5000: backlogNow = %d, want 24000 (the sample says 19000)", got)
	}
	// A new sample asked for when 3000 of them were acked: those are in
	// its backlog (or applied), the other 2000 may still come.
	w.samp = append(w.samp, floorSample{backlog: 2000, acked: 4000})
	if got := w.backlogNow(); got != 4000 {
		t.Errorf("after a new sample: backlogNow = %d, want 4000", got)
	}
	if got := (&floorWatcher{samp: []floorSample{{backlog: 7}}}).backlogNow(); got != 7 {
		t.Errorf("without a count of sends: %d, want 7", got)
	}
}

func TestCommas(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 41230: "41,230", 1234567: "1,234,567", -48000: "-48,000"} {
		if got := commas(n); got != want {
			t.Errorf("commas(%d) = %q, want %q", n, got, want)
		}
	}
}

// An incomplete run that also lost an event says both, and exits 1.
func TestFinishSaysEveryReason(t *testing.T) {
	h := &harness{o: Options{Out: t.TempDir()}, start: time.Now(), rep: &report.Report{Complete: true}}
	h.incomplete("phase ingest.max, drain: 35,517 of 35,581 messages applied when its stall budget of 40.0s ran out")
	h.rep.Exactness = report.Exactness{Checked: true, Lost: 1, Differences: []string{"grant photo_daily_total of u1: sent 2, Redis holds 1: 1 lost"}}
	var stdout, stderr bytes.Buffer
	if code := h.finish(&stdout, &stderr); code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	for _, want := range []string{"INCOMPLETE", "phase ingest.max, drain: 35,517 of 35,581", "EXACTNESS FAILED", "1 lost"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

// An exactness check that cannot be made leaves the run incomplete: it
// used to exit 0 with "not checked" in the report.
func TestExactnessThatCannotBeCheckedIsIncomplete(t *testing.T) {
	exited := make(chan struct{})
	close(exited)
	gone := &child{role: roleStack, cmd: &exec.Cmd{Process: &os.Process{Pid: 42}}, exited: exited}
	h := &harness{o: Options{UIDs: 1}, log: slog.New(slog.DiscardHandler), ledger: newLedger(),
		rep: &report.Report{Complete: true}, t: &target{stack: gone}}
	h.ledger.good.Add(1)
	e := h.checkExactness(t.Context())
	want := "exactness not checked: the target cannot be read: the stack process (pid 42) exited"
	if e.Checked || h.rep.Complete || len(h.rep.Incomplete) != 1 || h.rep.Incomplete[0] != want {
		t.Errorf("checked %v, complete %v, incomplete %q; want unchecked, incomplete %q", e.Checked, h.rep.Complete, h.rep.Incomplete, want)
	}
}
