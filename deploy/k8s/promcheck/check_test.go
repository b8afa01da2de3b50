package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testMetrics(t *testing.T) Metrics {
	t.Helper()
	f, err := os.Open("testdata/metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := ReadMetrics(f)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestGood(t *testing.T) {
	c := NewChecker(testMetrics(t))
	for _, tc := range []struct {
		file    string
		queries int
	}{
		{"rules.yaml", 4},
		{"prometheusrule.yaml", 1},
		{"dashboard.json", 6}, // three panel queries, three query variables
	} {
		t.Run(tc.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata/good", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			check := c.Rules
			if strings.HasSuffix(tc.file, ".json") {
				check = c.Dashboard
			}
			n, err := check(data)
			if err != nil {
				t.Fatalf("%s: %v", tc.file, err)
			}
			if n != tc.queries {
				t.Errorf("%s: %d checked, want %d", tc.file, n, tc.queries)
			}
		})
	}
}

// Every bad rule file and dashboard fails with a message that names the
// rule or panel and says what is wrong.
func TestBad(t *testing.T) {
	for file, want := range map[string][]string{
		"rules-broken-expr.yaml":    {`group "app", rule 1, "AppBroken"`, "could not parse expression"},
		"rules-unknown-metric.yaml": {"group app, alert AppTypo: unknown metric app_event_total: no service exports it"},
		"rules-counter-bucket.yaml": {"alert AppNotAHistogram: unknown metric app_events_total_bucket: app_events_total is a counter, which has no _bucket series"},
		"rules-histogram-bare.yaml": {"alert AppBareHistogram: metric app_apply_seconds is a histogram: select its app_apply_seconds_bucket"},
		"rules-no-name.yaml":        {`alert AppByJob: {job="app"} selects series by their labels alone`},
		"rules-no-severity.yaml": {
			`alert AppLoud: labels.severity "page": want one of warning, critical`,
			"alert AppLoud: annotations.description: missing",
		},
		"rules-bad-template.yaml":                {`"AppTemplate"`, `annotation "summary"`},
		"rules-unknown-field.yaml":               {"field severity not found"},
		"rules-wrong-kind.yaml":                  {`apiVersion "v1" kind "ConfigMap": want a rule file`},
		"rules-empty.yaml":                       {"no rule groups"},
		"dashboard-not-json.json":                {"not a Grafana dashboard's JSON: unexpected end of JSON input"},
		"dashboard-broken-expr.json":             {`panels[0] "Events", query A: 1:23: parse error`},
		"dashboard-unknown-metric.json":          {`panels[0] "Row": panels[0] "Depth", query B: unknown metric app_queue_size`},
		"dashboard-variable-unknown-metric.json": {"variable namespace: unknown metric app_build_info"},
		"dashboard-variable-unsupported.json":    {`variable m: query "metrics(app_.*)": want label_values(metric, label) or query_result(expr)`},
		"dashboard-no-uid.json": {
			"uid and title: both required",
			`panels[0] "": no title`,
			`panels[0] "": no queries`,
			"no panel has a query",
		},
	} {
		t.Run(file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata/bad", file))
			if err != nil {
				t.Fatal(err)
			}
			c := NewChecker(testMetrics(t))
			check := c.Rules
			if strings.HasSuffix(file, ".json") {
				check = c.Dashboard
			}
			_, err = check(data)
			if err == nil {
				t.Fatalf("%s: no error", file)
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: error\n%v\ndoes not say %q", file, err, w)
				}
			}
		})
	}
}

// Without a list of metrics the names are not checked, the rest is.
func TestWithoutMetrics(t *testing.T) {
	c := NewChecker(nil)
	for _, file := range []string{"bad/rules-unknown-metric.yaml", "good/rules.yaml"} {
		data, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Rules(data); err != nil {
			t.Errorf("%s without -metrics: %v", file, err)
		}
	}
	data, err := os.ReadFile("testdata/bad/rules-no-name.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Rules(data); err == nil || !strings.Contains(err.Error(), "selects series by their labels alone") {
		t.Errorf("a selector without a name, without -metrics: %v", err)
	}
}

func TestReadMetrics(t *testing.T) {
	for _, tc := range []struct{ text, err string }{
		{"a_total counter\n\n# comment\nb gauge\n", ""},
		{"a_total\n", `line 1: "a_total": want "name type"`},
		{"a counter extra\n", `want "name type"`},
		{"ok gauge\n9a gauge\n", `line 2: "9a" is not a metric name`},
		{"a counts\n", `line 1: type "counts" of a: want one of counter, gauge, histogram, summary, untyped`},
		{"a counter\na gauge\n", "line 2: a is a counter and a gauge"},
	} {
		m, err := ReadMetrics(strings.NewReader(tc.text))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("ReadMetrics(%q): %v", tc.text, err)
		case tc.err == "" && len(m) != 2:
			t.Errorf("ReadMetrics(%q): %v, want 2 metrics", tc.text, m)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ReadMetrics(%q): %v, want %q", tc.text, err, tc.err)
		}
	}
}

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"-metrics", "testdata/metrics.txt", "-rules", "testdata/good/rules.yaml", "-rules", "testdata/good/prometheusrule.yaml", "-dashboard", "testdata/good/dashboard.json"},
			0, "promcheck: 5 rules in 2 files, 6 queries in 1 dashboards: every metric named is one of the 5 exported", ""},
		{[]string{"-rules", "testdata/bad/rules-unknown-metric.yaml"}, 0, "metric names not checked", ""},
		{[]string{"-metrics", "testdata/metrics.txt", "-rules", "testdata/bad/rules-unknown-metric.yaml", "-dashboard", "testdata/bad/dashboard-unknown-metric.json"},
			1, "", "testdata/bad/rules-unknown-metric.yaml: group app, alert AppTypo: unknown metric app_event_total"},
		{[]string{"-metrics", "testdata/bad/rules-empty.yaml", "-rules", "testdata/good/rules.yaml"}, 2, "", `testdata/bad/rules-empty.yaml: line 1: type "[]" of groups:: want one of`},
		{[]string{"-rules", "testdata/nope.yaml"}, 2, "", "no such file"},
		{[]string{}, 2, "", "usage: promcheck"},
		{[]string{"-rules", "testdata/good/rules.yaml", "extra"}, 2, "", "usage: promcheck"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stdout.String(), tc.stdout) || !strings.Contains(stderr.String(), tc.stderr) {
			t.Errorf("promcheck %s: exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
				strings.Join(tc.args, " "), code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
	// Both bad files are reported, not just the first.
	var stderr bytes.Buffer
	run([]string{"-metrics", "testdata/metrics.txt", "-rules", "testdata/bad/rules-unknown-metric.yaml", "-dashboard", "testdata/bad/dashboard-unknown-metric.json"}, &bytes.Buffer{}, &stderr)
	if !strings.Contains(stderr.String(), "dashboard-unknown-metric.json: panels[0]") {
		t.Errorf("the second bad file is not reported:\n%s", stderr.String())
	}
}

// The dashboard and metrics decoders never panic, whatever they read.
func FuzzDashboard(f *testing.F) {
	for _, p := range []string{"testdata/good/dashboard.json", "testdata/bad/dashboard-no-uid.json", "testdata/bad/dashboard-variable-unsupported.json"} {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"templating":{"list":[{"type":"query","query":"label_values(,)"}]}}`))
	known := Metrics{"app_up": "gauge", "app_apply_seconds": "histogram"}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = NewChecker(known).Dashboard(data)
		_, _ = ReadMetrics(bytes.NewReader(data))
	})
}
