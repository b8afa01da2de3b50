package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/allot/allot/pkg/events"
)

// Scenarios, in the order a run takes them.
var allScenarios = []string{"ingest", "credit", "authorize", "ratelimit", "batch", "grpc", "registry", "mixed"}

// Targets.
const (
	targetInProcess = "inprocess"
	targetExternal  = "external"
)

// Options is everything a run is told; flags fill it over a profile.
type Options struct {
	Profile  string
	Target   string
	NATSURL  string
	RedisURL string
	// RedisAddrs, instead of RedisURL, names a Redis Cluster's nodes
	// (inprocess): the stack, the baselines and the checks use a
	// Cluster client.
	RedisAddrs  []string
	Config      string
	Scenarios   []string
	Duration    time.Duration
	Grace       time.Duration
	Rate        float64 // ingest events/s for the open-loop phases; 0: half the measured maximum
	ReqRate     float64 // requests/s per request scenario, open loop; 0: closed loop
	Concurrency int     // closed-loop clients per request scenario
	Apps        int     // simulated apps publishing usage events
	UIDs        int
	DupRatio    float64
	BadRatio    float64
	Out         string
	Keep        bool
	Verbose     bool
	// The grpc scenario: ShouldRateLimit on GRPC (empty: the in-process
	// stack's own front), in GRPCDomain, one descriptor whose key is
	// GRPCDescriptor and whose value is a random uid.
	GRPC           string
	GRPCDomain     string
	GRPCDescriptor string
	// The batch scenario's client batching (events.BatchOptions; zero:
	// its defaults).
	BatchWait     time.Duration
	BatchInFlight int
	// Replicas is the stream replicas of the inprocess stack and of the
	// baselines' streams (3 on a NATS cluster: make cluster-test).
	Replicas int
	// Partitions is the inprocess stack's streams.partitions: the usage
	// stream split by uid, a meter consumer per partition (0: one).
	Partitions int
	// Stacks is how many stack processes the inprocess target starts,
	// each running every service: N replicas of each, sharing the
	// consumers, queues and locks (needs -nats-url and a real Redis).
	Stacks int
	// StackCPU caps each stack process at this many cores (a cgroup of
	// its own, as a Kubernetes CPU limit; 0: no cap), so the replicas
	// bind and not the servers they share: how throughput grows with
	// Stacks.
	StackCPU float64

	// The fault suite (-profile faults, faults-quick): the scenarios to
	// run (faults.go); the nats-server and redis-server binaries it
	// starts for each; how often each service is killed; how long Redis
	// is unreachable and a link is cut; the backlog drained and the
	// malformed messages of the flood.
	Faults         []string
	NATSServer     string
	RedisServer    string
	FaultKills     int
	FaultOutage    time.Duration
	FaultPartition time.Duration
	FaultBacklog   int
	FaultFlood     int
}

// profiles are the named starting points; explicit flags win over them.
var profiles = map[string]Options{
	"default": {Scenarios: allScenarios, Duration: 60 * time.Second},
	"quick":   {Scenarios: []string{"ingest", "credit"}, Duration: 10 * time.Second},
	// grpc: the Envoy RLS front beside ratelimit.check over NATS and the
	// raw responder, random uids over 10,000 (-uids), as issue 20 asks.
	"grpc": {Scenarios: []string{"ratelimit", "grpc"}, Duration: 15 * time.Second, UIDs: 10_000},
	// batch: ratelimit.check and meter.credit with the client batching
	// calls in flight together, beside the same alone and the bare
	// responder floor, random uids over 10,000, as issue 20 asks.
	"batch": {Scenarios: []string{"credit", "ratelimit", "batch"}, Duration: 15 * time.Second, UIDs: 10_000},
	// faults: the fault suite, each scenario in a world of its own with
	// -duration of traffic (faults.go); faults-quick is its short
	// profile, as CI runs it.
	"faults": {Faults: faultNames(), Duration: 30 * time.Second, UIDs: 200, FaultKills: 5, FaultOutage: 10 * time.Second,
		FaultPartition: 15 * time.Second, FaultBacklog: 1_000_000, FaultFlood: 100_000},
	"faults-quick": {Faults: faultNames(), Duration: 12 * time.Second, UIDs: 200, FaultKills: 5, FaultOutage: 10 * time.Second,
		FaultPartition: 5 * time.Second, FaultBacklog: 50_000, FaultFlood: 10_000},
}

func baseOptions(getenv func(string) string) Options {
	return Options{
		Profile:     "default",
		Target:      targetInProcess,
		NATSURL:     getenv("NATS_URL"),
		RedisURL:    getenv("REDIS_URL"),
		Config:      getenv("ALLOT_CONFIG"),
		Scenarios:   allScenarios,
		Duration:    60 * time.Second,
		Grace:       90 * time.Second,
		Concurrency: 32,
		Replicas:    1,
		Stacks:      1,
		Apps:        8,
		UIDs:        1000,
		DupRatio:    0.05,
		BadRatio:    0.01,
		Out:         "out",
		NATSServer:  getenv("ALLOT_TEST_NATS_SERVER"),
		RedisServer: "redis-server",

		GRPCDomain:     "allot",
		GRPCDescriptor: "uid",
	}
}

const usageHead = `loadtest drives real traffic through allot and checks that nothing was
lost or counted twice.

Usage: go run . [flags]     (from loadtest/; make loadtest, make loadtest-quick, make loadtest-grpc)

Targets:
  inprocess (default)  the whole stack of "allot dev" (cmd/allot/devstack), started
                       in a child process: embedded NATS and miniredis, or the real
                       servers of -nats-url / -redis-url, under names of this run only.
  external             an allot already running, e.g. the Kubernetes install
                       (kubectl -n allot port-forward svc/nats 4222): needs
                       -nats-url and -redis-url (or NATS_URL, REDIS_URL) and, if the
                       install changed subjects, streams or the key prefix, -config
                       with its allot.yaml. Only this run's uids, registry names and
                       baseline streams are written and removed.

Scenarios (-scenarios, comma-separated):
  ingest     usage events from -apps apps over -uids uids: the maximum rate (closed
             loop, backlog bounded), then -rate (default half the maximum) open loop
             with -dup and -bad ratios, measuring lag from publish to applied;
             the publisher alone against raw nats.go async publish
  credit     meter.credit request/reply       authorize  meter.authorize
  ratelimit  ratelimit.check decisions        registry   register, heartbeat, find
  batch      ratelimit.check and meter.credit with the client batching calls in
             flight together (events.BatchOptions), the bare responder (no
             work, one message each way) they are held to, and the same client
             against bare responders of batches (the floor of batching)
             (-profile batch: with credit and ratelimit alone, in the same run)
  grpc       Envoy RLS ShouldRateLimit (one descriptor -grpc-descriptor=<random uid>,
             hits_addend 1) on the stack's gRPC front, or on -grpc, e.g. an
             envoyproxy/ratelimit of your own; with -grpc and the inprocess target,
             the stack's front too, in the same run (-profile grpc: with ratelimit)
  mixed      all of them at once
Request scenarios run -concurrency closed-loop clients, or -req-rate open loop.

Fault profiles (-profile faults, faults-quick; make loadtest-faults): each of
-faults in a world of its own (a nats-server, -nats-server, and a redis-server
the run starts on spare ports, every service in its own process behind
toxiproxy), traffic with duplicates, the fault, the exactness check; one table
(out/faults.md), exit 1 on a row that is not 0 lost, 0 double-counted, 0
notices sent twice. See README.md.
Every headline figure is compared with a raw baseline measured in the same run.

Exit status: 0 all well; 1 exactness failed or the run is incomplete (a partial
report is still written, and stderr says which wait ran out of which budget,
with how far it got); 2 bad flags.

Flags:
`

// parseOptions reads args over the profile they name. It returns
// flag.ErrHelp for -h.
func parseOptions(args []string, getenv func(string) string, stderr io.Writer) (Options, error) {
	o := baseOptions(getenv)
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageHead)
		fs.PrintDefaults()
	}
	scen := strings.Join(o.Scenarios, ",")
	fs.StringVar(&o.Profile, "profile", o.Profile, "`name` of a profile: default (60 s, every scenario), quick (10 s, ingest and credit), grpc (15 s, ratelimit and grpc over 10,000 uids), batch, or the fault suite's faults and faults-quick")
	fs.StringVar(&o.Target, "target", o.Target, "inprocess or external")
	fs.StringVar(&o.NATSURL, "nats-url", o.NATSURL, "NATS `url` (default $NATS_URL); inprocess: use it instead of an embedded server")
	fs.StringVar(&o.RedisURL, "redis-url", o.RedisURL, "Redis `url` (default $REDIS_URL); inprocess: use it instead of miniredis")
	fs.Func("redis-addrs", "inprocess: a Redis Cluster's `host:port,...` (e.g. make cluster-up's), instead of -redis-url", func(v string) error {
		o.RedisAddrs = strings.Split(v, ",")
		return nil
	})
	fs.StringVar(&o.Config, "config", o.Config, "external: the target's allot.yaml `file`, for its subjects, streams and key prefix (default $ALLOT_CONFIG)")
	fs.StringVar(&scen, "scenarios", scen, "comma-separated `list`: "+strings.Join(allScenarios, ", ")+" (default: the profile's)")
	fs.DurationVar(&o.Duration, "duration", o.Duration, "measured time of the whole run, shared by its phases, 2s to 1h (default: the profile's)")
	fs.DurationVar(&o.Grace, "grace", o.Grace, "the most the run may take beyond -duration: setup, draining, the exactness check, teardown")
	fs.Float64Var(&o.Rate, "rate", o.Rate, "ingest `events/s` of the open-loop phases; 0 means half of the measured maximum")
	fs.Float64Var(&o.ReqRate, "req-rate", o.ReqRate, "`requests/s` per request scenario, open loop; 0 means closed loop with -concurrency")
	fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "closed-loop `clients` per request scenario, 1 to 10000")
	fs.IntVar(&o.Apps, "apps", o.Apps, "simulated apps publishing usage events, 1 to 1000")
	fs.IntVar(&o.UIDs, "uids", o.UIDs, "uids the events and requests spread over, 1 to 1000000")
	fs.Float64Var(&o.DupRatio, "dup", o.DupRatio, "share of events sent a second time, 0 to 0.5")
	fs.Float64Var(&o.BadRatio, "bad", o.BadRatio, "share of bad events (unknown metric, negative counter), 0 to 0.5")
	fs.StringVar(&o.Out, "out", o.Out, "`directory` for report.md, report.json and latency.svg")
	fs.BoolVar(&o.Keep, "keep", o.Keep, "leave this run's keys, streams and registrations in place for a look")
	fs.BoolVar(&o.Verbose, "v", o.Verbose, "log what the stack and the harness do at debug level")
	fs.StringVar(&o.GRPC, "grpc", o.GRPC, "grpc scenario: the Envoy RLS front at `host:port` (default: the inprocess stack's own)")
	fs.StringVar(&o.GRPCDomain, "grpc-domain", o.GRPCDomain, "grpc scenario: the rate limit `domain` of every request")
	fs.IntVar(&o.Stacks, "stacks", o.Stacks, "inprocess: stack `processes`, each running every service (replicas of each), 1 to 5; more than 1 needs -nats-url and -redis-url or -redis-addrs")
	fs.Float64Var(&o.StackCPU, "stack-cpu", o.StackCPU, "inprocess: cap each stack process at this many `cores` (a cgroup of its own, as a Kubernetes CPU limit; Linux, with the right to write /sys/fs/cgroup), so the replicas and not the servers they share bind: to measure how throughput grows with -stacks; 0 no cap")
	fs.IntVar(&o.Partitions, "partitions", o.Partitions, "inprocess: the usage stream's `partitions` (streams.partitions: 0, or 2 to 1024), each with its meter consumer, shared out among the stacks' meters")
	fs.IntVar(&o.Replicas, "replicas", o.Replicas, "stream `replicas` of the inprocess stack and the baselines, 1 to 5 (3 on a NATS cluster)")
	fs.DurationVar(&o.BatchWait, "batch-wait", o.BatchWait, "batch scenario: the client's MaxWait (0: events.DefaultBatchWait)")
	fs.IntVar(&o.BatchInFlight, "batch-inflight", o.BatchInFlight, "batch scenario: the client's MaxInFlight, messages in flight per endpoint before calls wait to be batched (0: events.DefaultBatchInFlight)")
	fs.StringVar(&o.GRPCDescriptor, "grpc-descriptor", o.GRPCDescriptor, "grpc scenario: the descriptor `key` whose value is the request's random uid")
	faults := ""
	fs.StringVar(&faults, "faults", "", "fault profiles: comma-separated `list` of the fault scenarios to run: "+strings.Join(allFaultNames(), ", ")+" (default: all but the cluster- ones)")
	fs.StringVar(&o.NATSServer, "nats-server", o.NATSServer, "fault profiles: the nats-server `binary` each scenario starts (default $ALLOT_TEST_NATS_SERVER: make's pinned .bin/nats-server-<version>)")
	fs.StringVar(&o.RedisServer, "redis-server", o.RedisServer, "fault profiles: the redis-server `binary` each scenario starts")
	fs.IntVar(&o.FaultKills, "kills", o.FaultKills, "fault profiles: kill -9s of each service in its scenario (default: the profile's)")
	fs.IntVar(&o.FaultBacklog, "backlog", o.FaultBacklog, "fault profiles: `events` backlogged with the meter stopped (default: the profile's)")
	fs.IntVar(&o.FaultFlood, "flood", o.FaultFlood, "fault profiles: malformed `messages` of the flood (default: the profile's)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (flags only; see -h)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case set["redis-addrs"] && set["redis-url"]:
		return o, errors.New("-redis-addrs: give -redis-url or -redis-addrs, not both")
	case set["redis-addrs"]:
		o.RedisURL = "" // $REDIS_URL's default gives way to the Cluster
	}
	p, ok := profiles[o.Profile]
	if !ok {
		return o, fmt.Errorf("-profile: unknown profile %q (want default, quick, grpc, batch, faults or faults-quick)", o.Profile)
	}
	if !set["duration"] {
		o.Duration = p.Duration
	}
	if !set["uids"] && p.UIDs > 0 {
		o.UIDs = p.UIDs
	}
	o.Scenarios = p.Scenarios
	if len(p.Faults) > 0 {
		o.Faults, o.Scenarios = p.Faults, nil
		if !set["dup"] {
			o.DupRatio = 0.1
		}
		o.FaultOutage, o.FaultPartition = p.FaultOutage, p.FaultPartition
		for name, v := range map[string]*int{"kills": &o.FaultKills, "backlog": &o.FaultBacklog, "flood": &o.FaultFlood} {
			if !set[name] {
				*v = map[string]int{"kills": p.FaultKills, "backlog": p.FaultBacklog, "flood": p.FaultFlood}[name]
			}
		}
		if set["faults"] {
			o.Faults = nil
			for s := range strings.SplitSeq(faults, ",") {
				if s = strings.TrimSpace(s); s != "" && !slices.Contains(o.Faults, s) {
					o.Faults = append(o.Faults, s)
				}
			}
		}
		return o, o.validateFaults(set)
	}
	if set["faults"] || set["nats-server"] || set["redis-server"] || set["kills"] || set["backlog"] || set["flood"] {
		return o, fmt.Errorf("-faults, -nats-server, -redis-server, -kills, -backlog and -flood are for the fault profiles (-profile faults or faults-quick)")
	}
	if o.Target == targetExternal && o.GRPC == "" && o.Profile != "grpc" {
		// An external allot's gRPC front is wherever it listens, if
		// anywhere: its profile runs without it unless -grpc says.
		o.Scenarios = slices.DeleteFunc(slices.Clone(o.Scenarios), func(s string) bool { return s == "grpc" })
	}
	if set["scenarios"] {
		o.Scenarios = nil
		for s := range strings.SplitSeq(scen, ",") {
			if s = strings.TrimSpace(s); s != "" && !slices.Contains(o.Scenarios, s) {
				o.Scenarios = append(o.Scenarios, s)
			}
		}
	}
	return o, o.Validate()
}

// Validate returns every bad setting, each naming its flag.
func (o Options) Validate() error {
	var errs []error
	bad := func(flag, format string, args ...any) {
		errs = append(errs, fmt.Errorf("-%s: %s", flag, fmt.Sprintf(format, args...)))
	}
	switch o.Target {
	case targetInProcess:
	case targetExternal:
		if o.NATSURL == "" {
			bad("nats-url", "the external target needs a NATS URL (or NATS_URL)")
		}
		if o.RedisURL == "" {
			bad("redis-url", "the external target needs a Redis URL (or REDIS_URL), to check exactness")
		}
	default:
		bad("target", "must be inprocess or external (got %q)", o.Target)
	}
	if len(o.RedisAddrs) > 0 {
		if o.Target != targetInProcess {
			bad("redis-addrs", "is for the inprocess target")
		}
		for _, a := range o.RedisAddrs {
			if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" {
				bad("redis-addrs", "%q is not a host:port such as 127.0.0.1:17001", a)
			}
		}
	}
	for _, u := range []struct{ flag, url, scheme string }{{"nats-url", o.NATSURL, "nats://"}, {"redis-url", o.RedisURL, "redis"}} {
		if u.url != "" && !strings.HasPrefix(u.url, u.scheme) && !(u.flag == "nats-url" && strings.Contains(u.url, "://")) {
			bad(u.flag, "%q is not a URL such as %shost:port", u.url, u.scheme)
		}
	}
	if len(o.Scenarios) == 0 {
		bad("scenarios", "name at least one of %s", strings.Join(allScenarios, ", "))
	}
	for _, s := range o.Scenarios {
		if !slices.Contains(allScenarios, s) {
			bad("scenarios", "unknown scenario %q (want %s)", s, strings.Join(allScenarios, ", "))
		}
	}
	if o.Duration < 2*time.Second || o.Duration > time.Hour {
		bad("duration", "must be between 2s and 1h (got %v)", o.Duration)
	}
	if o.Grace < 10*time.Second || o.Grace > 30*time.Minute {
		bad("grace", "must be between 10s and 30m (got %v)", o.Grace)
	}
	if o.Rate < 0 || o.Rate > 5e6 {
		bad("rate", "must be between 0 and 5000000 events/s (got %g)", o.Rate)
	}
	if o.ReqRate < 0 || o.ReqRate > 1e6 {
		bad("req-rate", "must be between 0 and 1000000 requests/s (got %g)", o.ReqRate)
	}
	if o.Concurrency < 1 || o.Concurrency > 10000 {
		bad("concurrency", "must be between 1 and 10000 (got %d)", o.Concurrency)
	}
	if o.Apps < 1 || o.Apps > 1000 {
		bad("apps", "must be between 1 and 1000 (got %d)", o.Apps)
	}
	if o.UIDs < 1 || o.UIDs > 1_000_000 {
		bad("uids", "must be between 1 and 1000000 (got %d)", o.UIDs)
	}
	if !(o.DupRatio >= 0 && o.DupRatio <= 0.5) { // also refuses NaN
		bad("dup", "must be between 0 and 0.5 (got %g)", o.DupRatio)
	}
	if !(o.BadRatio >= 0 && o.BadRatio <= 0.5) {
		bad("bad", "must be between 0 and 0.5 (got %g)", o.BadRatio)
	}
	switch {
	case o.Stacks < 1 || o.Stacks > 5:
		bad("stacks", "must be between 1 and 5 (got %d)", o.Stacks)
	case o.Stacks > 1 && o.Target != targetInProcess:
		bad("stacks", "is for the inprocess target")
	case o.Stacks > 1 && (o.NATSURL == "" || (o.RedisURL == "" && len(o.RedisAddrs) == 0)):
		bad("stacks", "more than one stack process must share a real NATS and Redis: give -nats-url and -redis-url or -redis-addrs")
	}
	switch {
	case !(o.StackCPU == 0 || (o.StackCPU >= 0.05 && o.StackCPU <= 64)): // also refuses NaN
		bad("stack-cpu", "must be 0 (no cap) or 0.05 to 64 cores (got %g)", o.StackCPU)
	case o.StackCPU != 0 && o.Target != targetInProcess:
		bad("stack-cpu", "is for the inprocess target's stack processes")
	}
	switch {
	case o.Partitions != 0 && (o.Partitions < 2 || o.Partitions > events.MaxPartitions):
		bad("partitions", "must be 0 or 2 to %d (got %d)", events.MaxPartitions, o.Partitions)
	case o.Partitions != 0 && o.Target != targetInProcess:
		bad("partitions", "is the inprocess stack's; the external target's streams are its own")
	}
	if o.Replicas < 1 || o.Replicas > 5 {
		bad("replicas", "must be between 1 and 5 (got %d)", o.Replicas)
	} else if o.Replicas != 1 && o.Target == targetExternal {
		bad("replicas", "is the inprocess stack's; the external target's streams are its own")
	}
	if o.BatchWait < 0 || o.BatchWait > time.Second {
		bad("batch-wait", "must be between 0 and 1s (got %s)", o.BatchWait)
	}
	if o.BatchInFlight < 0 || o.BatchInFlight > 1024 {
		bad("batch-inflight", "must be between 0 and 1024 (got %d)", o.BatchInFlight)
	}
	if o.has("grpc") {
		if o.GRPC == "" && o.Target == targetExternal {
			bad("grpc", "the external target needs the address of its gRPC front for the grpc scenario")
		}
		if o.GRPCDomain == "" {
			bad("grpc-domain", "must name a domain")
		}
		if o.GRPCDescriptor == "" {
			bad("grpc-descriptor", "must name a descriptor key")
		}
	}
	if o.GRPC != "" {
		if host, port, err := net.SplitHostPort(o.GRPC); err != nil || host == "" || port == "" {
			bad("grpc", "%q is not a host:port such as 127.0.0.1:8081", o.GRPC)
		} else if !o.has("grpc") {
			bad("grpc", "the grpc scenario is not in -scenarios (%s)", strings.Join(o.Scenarios, ","))
		}
	}
	if o.Out == "" {
		bad("out", "must name a directory")
	}
	return errors.Join(errs...)
}

func (o Options) has(scenario string) bool { return slices.Contains(o.Scenarios, scenario) }

// hasRequests says whether a request scenario runs, and so the raw
// request/reply baseline.
func (o Options) hasRequests() bool {
	return o.has("credit") || o.has("authorize") || o.has("ratelimit") || o.has("registry") || o.has("grpc") || o.has("batch")
}

// validateFaults checks the settings of a fault profile: it runs its own
// servers, so a target, servers or stacks of the user's are refused.
func (o Options) validateFaults(set map[string]bool) error {
	var errs []error
	bad := func(flag, format string, args ...any) {
		errs = append(errs, fmt.Errorf("-%s: %s", flag, fmt.Sprintf(format, args...)))
	}
	for _, f := range []string{"target", "nats-url", "redis-url", "redis-addrs", "stacks", "stack-cpu", "replicas", "partitions", "scenarios", "config"} {
		if set[f] {
			bad(f, "the fault suite starts servers and services of its own for each scenario")
		}
	}
	if len(o.Faults) == 0 {
		bad("faults", "name at least one of %s", strings.Join(faultNames(), ", "))
	}
	for _, s := range o.Faults {
		if !slices.Contains(allFaultNames(), s) {
			bad("faults", "unknown fault scenario %q (want %s)", s, strings.Join(allFaultNames(), ", "))
		}
	}
	if o.NATSServer == "" {
		bad("nats-server", "the fault suite needs the pinned nats-server binary (make nats-server builds .bin/nats-server-<version>; make loadtest-faults passes it)")
	}
	if o.RedisServer == "" {
		bad("redis-server", "must name the redis-server binary")
	}
	if o.Duration < 5*time.Second || o.Duration > time.Hour {
		bad("duration", "must be between 5s and 1h for the fault suite (got %v)", o.Duration)
	}
	if o.Grace < 10*time.Second || o.Grace > 30*time.Minute {
		bad("grace", "must be between 10s and 30m (got %v)", o.Grace)
	}
	if o.Rate < 0 || o.Rate > 100_000 {
		bad("rate", "must be between 0 and 100000 events/s for the fault suite (got %g)", o.Rate)
	}
	if o.UIDs < 1 || o.UIDs > 100_000 {
		bad("uids", "must be between 1 and 100000 (got %d)", o.UIDs)
	}
	if o.Apps < 1 || o.Apps > 1000 {
		bad("apps", "must be between 1 and 1000 (got %d)", o.Apps)
	}
	if !(o.DupRatio >= 0 && o.DupRatio <= 0.5) {
		bad("dup", "must be between 0 and 0.5 (got %g)", o.DupRatio)
	}
	if !(o.BadRatio >= 0 && o.BadRatio <= 0.5) {
		bad("bad", "must be between 0 and 0.5 (got %g)", o.BadRatio)
	}
	if o.FaultKills < 1 || o.FaultKills > 50 {
		bad("kills", "must be between 1 and 50 (got %d)", o.FaultKills)
	}
	if o.FaultBacklog < 1 || o.FaultBacklog > 10_000_000 {
		bad("backlog", "must be between 1 and 10000000 (got %d)", o.FaultBacklog)
	}
	if o.FaultFlood < 1 || o.FaultFlood > 10_000_000 {
		bad("flood", "must be between 1 and 10000000 (got %d)", o.FaultFlood)
	}
	if o.Out == "" {
		bad("out", "must name a directory")
	}
	return errors.Join(errs...)
}
