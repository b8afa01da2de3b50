package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/loadtest/internal/report"
)

// The fault suite (-profile faults, faults-quick): each scenario gets a
// world of its own (faultEnv: its own nats-server and redis-server, every
// service in its own process behind toxiproxy), runs traffic through it
// with the harness's apps (ingest.go: duplicates and bad events in the
// ledger), injects its fault, lets the system recover, and runs the
// harness's exactness check. The report is one table, one row per
// scenario, every figure counted from what the stream, Redis and the mail
// sink hold; a row that is not 0 lost, 0 double-counted, 0 notices sent
// twice fails the run.

// faultScenario is one row of the table.
type faultScenario struct {
	name string
	// title is the row's label; it may name the profile's sizes.
	title func(o Options) string
	run   func(ctx context.Context, f *faultRun) error
	// cluster runs the scenario on a NATS cluster and a Redis Cluster
	// with two processes of every service (faultclusterscen.go); such
	// scenarios run only when -faults names them.
	cluster bool
	// meter is more of the meter's settings, YAML of its section
	// (cluster only).
	meter string
}

// faultScenarios, in the order a run takes them.
var faultScenarios = []faultScenario{
	{"kill-meter", func(o Options) string { return fmt.Sprintf("kill -9 of the meter, %d times", o.FaultKills) }, killScenario("meter"), false, ""},
	{"kill-ratelimit", func(o Options) string { return fmt.Sprintf("kill -9 of the rate limiter, %d times", o.FaultKills) }, killScenario("ratelimit"), false, ""},
	{"kill-registry", func(o Options) string { return fmt.Sprintf("kill -9 of the registry, %d times", o.FaultKills) }, killScenario("registry"), false, ""},
	{"kill-notifier", func(o Options) string { return fmt.Sprintf("kill -9 of the notifier, %d times", o.FaultKills) }, killScenario("notifier"), false, ""},
	{"kill-nats", func(Options) string { return "nats-server killed -9, restarted on the same store" }, natsKillScenario, false, ""},
	{"redis-empty", func(Options) string {
		return "Redis restarted empty (rebuild), the meter killed -9 mid-rebuild"
	}, redisEmptyScenario, false, ""},
	{"redis-unreachable", func(o Options) string {
		return fmt.Sprintf("Redis unreachable for %s (every service)", o.FaultOutage)
	}, redisUnreachableScenario, false, ""},
	{"partition-meter-redis", func(o Options) string {
		return fmt.Sprintf("partition meter ↔ Redis for %s", o.FaultPartition)
	}, partitionScenario("meter-redis"), false, ""},
	{"partition-meter-nats", func(o Options) string {
		return fmt.Sprintf("partition meter ↔ NATS for %s", o.FaultPartition)
	}, partitionScenario("meter-nats"), false, ""},
	{"backlog", func(o Options) string {
		return fmt.Sprintf("%s events backlogged with the meter stopped, then drained", commas(int64(o.FaultBacklog)))
	}, backlogScenario, false, ""},
	{"malformed-flood", func(o Options) string {
		return fmt.Sprintf("flood of %s malformed messages on usage.*", commas(int64(o.FaultFlood)))
	}, floodScenario, false, ""},
	{"cluster-kill-nats-node", func(Options) string {
		return "NATS cluster: the node leading the usage stream and the meter's consumer killed -9, restarted on its store"
	}, clusterNATSKillScenario, true, ""},
	{"cluster-kill-nats-node-fetch", func(Options) string {
		return "the same with meter.fetch_wait 5s"
	}, clusterNATSKillScenario, true, "fetch_wait: 5s"},
	{"cluster-kill-redis-master", func(Options) string {
		return "Redis Cluster: a master killed -9, its replica promoted (meter.wait_replicas 0, the default)"
	}, clusterRedisKillScenario, true, ""},
	{"cluster-kill-redis-master-wait", func(Options) string {
		return "the same with meter.wait_replicas 1"
	}, clusterRedisKillScenario, true, "wait_replicas: 1"},
	{"cluster-redis-master-empty", func(Options) string {
		return "Redis Cluster: one master emptied (FLUSHALL, its replica following), the others whole: the lost slots rebuilt"
	}, clusterRedisFlushScenario, true, ""},
}

// faultNames is the scenarios a fault profile runs unless -faults says:
// all but the cluster ones.
func faultNames() []string {
	var out []string
	for _, s := range faultScenarios {
		if !s.cluster {
			out = append(out, s.name)
		}
	}
	return out
}

// allFaultNames is every scenario -faults may name.
func allFaultNames() []string {
	out := make([]string, len(faultScenarios))
	for i, s := range faultScenarios {
		out[i] = s.name
	}
	return out
}

// faultRow is one scenario's result.
type faultRow struct {
	Name     string `json:"name"`
	Scenario string `json:"scenario"`
	// Published is every message the harness published on usage.*:
	// good events, their copies, bad events and malformed messages.
	Published int64 `json:"published"`
	// Applied is the distinct events Redis holds: the meter's dedup
	// records of event ids.
	Applied int64 `json:"applied"`
	// DupsDropped is the copies the stream dropped (acked as a repeated
	// id) plus the messages of USAGE the meter dropped as already
	// applied (stored, neither applied nor dead-lettered).
	DupsDropped int64 `json:"duplicates_dropped"`
	// Dead is the distinct USAGE messages in USAGE_DEAD, each with its
	// reason.
	Dead int64 `json:"dead_lettered"`
	// Lost and Double are the exactness check's: summed over every
	// counter and grant of the run, what Redis lacks of what was sent,
	// and what it holds beyond it.
	Lost   float64 `json:"lost"`
	Double float64 `json:"double_counted"`
	// NoticesTwice is the usage emails beyond the first for one notice.
	NoticesTwice int `json:"notices_twice"`
	// Recover is the longest time to recover of the scenario's faults.
	Recover time.Duration `json:"recover_ns"`
	// RecoverNote says what "recovered" was measured as.
	RecoverNote string `json:"recover_note,omitempty"`
	// Notices are the distinct notices mailed, and those the final state
	// says were due.
	Notices    int      `json:"notices"`
	NoticesDue int      `json:"notices_due"`
	Notes      []string `json:"notes,omitempty"`
	Failures   []string `json:"failures,omitempty"`
	Seconds    float64  `json:"seconds"`
}

func (r *faultRow) fail(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

func (r *faultRow) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func (r *faultRow) recovered(d time.Duration) {
	r.Recover = max(r.Recover, d)
}

// faultRun is one scenario under way.
type faultRun struct {
	o   Options
	h   *harness // the scenario's: its target, ledger and log
	env *faultEnv
	row *faultRow
	rng *rand.Rand

	mu sync.Mutex // guards row and retry
	// published is every message published on usage.*; streamDups the
	// ones the stream acked as a repeated id; malformed the raw
	// malformed messages the stream stored.
	published, streamDups, malformed int64
	// malformedUIDs is the malformed messages on a run uid's subject,
	// which the ledger counts with the bad events.
	malformedUIDs int64
	// retry is the authorizations whose answer was lost, to send again.
	retry []authAttempt
	// noticesLost, when set, says why notices due may never be mailed
	// in this scenario (they are then noted, not failed).
	noticesLost string
	// trafficStart is when the traffic began: the times in the notes
	// count from it.
	trafficStart time.Time
	// uidErrs, in the cluster scenarios, books every failed credit,
	// check and authorize request by uid; faultUIDs are the uids whose
	// state lives on the node the scenario killed (when that says
	// anything: a Redis master's slots).
	uidErrs   *uidErrors
	faultUIDs map[int]bool
}

func (f *faultRun) fail(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.row.fail(format, args...)
}

func (f *faultRun) note(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.row.note(format, args...)
}

func (f *faultRun) recovered(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.row.recovered(d)
}

// runFaults runs the fault suite and returns the exit code.
func runFaults(ctx context.Context, o Options, log *slog.Logger, stdout, stderr io.Writer) int {
	runID := newRunID()
	start := time.Now()
	fmt.Fprintf(stdout, "allot fault suite %s: %s, %d scenarios, traffic %s each at %g events/s over %d uids, %.0f%% duplicates\n",
		runID, o.Profile, len(o.Faults), o.Duration, o.faultRate(), o.UIDs, o.DupRatio*100)
	var rows []faultRow
	for i, name := range o.Faults {
		sc, ok := findFault(name)
		if !ok {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		log.Info("scenario", "n", fmt.Sprintf("%d/%d", i+1, len(o.Faults)), "name", name)
		row := runFault(ctx, o, sc, fmt.Sprintf("%s%d", runID, i), log.With("scenario", name), stderr)
		rows = append(rows, row)
		verdict := "ok"
		if len(row.Failures) > 0 {
			verdict = "FAILED: " + strings.Join(row.Failures, "; ")
		}
		log.Info("scenario done", "name", name, "seconds", fmt.Sprintf("%.1f", row.Seconds), "verdict", verdict)
	}
	table := faultTable(rows)
	fmt.Fprint(stdout, "\n"+table)
	failed := 0
	for _, r := range rows {
		if len(r.Failures) > 0 {
			failed++
		}
	}
	code := exitOK
	if failed > 0 || len(rows) < len(o.Faults) {
		code = exitFailed
	}
	took := time.Since(start)
	fmt.Fprintf(stdout, "\n%d of %d scenarios ran, %d failed, in %s\n", len(rows), len(o.Faults), failed, took.Round(time.Second))
	if err := writeFaultReport(o, runID, start, took, rows, table); err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		code = exitFailed
	} else {
		fmt.Fprintf(stdout, "report: %s, %s\n", filepath.Join(o.Out, "faults.md"), filepath.Join(o.Out, "faults.json"))
	}
	if code != exitOK {
		for _, r := range rows {
			for _, f := range r.Failures {
				fmt.Fprintf(stderr, "loadtest: %s: %s\n", r.Name, f)
			}
		}
		if len(rows) < len(o.Faults) {
			fmt.Fprintf(stderr, "loadtest: the run stopped after %d of %d scenarios: %v\n", len(rows), len(o.Faults), context.Cause(ctx))
		}
	}
	return code
}

func findFault(name string) (faultScenario, bool) {
	for _, s := range faultScenarios {
		if s.name == name {
			return s, true
		}
	}
	return faultScenario{}, false
}

// faultBudget bounds one scenario: its traffic, the faults' own time,
// the backlog and -grace for everything else.
func faultBudget(o Options) time.Duration {
	return 2*o.Duration + o.FaultOutage + o.FaultPartition + o.Grace + time.Duration(o.FaultBacklog/2000)*time.Second
}

// runFault runs one scenario in a world of its own and checks it.
func runFault(ctx context.Context, o Options, sc faultScenario, runID string, log *slog.Logger, stderr io.Writer) (row faultRow) {
	row = faultRow{Name: sc.name, Scenario: sc.title(o)}
	began := time.Now()
	defer func() { row.Seconds = time.Since(began).Seconds() }()
	budget := faultBudget(o)
	ctx, cancel := context.WithTimeoutCause(ctx, budget, fmt.Errorf("the scenario went past its budget of %s", budget))
	defer cancel()

	rate := o.faultRate()
	// A grant the traffic crosses half way, so threshold notices are
	// due while the faults happen: each uid uses about rate*duration/uids
	// of it (half the events are grants, 2 on average).
	grant := max(10, float64(int(0.6*rate*o.Duration.Seconds()/float64(o.UIDs))))
	if sc.name == "backlog" {
		grant = max(10, float64(int(0.6*float64(o.FaultBacklog)/float64(o.UIDs))))
	}
	services := faultServices
	if sc.cluster {
		services = clusterServices
	}
	if sc.name == "backlog" {
		services = []string{"ratelimit", "registry", "notifier"} // the meter starts once the backlog is there
	}
	env, err := startEnv(ctx, envSpec{natsBin: o.NATSServer, redisBin: o.RedisServer, runID: runID, grant: grant, keep: o.Keep, cluster: sc.cluster, meter: sc.meter, hits: countsHits(sc.name)}, log)
	if err != nil {
		row.fail("setup: %v", err)
		return row
	}
	defer env.close(o.Keep)
	t, err := env.target(ctx, log) // creates the streams, which the services expect
	defer closeTarget(t)
	if err == nil {
		err = env.startServices(ctx, services)
	}
	if err != nil {
		row.fail("setup: %v", err)
		return row
	}
	h := &harness{o: o, t: t, log: log, start: time.Now(), ledger: newLedger(), rep: &report.Report{Complete: true}}
	f := &faultRun{o: o, h: h, env: env, row: &row, rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
	if sc.cluster {
		f.uidErrs = newUIDErrors()
	}
	if err := f.confirmAddresses(ctx); err != nil {
		row.fail("setup: %v", err)
		return row
	}
	pctx, stopProgress := context.WithCancel(ctx)
	go h.progress(pctx, stderr, 2*time.Second)
	err = sc.run(ctx, f)
	stopProgress()
	if err != nil {
		row.fail("%v", err)
	}
	// The check has a budget of its own: a scenario that ran out of
	// time is still checked.
	cctx, cancelCheck := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
	defer cancelCheck()
	f.check(cctx, grant)
	if countsHits(sc.name) {
		f.checkHits(cctx)
	}
	if f.uidErrs != nil {
		f.note("requests that failed, by uid (i of lt-%s-<i>): %s", runID, f.uidErrs.text(f.faultUIDs))
		if p := f.uidErrs.phaseText(f.faultUIDs); p != "" {
			f.note("failed requests by phase: %s", p)
		}
		f.judgeUIDs(cctx)
	}
	return row
}

// faultRate is the traffic's rate: -rate, else 1,000 events/s.
func (o Options) faultRate() float64 {
	if o.Rate > 0 {
		return o.Rate
	}
	return 1000
}

// faultTable is the report: one Markdown table, then what each row's
// recovery time measured and what else happened.
func faultTable(rows []faultRow) string {
	var b strings.Builder
	b.WriteString("| scenario | events published | applied | duplicates dropped | dead-lettered | lost | double-counted | notices sent twice | time to recover |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		name := r.Scenario
		if len(r.Failures) > 0 {
			name = "**FAILED** " + name
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", name, commas(r.Published), commas(r.Applied), commas(r.DupsDropped),
			commas(r.Dead), report.Num(r.Lost), report.Num(r.Double), r.NoticesTwice, recoverText(r.Recover))
	}
	b.WriteString("\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "- **%s** (%s, %.0f s", r.Scenario, r.Name, r.Seconds)
		if r.RecoverNote != "" {
			b.WriteString("; recovered = " + r.RecoverNote)
		}
		b.WriteString(")")
		for _, n := range r.Notes {
			b.WriteString(" " + strings.TrimSuffix(n, ".") + ".")
		}
		for _, f := range r.Failures {
			b.WriteString(" FAILED: " + f + ".")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func recoverText(d time.Duration) string {
	if d <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func writeFaultReport(o Options, runID string, start time.Time, took time.Duration, rows []faultRow, table string) error {
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	head := fmt.Sprintf("# allot fault suite %s\n\n%s, profile %s, %s/%s, %d CPUs, %s; %d scenarios in %s; traffic %s per scenario at %g events/s over %d uids, %.0f%% duplicates, %.0f%% bad events\n\n",
		runID, start.UTC().Format(time.RFC3339), o.Profile, runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), len(rows), took.Round(time.Second),
		o.Duration, o.faultRate(), o.UIDs, o.DupRatio*100, o.BadRatio*100)
	if err := os.WriteFile(filepath.Join(o.Out, "faults.md"), []byte(head+table), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	b, err := json.MarshalIndent(struct {
		Run     string     `json:"run"`
		Profile string     `json:"profile"`
		Started time.Time  `json:"started"`
		Seconds float64    `json:"seconds"`
		Rows    []faultRow `json:"rows"`
	}{runID, o.Profile, start, took.Seconds(), rows}, "", "  ")
	if err != nil {
		return errors.Join(errors.New("report"), err)
	}
	return os.WriteFile(filepath.Join(o.Out, "faults.json"), b, 0o644)
}
