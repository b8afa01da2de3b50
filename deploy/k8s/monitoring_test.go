package k8s

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/services/auth"
	"github.com/allot/allot/services/meter"
	"github.com/allot/allot/services/notifier"
	"github.com/allot/allot/services/ratelimit"
	"github.com/allot/allot/services/registry"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// wantAlerts are the alerts operators rely on: lag of the meter and of the
// rate limiter's hits, dead letters and events given up, the meter's
// state lost and its rebuild failing, the same for the rate limiter's windows of hits, Redis or NATS out of reach, checks
// failing open, the notifier giving up.
var wantAlerts = []string{"AllotMeterLagging", "AllotMeterStalled", "AllotRateLimitHitsLagging", "AllotRateLimitHitsStalled",
	"AllotDeadLetters", "AllotEventsGivenUp", "AllotMeterRebuilding", "AllotMeterRebuildFailed", "AllotRateLimitRebuilding", "AllotRateLimitRebuildFailed", "AllotDependencyDown",
	"AllotRateLimitFailingOpen", "AllotNotifierRetriesExhausted", "AllotNotifierNoticesGivenUp"}

// The prod overlay ships the PrometheusRule allot with every alert
// operators rely on, and the Grafana dashboard as a ConfigMap Grafana's
// sidecar loads; both pass promcheck: the rules parse with Prometheus's
// rule parser, every query with its PromQL parser, and every metric they
// name is one the services register.
func TestMonitoring(t *testing.T) {
	bin := promcheck(t)
	names := metricsFile(t)
	r := render(t, "overlays/prod")
	rules, dashboard := monitoringFiles(t, r)

	var rule *PrometheusRule
	for _, pr := range All[*PrometheusRule](r) {
		if pr.Name == "allot" {
			rule = pr
		}
	}
	var alerts []string
	for _, g := range rule.Spec.Groups {
		for _, rl := range g.Rules {
			alerts = append(alerts, rl.Alert)
		}
	}
	for _, a := range wantAlerts {
		if !slices.Contains(alerts, a) {
			t.Errorf("PrometheusRule/allot: no alert %s", a)
		}
	}

	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "-metrics", names, "-rules", rules, "-dashboard", dashboard)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("promcheck: %v\n%s", err, stderr.String())
	}
	t.Log(strings.TrimSpace(stdout.String()))
}

// Each fixture under testdata/bad-monitoring breaks the monitoring
// component in one way; promcheck, run as TestMonitoring runs it, must
// fail and say where and why.
func TestBadMonitoringFixtures(t *testing.T) {
	cases := map[string]string{
		"alert-unknown-metric":       "group allot.ingest, alert AllotMeterLagging: unknown metric allot_meter_lag_seconds_bucket: no service exports it",
		"alert-broken-expr":          `group "allot.state", rule 5, "AllotDependencyDown"`,
		"alert-counter-as-histogram": "alert AllotDeadLetters: unknown metric allot_meter_dead_letters_total_bucket: allot_meter_dead_letters_total is a counter, which has no _bucket series",
		"dashboard-unknown-metric":   `panels[0] "Ingest": panels[0] "Usage events", query A: unknown metric allot_meter_event_total`,
	}
	dirs, err := os.ReadDir("testdata/bad-monitoring")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if _, ok := cases[d.Name()]; !ok {
			t.Errorf("testdata/bad-monitoring/%s has no case in TestBadMonitoringFixtures", d.Name())
		}
	}
	bin := promcheck(t)
	names := metricsFile(t)
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			rules, dashboard := monitoringFiles(t, render(t, filepath.Join("testdata/bad-monitoring", name)))
			var stderr bytes.Buffer
			cmd := exec.Command(bin, "-metrics", names, "-rules", rules, "-dashboard", dashboard)
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("promcheck: %v, want exit status 1\n%s", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("promcheck says\n%s\nwithout %q", stderr.String(), want)
			}
		})
	}
}

// monitoringFiles writes the PrometheusRule allot and the dashboard of
// ConfigMap allot-dashboard that r holds to files, and returns their paths.
func monitoringFiles(t *testing.T, r *Rendered) (rules, dashboard string) {
	t.Helper()
	dir := t.TempDir()
	rules, dashboard = filepath.Join(dir, "prometheusrule.yaml"), filepath.Join(dir, "dashboard.json")
	o, ok := r.Find("PrometheusRule", "allot")
	if !ok {
		t.Fatal("no PrometheusRule/allot")
	}
	y, err := yaml.Marshal(o.Value)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rules, y, 0o600); err != nil {
		t.Fatal(err)
	}
	o, ok = r.Find("ConfigMap", "allot-dashboard")
	if !ok {
		t.Fatal("no ConfigMap/allot-dashboard (without a hash: Grafana's sidecar would keep the old ones)")
	}
	cm := o.Value.(*corev1.ConfigMap)
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("ConfigMap/allot-dashboard: labels[grafana_dashboard] %q, want \"1\" (what Grafana's sidecar looks for)", cm.Labels["grafana_dashboard"])
	}
	if err := os.WriteFile(dashboard, []byte(cm.Data["allot.json"]), 0o600); err != nil {
		t.Fatal(err)
	}
	return rules, dashboard
}

// promcheck builds deploy/k8s/promcheck, a module of its own outside
// go.work (the Prometheus module is too large to share the workspace's
// dependencies), and returns the executable's path. The first build
// fetches and compiles Prometheus's rule and PromQL packages (about a
// minute of CPU); later ones come from the Go build cache. Where it cannot
// be built (offline) the test skips, unless ALLOT_REQUIRE_INTEGRATION=1,
// as CI sets; -short skips it too.
func promcheck(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: not building promcheck")
	}
	bin := filepath.Join(t.TempDir(), "promcheck")
	var stderr bytes.Buffer
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = "promcheck"
	cmd.Env = append(os.Environ(), "GOWORK=off")
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := fmt.Sprintf("building promcheck (go build in deploy/k8s/promcheck): %v\n%s", err, stderr.String())
		if os.Getenv("ALLOT_REQUIRE_INTEGRATION") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg + "\nALLOT_REQUIRE_INTEGRATION=1 makes this a failure")
	}
	return bin
}

// metricsFile writes exportedMetrics as promcheck reads it, one "name
// type" line each, and returns its path.
func metricsFile(t *testing.T) string {
	t.Helper()
	m := exportedMetrics(t)
	lines := make([]string, 0, len(m))
	for name, typ := range m {
		lines = append(lines, name+" "+typ)
	}
	sort.Strings(lines)
	p := filepath.Join(t.TempDir(), "metrics.txt")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// recorder is the Registerer each service is started with: it registers
// on a real registry, as the service's binary does, and keeps every
// collector registered, whose descriptions name its metrics even before
// they have a series.
type recorder struct {
	reg        *prometheus.Registry
	collectors []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	if err := r.reg.Register(c); err != nil {
		return err
	}
	r.collectors = append(r.collectors, c)
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err) // prometheus.Registerer's contract; the services never call it
		}
	}
}

func (r *recorder) Unregister(c prometheus.Collector) bool { return r.reg.Unregister(c) }

// exportedMetrics starts every allot service through its Start, as its
// binary's Run does, on an embedded NATS and miniredis, each with a
// recorder over one registry that a service.HTTPServer serves with the
// checks Run adds; it returns the name and type of every metric that
// server's /metrics can hold: what the services register (by their
// descriptions, so a labelled metric without series yet counts) and what
// the server and service.NewRegistry add.
func exportedMetrics(t *testing.T) map[string]string {
	t.Helper()
	ctx := t.Context()
	nc, err := nats.Connect(testenv.EmbeddedNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })

	reg := service.NewRegistry()
	srv := service.NewHTTPServer("127.0.0.1:0", reg, nil)
	srv.AddCheck("nats", service.NATSCheck(nc))
	srv.AddCheck("redis", service.RedisCheck(rdb))
	rec := &recorder{reg: reg}

	rt := service.Default()
	rt.Instance = "monitoring-test"
	rt.Streams.Memory = true
	rt.Streams.MaxBytes, rt.Streams.DeadMaxBytes, rt.Streams.NotifyMaxBytes = 64<<20, 16<<20, 16<<20
	stop := func(name string, s interface{ Stop(context.Context) error }) {
		t.Cleanup(func() {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := s.Stop(sctx); err != nil {
				t.Errorf("stop %s: %v", name, err)
			}
		})
	}

	mcfg := meter.DefaultConfig()
	mcfg.Config = rt
	m, err := meter.Start(ctx, mcfg, meter.Deps{NATS: nc, Redis: rdb, Registerer: rec})
	if err != nil {
		t.Fatal(err)
	}
	stop("meter", m)

	// A service counting hits from usage events, so the rate limiter's
	// hits consumer (and its series) runs too.
	rcfg := ratelimit.DefaultConfig()
	rcfg.Config = rt
	rcfg.RateLimit.Services = map[string]ratelimit.Service{"uploads": {Metric: "api_calls_total"}}
	rl, err := ratelimit.Start(ctx, rcfg, ratelimit.Deps{NATS: nc, Redis: rdb, Registerer: rec})
	if err != nil {
		t.Fatal(err)
	}
	stop("ratelimit", rl)

	gcfg := registry.DefaultConfig()
	gcfg.Config = rt
	gcfg.Registry.Keys = []service.Secret{service.Secret(randomText(t))}
	g, err := registry.Start(ctx, gcfg, registry.Deps{NATS: nc, Redis: rdb, Registerer: rec})
	if err != nil {
		t.Fatal(err)
	}
	stop("registry", g)

	ncfg := notifier.DefaultConfig()
	ncfg.Config = rt
	ncfg.Notifier.TokenSecrets = []service.Secret{service.Secret(randomText(t))}
	n, err := notifier.Start(ctx, ncfg, notifier.Deps{NATS: nc, Redis: rdb, Registerer: rec})
	if err != nil {
		t.Fatal(err)
	}
	stop("notifier", n)

	acfg, err := auth.DefaultConfig()
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := issuer.Seed()
	acfg.IssuerSeed, acfg.SysPassword = service.Secret(seed), service.Secret(randomText(t))
	a, err := auth.Start(ctx, acfg, auth.Deps{NATS: nc, Sys: nc, Redis: rdb, KeyPrefix: rt.Redis.KeyPrefix, Registerer: rec})
	if err != nil {
		t.Fatal(err)
	}
	stop("auth", a)

	out := map[string]string{}
	add := func(name, typ string) {
		switch was := out[name]; {
		case was == "" || was == "untyped":
			out[name] = typ
		case typ != "untyped" && typ != was:
			t.Fatalf("metric %s is both a %s and a %s", name, was, typ)
		}
	}
	families, err := srv.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		add(f.GetName(), strings.ToLower(f.GetType().String()))
	}
	for _, c := range rec.collectors {
		types, err := collectorTypes(c)
		if err != nil {
			t.Fatal(err)
		}
		for name, typ := range types {
			add(name, typ)
		}
	}
	for _, name := range []string{"allot_dependency_up", "allot_build_info", "allot_meter_events_total", "allot_meter_rebuilds_total",
		"allot_ratelimit_hits_consumer_lag_seconds", "allot_registry_instances", "allot_notifier_dead_total", "asynq_queue_tasks",
		"allot_auth_decisions_total", "allot_request_duration_seconds", "allot_mutex_acquisitions_total", "go_goroutines"} {
		if out[name] == "" {
			t.Errorf("%s is not among the %d metrics collected: a service's registrations were missed", name, len(out))
		}
	}
	return out
}

// collectorTypes returns the name and type of every metric c describes: a
// vector's type is its Go type's, another collector's that of what it
// collects (untyped for a metric it has no series of).
func collectorTypes(c prometheus.Collector) (map[string]string, error) {
	descs := make(chan *prometheus.Desc)
	go func() { c.Describe(descs); close(descs) }()
	out := map[string]string{}
	var errs []error
	for d := range descs {
		name, err := fqName(d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[name] = "untyped"
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	vec := ""
	switch c.(type) {
	case *prometheus.CounterVec:
		vec = "counter"
	case *prometheus.GaugeVec:
		vec = "gauge"
	case *prometheus.HistogramVec:
		vec = "histogram"
	case *prometheus.SummaryVec:
		vec = "summary"
	}
	if vec != "" {
		for name := range out {
			out[name] = vec
		}
		return out, nil
	}
	metrics := make(chan prometheus.Metric)
	go func() { c.Collect(metrics); close(metrics) }()
	for m := range metrics {
		var pb dto.Metric
		if m.Write(&pb) != nil {
			continue // an invalid metric, such as a queue the collector could not read
		}
		name, err := fqName(m.Desc())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		switch {
		case pb.Histogram != nil:
			out[name] = "histogram"
		case pb.Summary != nil:
			out[name] = "summary"
		case pb.Counter != nil:
			out[name] = "counter"
		case pb.Gauge != nil:
			out[name] = "gauge"
		}
	}
	return out, errors.Join(errs...)
}

// fqName reads a description's metric name, which client_golang shows
// only in its String: Desc{fqName: "name", ...}.
func fqName(d *prometheus.Desc) (string, error) {
	s := d.String()
	rest, ok := strings.CutPrefix(s, "Desc{fqName: ")
	if ok {
		if q, err := strconv.QuotedPrefix(rest); err == nil {
			if name, err := strconv.Unquote(q); err == nil && name != "" {
				return name, nil
			}
		}
	}
	return "", fmt.Errorf("no metric name in the description %s (client_golang changed how it prints one?)", s)
}

// randomText is a random secret for a service that refuses to start
// without one.
func randomText(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}
