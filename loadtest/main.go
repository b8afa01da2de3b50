// Command loadtest is allot's load-test harness: it drives real traffic
// through the real services, measures throughput and latency against raw
// baselines taken in the same run, and checks at the end that not one
// event was lost or counted twice. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/allot/allot/loadtest/internal/report"
)

func main() {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // exactness failed, or the run is incomplete
	exitBadFlag = 2
)

// harness is one run.
type harness struct {
	o      Options
	t      *target
	log    *slog.Logger
	start  time.Time
	ledger *ledger
	live   liveSet
	rep    *report.Report
	mu     sync.Mutex // guards rep.Phases and rep.Incomplete

	authSeq atomic.Int64 // authorize ids, unique across phases
}

// run is the whole command; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	// The log and the progress line write to stderr from different
	// goroutines.
	stderr = &lockedWriter{w: stderr}
	o, err := parseOptions(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		fmt.Fprintln(stderr, "loadtest: see -h for the flags")
		return exitBadFlag
	}
	level := slog.LevelInfo
	if o.Verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if len(o.Faults) > 0 {
		return runFaults(ctx, o, log, stdout, stderr)
	}
	h := &harness{o: o, log: log, start: time.Now(), ledger: newLedger()}
	h.rep = &report.Report{Complete: true, Run: report.Run{
		Started: h.start, Target: o.Target, Profile: o.Profile, Scenarios: o.Scenarios,
		Machine:  fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version()),
		Settings: settings(o),
	}}

	// Every run ends within -duration plus -grace, whatever happens.
	hard := o.Duration + o.Grace
	ctx, cancelHard := context.WithTimeoutCause(ctx, hard, fmt.Errorf("the run went past -duration + -grace (%v)", hard))
	defer cancelHard()
	ctx, abort := context.WithCancelCause(ctx)
	defer abort(nil)

	setupCtx, cancelSetup := context.WithTimeoutCause(ctx, 60*time.Second, errors.New("setup went past its 60s budget"))
	t, err := setUp(setupCtx, o, log)
	cancelSetup()
	if t != nil {
		h.rep.Run.ID = t.runID
		h.t = t
	}
	if err != nil {
		log.Error("cannot start the run", "err", err)
		h.incomplete("setup failed: " + err.Error())
		h.rep.Exactness.Note = "the run did not start"
		return h.finish(stdout, stderr)
	}
	h.rep.Run.Target = describeTarget(o, t)
	defer t.tearDown(o, log)

	// Watch the target: a stack that stops mid-run ends the run with a
	// partial report instead of a hang.
	wctx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	go h.watchHealth(wctx, abort)
	go h.progress(wctx, stderr, 2*time.Second)

	var leaders *leaderWatch
	if len(t.more) > 0 {
		leaders = h.watchLeaders(wctx, 250*time.Millisecond, h.t.cfg.Streams.Partitions)
	}
	h.runScenarios(ctx)
	if ctx.Err() != nil {
		h.incomplete(context.Cause(ctx).Error())
	}
	h.rep.Exactness = h.checkExactness(ctx)
	if leaders != nil {
		v, ok := leaders.verdict(t.meter.Ordered)
		h.rep.Notes = append(h.rep.Notes, v)
		h.log.Info(v)
		if !ok {
			h.incomplete("two replicas did one-at-a-time work at once: " + v)
		}
	}
	stopWatching()
	h.rep.Headlines = headlines(h.rep.Phases)
	h.rep.Notes = append(h.rep.Notes,
		"Ingest rates are events applied per second, from the phase's start until its last event was applied: the consumer's ack floor (the meter acks only after Redis confirms), polled every 50 ms. Closed-loop ingest keeps at most 20,000 events pending in the consumer.",
		"Lag is from an event's intended send time to the first 5 ms poll that finds its effect in Redis (the meter's dedup record, written by the same script that applies the event; for the raw worker, a counter of a uid of its own), on at most one event per 2 ms.",
		"Open-loop latencies are measured from the intended send time (no coordinated omission); closed-loop ones from the actual send.",
		"The stack and the baselines run in child processes, so their CPU (% of one core) and RSS are their own; the harness's own share is listed too.")
	t.tearDown(o, log)
	h.t.rdb, h.t.js = nil, nil // torn down; the deferred call does nothing more
	return h.finish(stdout, stderr)
}

func describeTarget(o Options, t *target) string {
	if o.Target == targetExternal {
		return fmt.Sprintf("external: NATS %s, Redis %s", t.natsURL, redact(t.redisURL))
	}
	n := "embedded NATS"
	if o.NATSURL != "" {
		n = "NATS " + o.NATSURL
	}
	s := fmt.Sprintf("inprocess: cmd/allot/devstack in a child process (%s, Redis %s)", n, redisText(o))
	if o.Stacks > 1 {
		s += fmt.Sprintf(", %d stack processes", o.Stacks)
	}
	if o.StackCPU > 0 {
		s += fmt.Sprintf(", each capped at %g cores", o.StackCPU)
	}
	return s
}

// redisText says which Redis an inprocess run uses.
func redisText(o Options) string {
	switch {
	case len(o.RedisAddrs) > 0:
		return "Cluster " + strings.Join(o.RedisAddrs, ",")
	case o.RedisURL != "":
		return redact(o.RedisURL)
	}
	return "miniredis"
}

func settings(o Options) map[string]string {
	return map[string]string{
		"duration": o.Duration.String(), "apps": strconv.Itoa(o.Apps), "uids": strconv.Itoa(o.UIDs),
		"concurrency": strconv.Itoa(o.Concurrency), "dup": strconv.FormatFloat(o.DupRatio, 'g', -1, 64),
		"bad": strconv.FormatFloat(o.BadRatio, 'g', -1, 64), "rate": strconv.FormatFloat(o.Rate, 'g', -1, 64),
		"req-rate": strconv.FormatFloat(o.ReqRate, 'g', -1, 64),
	}
}

func (h *harness) incomplete(why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rep.Complete = false
	for _, w := range h.rep.Incomplete {
		if w == why {
			return
		}
	}
	h.rep.Incomplete = append(h.rep.Incomplete, why)
}

func (h *harness) addPhase(p report.Phase) {
	h.mu.Lock()
	h.rep.Phases = append(h.rep.Phases, p)
	h.mu.Unlock()
	if p.Incomplete != "" {
		h.incomplete("phase " + p.Name + ", " + p.Incomplete)
	}
	line := fmt.Sprintf("%s: %s/s over %.1fs", p.Name, report.Num(p.Throughput), p.Seconds)
	if p.Lag != nil && p.Lag.Count > 0 {
		line += fmt.Sprintf(", lag p50 %sms p99 %sms max %sms", report.Num(p.Lag.P50), report.Num(p.Lag.P99), report.Num(p.Lag.Max))
	} else if p.Latency != nil && p.Latency.Count > 0 {
		line += fmt.Sprintf(", p50 %sms p99 %sms p99.9 %sms", report.Num(p.Latency.P50), report.Num(p.Latency.P99), report.Num(p.Latency.P999))
	}
	var errs int64
	for _, n := range p.Errors {
		errs += n
	}
	h.log.Info("phase done: "+line, "errors", errs)
}

func (h *harness) watchHealth(ctx context.Context, abort context.CancelCauseFunc) {
	fails := 0
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := h.t.health(ctx)
		if err == nil {
			fails = 0
			continue
		}
		fails++
		h.log.Warn("the target looks unwell", "err", err, "checks_failed", fails)
		if fails >= 3 {
			abort(fmt.Errorf("the target failed %d health checks in a row, one a second: %w", fails, err))
			return
		}
	}
}

// units are the shares of -duration each phase gets.
func (h *harness) totalUnits() float64 {
	u := 0.0
	for _, s := range h.o.Scenarios {
		switch s {
		case "ingest":
			u += 10 // publish raw, publish, raw max, meter max, raw at rate, meter at rate
		case "mixed":
			u += 2
		case "grpc":
			u += float64(len(h.grpcFronts()))
		default:
			u++
		}
	}
	if h.o.hasRequests() {
		u++ // the raw request/reply baseline
	}
	return u
}

func (h *harness) runScenarios(ctx context.Context) {
	unit := time.Duration(float64(h.o.Duration) / h.totalUnits())
	conc := h.o.Concurrency
	reqSpec := func(name, what string, op reqOp, units float64, c int) reqSpec {
		return reqSpec{name: name, what: what, op: op, rate: h.o.ReqRate, concurrency: c, dur: time.Duration(units * float64(unit))}
	}
	maxRate := 0.0
	rate := func() float64 {
		switch {
		case h.o.Rate > 0:
			return h.o.Rate
		case maxRate > 0:
			return maxRate / 2
		}
		return 1000
	}
	step := func(f func() report.Phase) bool {
		if ctx.Err() != nil {
			return false
		}
		h.addPhase(cutShort(ctx, f()))
		return ctx.Err() == nil
	}
	if h.t.cfg.Streams.Partitions > 0 && len(h.t.more) > 0 && (h.o.has("ingest") || h.o.has("mixed")) {
		settled, held := h.settlePartitions(ctx)
		h.rep.Notes = append(h.rep.Notes, settleNote(settled, held, h.t.cfg.Streams.Partitions))
	}
	if h.o.has("ingest") {
		ok := step(func() report.Phase { return h.publishOnly(ctx, "publish.raw", true, unit) }) &&
			step(func() report.Phase { return h.publishOnly(ctx, "publish", false, unit) }) &&
			step(func() report.Phase {
				return h.ingest(ctx, ingestSpec{name: "ingest.raw.max", what: "raw worker loop, maximum rate", raw: true, dur: 2 * unit})
			}) &&
			step(func() report.Phase {
				p := h.ingest(ctx, ingestSpec{name: "ingest.max", what: "meter, maximum rate", dur: 2 * unit})
				maxRate = p.Throughput
				return p
			}) &&
			step(func() report.Phase {
				return h.ingest(ctx, ingestSpec{name: "ingest.raw.rate", what: "raw worker loop at the rate", raw: true, rate: rate(), dur: 2 * unit})
			}) &&
			step(func() report.Phase {
				return h.ingest(ctx, ingestSpec{name: "ingest.rate", what: "meter at the rate, with duplicates and bad events", rate: rate(),
					dup: h.o.DupRatio, bad: h.o.BadRatio, dur: 2 * unit})
			})
		if !ok {
			return
		}
	}
	if h.o.hasRequests() {
		if !step(func() report.Phase {
			return h.requests(ctx, reqSpec("request.raw", "raw request/reply, one Redis GET", h.opRaw(), 1, conc))
		}) {
			return
		}
	}
	solo := []struct {
		name, what string
		op         func() (reqOp, func(context.Context))
	}{
		{"credit", "meter.credit", func() (reqOp, func(context.Context)) { return h.opCredit(), nil }},
		{"authorize", "meter.authorize, 1 email per request", func() (reqOp, func(context.Context)) { return h.opAuthorize(), nil }},
		{"ratelimit", "ratelimit.check, the uid's own limit", func() (reqOp, func(context.Context)) { return h.opCheck(), nil }},
		{"registry", "registry: 10% register, 60% heartbeat, 30% find", func() (reqOp, func(context.Context)) {
			r := &registryLoad{h: h}
			return r.op(), r.cleanUp
		}},
	}
	for _, s := range solo {
		if !h.o.has(s.name) {
			continue
		}
		op, cleanUp := s.op()
		ok := step(func() report.Phase { return h.requests(ctx, reqSpec(s.name, s.what, op, 1, conc)) })
		if cleanUp != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			cleanUp(cctx)
			cancel()
		}
		if !ok {
			return
		}
	}
	if h.o.has("batch") {
		batched := func(name, what string, op reqOp) func() report.Phase {
			return func() report.Phase {
				s := reqSpec(name, what, op, 1, conc)
				s.batch = true
				return h.requests(ctx, s)
			}
		}
		ok := step(func() report.Phase {
			return h.requests(ctx, reqSpec("request.bare", "bare request/reply: 16 subscriptions answering {} at once, no work", h.opBare(), 1, conc))
		}) &&
			step(batched("ratelimit.batched", "ratelimit.check, the client batching calls in flight together", h.opCheck())) &&
			step(batched("credit.batched", "meter.credit, the client batching calls in flight together", h.opCredit())) &&
			step(batched("request.bare.batched", "checks through the same batching client, answered at once by bare responders alone or as batches: the floor of batching", h.opBareBatched()))
		if !ok {
			return
		}
	}
	if h.o.has("grpc") && !h.grpcPhases(ctx, step, unit) {
		return
	}
	if h.o.has("mixed") && ctx.Err() == nil {
		h.mixed(ctx, 2*unit, rate())
	}
}

// cutShort marks a phase that the run's end interrupted.
func cutShort(ctx context.Context, p report.Phase) report.Phase {
	if ctx.Err() != nil && p.Incomplete == "" {
		p.Incomplete = "cut short: " + context.Cause(ctx).Error()
	}
	return p
}

// mixed runs ingest at the rate and every request scenario at once, each
// with a quarter of -concurrency.
func (h *harness) mixed(ctx context.Context, d time.Duration, rate float64) {
	c := max(1, h.o.Concurrency/4)
	reg := &registryLoad{h: h}
	var wg sync.WaitGroup
	wg.Go(func() {
		h.addPhase(cutShort(ctx, h.ingest(ctx, ingestSpec{name: "mixed.ingest", what: "meter at the rate, with duplicates and bad events", rate: rate, dup: h.o.DupRatio, bad: h.o.BadRatio, dur: d})))
	})
	for _, s := range []reqSpec{
		{name: "mixed.credit", what: "meter.credit", op: h.opCredit()},
		{name: "mixed.authorize", what: "meter.authorize", op: h.opAuthorize()},
		{name: "mixed.ratelimit", what: "ratelimit.check", op: h.opCheck()},
		{name: "mixed.registry", what: "registry", op: reg.op()},
	} {
		s.rate, s.concurrency, s.dur = h.o.ReqRate/4, c, d
		wg.Go(func() { h.addPhase(cutShort(ctx, h.requests(ctx, s))) })
	}
	wg.Wait()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	reg.cleanUp(cctx)
	cancel()
}

// checkExactness waits until the meter has applied everything sent (as
// long as it makes progress, within the run's time; a 10 s look when the
// run was cut short), then compares. A check that cannot be made, or
// that began before the meter had applied everything, makes the run
// incomplete.
func (h *harness) checkExactness(ctx context.Context) report.Exactness {
	if h.ledger.good.Load() == 0 && h.ledger.bad.Load() == 0 && len(h.ledger.expected) == 0 {
		return report.Exactness{Note: "no scenario of this run changes the meter's state (run ingest, authorize or mixed)"}
	}
	wctx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeoutCause(context.WithoutCancel(ctx), 10*time.Second,
			errors.New("the 10s look at the meter after the run was cut short ran out"))
		defer cancel()
	}
	wctx, stopWatching := context.WithCancel(wctx)
	defer stopWatching()
	rctx, cancel := context.WithTimeoutCause(context.WithoutCancel(ctx), 30*time.Second,
		errors.New("the check's 30s budget for reading Redis and NATS ran out"))
	defer cancel()
	if err := h.t.health(rctx); err != nil {
		e := report.Exactness{Note: "the target cannot be read: " + err.Error()}
		h.incomplete("exactness not checked: " + e.Note)
		return e
	}
	var note string
	stream := h.t.cfg.Streams.Usage
	if w, err := watchFloor(wctx, h.t.js, stream, h.t.meterConsumers(), nil); err != nil {
		note = "exactness check, the meter's progress: " + err.Error()
	} else if err := w.drain(wctx, h.t.js, "exactness check, the meter's drain", stream); err != nil {
		note = err.Error() + "; what the meter had not applied counts as lost in the comparison"
	}
	stopWatching()
	if note != "" {
		h.incomplete(note)
	}
	uids := make([]string, h.o.UIDs)
	for i := range uids {
		uids[i] = h.t.uid(i)
	}
	e := exactness(rctx, h.t, h.ledger, uids)
	if !e.Checked {
		h.incomplete("exactness not checked: " + e.Note)
	}
	if note != "" {
		e.Note = strings.TrimPrefix(e.Note+"; "+note, "; ")
	}
	if e.Checked {
		h.log.Info("exactness", "ok", e.OK, "events", e.Events, "duplicates", e.Duplicates, "bad", e.Bad, "dead", e.Dead, "lost", e.Lost, "double", e.Double)
	} else {
		h.log.Warn("exactness not checked", "why", e.Note)
	}
	return e
}

// finish writes the report and returns the exit code.
func (h *harness) finish(stdout, stderr io.Writer) int {
	h.rep.Run.Finished = time.Now()
	h.rep.Run.Duration = time.Since(h.start).Seconds()
	files, err := report.Write(h.o.Out, h.rep)
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
	}
	fmt.Fprint(stdout, summary(h.rep))
	if err == nil {
		fmt.Fprintf(stdout, "report: %s, %s, %s\n", files.Markdown, files.JSON, files.SVG)
	}
	code := exitOK
	if !h.rep.Complete {
		fmt.Fprintln(stderr, "loadtest: the run is INCOMPLETE; the report is partial:")
		for _, why := range h.rep.Incomplete {
			fmt.Fprintln(stderr, "  "+why)
		}
		code = exitFailed
	}
	if h.rep.Exactness.Checked && !h.rep.Exactness.OK {
		fmt.Fprintln(stderr, "loadtest: EXACTNESS FAILED; first differences:")
		for _, d := range h.rep.Exactness.Differences {
			fmt.Fprintln(stderr, "  "+d)
		}
		code = exitFailed
	}
	if err != nil {
		code = exitFailed
	}
	return code
}

// summary is what stdout gets: the headlines and the exactness verdict.
func summary(r *report.Report) string {
	s := fmt.Sprintf("allot load test %s (%s)\n", r.Run.ID, r.Run.Target)
	for _, h := range r.Headlines {
		s += fmt.Sprintf("  %-42s %10s %-5s", h.Name, report.Num(h.Value), h.Unit)
		if h.Baseline != "" {
			s += fmt.Sprintf("  baseline %s %s, ratio %.2fx", report.Num(h.BaseVal), h.Unit, h.Ratio)
		}
		if h.Met != nil {
			if *h.Met {
				s += "  [target " + h.Target + ": met]"
			} else {
				s += "  [target " + h.Target + ": NOT MET]"
			}
		}
		s += "\n"
	}
	e := r.Exactness
	switch {
	case !e.Checked:
		s += "  exactness: not checked: " + e.Note + "\n"
	case e.OK:
		s += fmt.Sprintf("  exactness: passed: %d events, %d duplicates, %d bad -> %d dead letters; 0 lost, 0 double-counted\n", e.Events, e.Duplicates, e.Bad, e.Dead)
	default:
		s += fmt.Sprintf("  exactness: FAILED: %s lost, %s double-counted\n", report.Num(e.Lost), report.Num(e.Double))
	}
	return s
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
