package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/meter"
	"github.com/allot/allot/services/ratelimit"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

func rebuildCommand() command {
	return command{
		name:    "rebuild",
		summary: "rebuild the meter's Redis state and the rate limiter's windows of hits from the USAGE stream, or audit the meter's (-dry-run)",
		usage: `Usage: allot rebuild [-from TIME] [-uid UID] [-dry-run] [-force] [-only meter|ratelimit]

Replays the USAGE stream through the meter's own apply path (the same
checks, Lua scripts and dedup records) so that Redis holds what a meter
that never lost anything holds: grants, counters, gauges and threshold
notices. A notice the NOTIFY stream shows as sent is not sent again; one
never sent is published. Grant overrides (allot grants) are not in the
stream and are kept as Redis holds them; authorize charges that no event
repeats are not in the stream either and cannot come back.

The rebuild first deletes the meter state it replaces (grant state,
counters, gauges and dedup records of every uid, or of -uid), so the
meters must be stopped meanwhile: it refuses while the meter's consumer
has pull requests waiting, unless -force. Events published meanwhile wait
in the stream; the meters apply them when they start again. A whole
rebuild writes the meter's epoch marker last: meters that found Redis
empty (and answer 503 rebuilding meanwhile) resume then; they also
rebuild by themselves, one replica for all (meter.loss_check).

-dry-run rebuilds into a scratch key space of the same Redis instead,
lists every value where the meter's state differs from the rebuilt one
(per uid, metric and field: held, rebuilt), deletes the scratch space and
changes nothing else: an audit to run at any time, meters running. It
exits 0 when the two agree, 1 when they differ, 2 on an error.

-from defaults to the start of the oldest grant period still open: for
calendar-aligned grants the start of the current period; with rolling
grants, counters or gauges, whose state depends on all earlier events, the
whole stream. State from before -from, or before the oldest event the
stream still holds (streams.max_age), cannot be restored: the summary
says so.

Then, unless -dry-run or -only meter, it rebuilds the rate limiter's
windows of hits: the windows of the services that count a metric's usage
events as hits (ratelimit.services.<name>.metric), replayed from the
start of the oldest window a check still reads (-from overrides it)
through the rate limiter's own hit script and dedup records. It deletes
nothing and adds only hits the windows lack, so rate limiters may run
meanwhile and it can be run again at will; what checks spent is not in
the stream and stays as Redis holds it. A whole rebuild writes the rate
limiter's epoch marker last. -only ratelimit rebuilds those windows
alone (the meters may run); -only meter the meter's state alone.

Progress (position, events/s, percentage) goes to stderr at most once a
second; the summary to stdout.

Examples:
  allot rebuild -dry-run
  allot rebuild -dry-run -uid u-42
  allot rebuild -from 2026-11-01T00:00:00Z
  allot rebuild -uid u-42 -from 36h
  allot rebuild -only ratelimit`,
		run: runRebuild,
	}
}

// rebuildExit is the exit status of a rebuild that did not succeed: 1
// for a dry run that found differences, 2 for anything that kept it from
// finishing.
type rebuildExit struct {
	code int
	err  error
}

func (e *rebuildExit) Error() string { return e.err.Error() }
func (e *rebuildExit) Unwrap() error { return e.err }
func (e *rebuildExit) ExitCode() int { return e.code }

func runRebuild(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var cf clientFlags
	cf.register(fs, env)
	redisURL := fs.String("redis", "", "Redis URL (default: env REDIS_URL, the config file, or "+service.Default().Redis.URL.String()+")")
	fromFlag := fs.String("from", "", "the oldest event to replay: an RFC 3339 time, or a duration before now such as 36h (default: the start of the oldest open grant period)")
	uid := fs.String("uid", "", "rebuild only this uid's own state (usage.<uid>)")
	dryRun := fs.Bool("dry-run", false, "rebuild into a scratch space and list the differences; change nothing")
	force := fs.Bool("force", false, "replace the state even though meters seem to be running")
	only := fs.String("only", "", "rebuild only the meter's state (meter) or only the rate limiter's windows of hits (ratelimit); default both")
	if err := parse(fs, args, false); err != nil {
		return err
	}
	switch *only {
	case "", "meter":
	case "ratelimit":
		if *dryRun {
			return usagef("-dry-run audits the meter's state only: the rate limiter's windows also hold what checks spent, which the stream does not")
		}
	default:
		return usagef("-only %q: want meter or ratelimit", *only)
	}
	now := time.Now().UTC()
	from, err := parseFrom(*fromFlag, now)
	if err != nil {
		return err
	}
	if *uid != "" {
		if err := events.ValidateUID("uid", *uid); err != nil {
			return usagef("-uid: %v", err)
		}
	}
	fail := func(err error) error { return &rebuildExit{2, err} }
	rt, nc, err := cf.load(env)
	if err != nil {
		var uerr *usageError
		if errors.As(err, &uerr) {
			return err
		}
		return fail(err)
	}
	defer nc.Close()
	cfg, err := meter.LoadConfig(rt, cf.config, env.getenv)
	if err != nil {
		return fail(err)
	}
	if *redisURL != "" {
		cfg.Redis.URL, cfg.Redis.Addrs = service.URL(*redisURL), nil
	}
	cctx, cancel := context.WithTimeout(ctx, cf.timeout)
	rdb, err := service.ConnectRedis(cctx, cfg.Redis)
	cancel()
	if err != nil {
		return fail(fmt.Errorf("cannot reach Redis: %w", err))
	}
	defer rdb.Close()

	if *only == "ratelimit" {
		return rebuildRateLimit(ctx, env, &cf, rt, nc, rdb, from, *uid, now, true)
	}
	progress := func(p meter.RebuildProgress) {
		fmt.Fprintf(env.stderr, "rebuild: seq %d of %d (%.1f%%), %d events, %.0f events/s\n",
			p.Seq, p.LastSeq, p.Percent(), p.Events, p.Rate())
	}
	rep, err := meter.Rebuild(ctx, cfg, meter.Deps{NATS: nc, Redis: rdb}, meter.RebuildOptions{
		From: from, UID: *uid, DryRun: *dryRun, Force: *force, Progress: progress, Now: func() time.Time { return now },
	})
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			err = fmt.Errorf("%w: NATS %s has no %s stream, so there is nothing to rebuild from", err, cf.target, cfg.Streams.Usage)
		}
		return fail(err)
	}
	printRebuildSummary(env.stdout, rep)
	if !*dryRun {
		if *only == "meter" {
			return nil
		}
		return rebuildRateLimit(ctx, env, &cf, rt, nc, rdb, from, *uid, now, false)
	}
	if len(rep.Diffs) == 0 {
		fmt.Fprintln(env.stdout, "Redis holds exactly what the stream rebuilds.")
		return nil
	}
	printDiffs(env.stdout, rep.Diffs)
	return &rebuildExit{1, fmt.Errorf("%d %s between what Redis holds and what the stream rebuilds", len(rep.Diffs), plural(len(rep.Diffs), "difference", "differences"))}
}

// rebuildRateLimit rebuilds the rate limiter's windows of hits, with the
// rate limiter's sections of the same configuration. Without a service
// counting hits there is nothing to do: asked for alone (-only
// ratelimit) that is an error, after the meter a line.
func rebuildRateLimit(ctx context.Context, env *cliEnv, cf *clientFlags, rt service.Config, nc *nats.Conn, rdb redis.UniversalClient,
	from time.Time, uid string, now time.Time, alone bool) error {
	fail := func(err error) error { return &rebuildExit{2, err} }
	cfg, err := ratelimit.LoadConfig(rt, cf.config, env.getenv)
	if err != nil {
		return fail(err)
	}
	if len(cfg.RateLimit.HitServices()) == 0 {
		if alone {
			return fail(errors.New("no rate-limited service counts hits from usage events (ratelimit.services.<name>.metric): nothing to rebuild"))
		}
		fmt.Fprintln(env.stdout, "Rate limiter: no service counts hits from usage events; no windows to rebuild.")
		return nil
	}
	progress := func(p service.ReplayProgress) {
		fmt.Fprintf(env.stderr, "rebuild (rate limiter): seq %d of %d (%.1f%%), %d events, %.0f events/s\n",
			p.Seq, p.LastSeq, p.Percent(), p.Events, p.Rate())
	}
	rep, err := ratelimit.Rebuild(ctx, cfg, ratelimit.Deps{NATS: nc, Redis: rdb}, ratelimit.RebuildOptions{
		From: from, UID: uid, Progress: progress, Now: func() time.Time { return now },
	})
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			err = fmt.Errorf("%w: NATS %s has no %s stream, so there is nothing to rebuild from", err, cf.target, cfg.Streams.Usage)
		}
		return fail(err)
	}
	printRateLimitSummary(env.stdout, rep)
	return nil
}

func printRateLimitSummary(w io.Writer, r ratelimit.RebuildReport) {
	what := "every uid"
	if r.UID != "" {
		what = "uid " + r.UID
	}
	fmt.Fprintf(w, "Rebuilt the rate limiter's windows of hits of %s from %s events since %s", what, r.Stream, r.From.UTC().Format(time.RFC3339))
	if r.FirstSeq > 0 {
		fmt.Fprintf(w, " (seq %d..%d)", r.FirstSeq, r.LastSeq)
	}
	fmt.Fprintf(w, " in %s.\n", r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "  events: %d read, %d counted by no service or invalid\n", r.Events, r.Skipped)
	fmt.Fprintf(w, "  hits: %d counted, %d counted before (duplicates)", r.Hits, r.Duplicates)
	if r.Refused > 0 || r.Failed > 0 {
		fmt.Fprintf(w, ", %d refused (past 1e15), %d failed (see the log)", r.Refused, r.Failed)
	}
	fmt.Fprintln(w)
	if r.Missing {
		fmt.Fprintf(w, "  MISSING: the stream holds events only since %s; hits from before cannot be restored\n", r.HeldSince.Format(time.RFC3339))
	}
}

// parseFrom reads -from: an RFC 3339 time or a duration before now.
func parseFrom(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		if t.After(now) {
			return time.Time{}, usagef("-from %s is in the future", s)
		}
		return t.UTC(), nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, usagef("-from %s: a duration must be > 0 (it counts back from now)", s)
		}
		return now.Add(-d), nil
	}
	return time.Time{}, usagef("-from %q: want an RFC 3339 time (2026-11-01T00:00:00Z) or a duration before now (36h)", s)
}

func printRebuildSummary(w io.Writer, r meter.RebuildReport) {
	what := "every uid"
	if r.UID != "" {
		what = "uid " + r.UID
	}
	if r.DryRun {
		what += " in a scratch space"
	}
	since := "the whole " + r.Stream + " stream"
	if !r.From.IsZero() {
		since = r.Stream + " events since " + r.From.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(w, "Rebuilt %s from %s", what, since)
	if r.FirstSeq > 0 {
		fmt.Fprintf(w, " (seq %d..%d)", r.FirstSeq, r.LastSeq)
	}
	fmt.Fprintf(w, " in %s.\n", r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "  events: %d read, %d applied, %d duplicates, %d refused", r.Events, r.Applied, r.Duplicates, r.Refused)
	if r.GivenUp > 0 {
		fmt.Fprintf(w, ", %d given up on by the meter (max_deliver)", r.GivenUp)
	}
	if r.Skipped > 0 {
		fmt.Fprintf(w, ", %d skipped (global or instance metrics, shared with other uids)", r.Skipped)
	}
	fmt.Fprintln(w)
	if r.Elapsed > 0 && r.Events > 0 {
		fmt.Fprintf(w, "  rate: %.0f events/s\n", float64(r.Events)/r.Elapsed.Seconds())
	}
	fmt.Fprintf(w, "  notices: %d sent before (not sent again), %d published now, %d pending\n", r.NoticesSent, r.NoticesPublished, r.NoticesPending)
	if r.Cleared > 0 {
		fmt.Fprintf(w, "  replaced: %d keys of meter state deleted first\n", r.Cleared)
	}
	if r.Missing {
		fmt.Fprintf(w, "  MISSING: the stream holds events only since %s; state from before cannot be restored\n", r.HeldSince.Format(time.RFC3339))
	}
}

func printDiffs(w io.Writer, diffs []meter.RebuildDiff) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "UID\tKIND\tMETRIC\tFIELD\tHELD\tREBUILT")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, d := range diffs {
		field := strings.ReplaceAll(d.Field, "\x1f", ",")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.Tag, d.Kind, d.Metric, dash(field), dash(d.Held), dash(d.Rebuilt))
	}
	_ = tw.Flush()
}
