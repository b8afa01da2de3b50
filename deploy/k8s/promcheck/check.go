package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// Metrics are the metrics a program exports: name to type (counter,
// gauge, histogram, summary or untyped).
type Metrics map[string]string

// metricTypes are the types a Metrics line may name.
var metricTypes = []string{"counter", "gauge", "histogram", "summary", "untyped"}

// ReadMetrics reads one "name type" line per metric; blank lines and
// lines starting with # are skipped.
func ReadMetrics(r io.Reader) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		switch {
		case len(f) != 2:
			return nil, fmt.Errorf("line %d: %q: want \"name type\"", n, line)
		case !model.IsValidLegacyMetricName(f[0]):
			return nil, fmt.Errorf("line %d: %q is not a metric name", n, f[0])
		case !slices.Contains(metricTypes, f[1]):
			return nil, fmt.Errorf("line %d: type %q of %s: want one of %s", n, f[1], f[0], strings.Join(metricTypes, ", "))
		}
		if t, ok := m[f[0]]; ok && t != f[1] {
			return nil, fmt.Errorf("line %d: %s is a %s and a %s", n, f[0], t, f[1])
		}
		m[f[0]] = f[1]
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return m, nil
}

// problem says why a selected name is no series of m, or "".
func (m Metrics) problem(name string) string {
	if t, ok := m[name]; ok {
		if t == "histogram" {
			return fmt.Sprintf("metric %s is a histogram: select its %[1]s_bucket, %[1]s_sum or %[1]s_count", name)
		}
		return ""
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		switch t := m[base]; {
		case t == "histogram", t == "summary" && suffix != "_bucket":
			return ""
		case t != "":
			return fmt.Sprintf("unknown metric %s: %s is a %s, which has no %s series", name, base, t, suffix)
		}
	}
	return fmt.Sprintf("unknown metric %s: no service exports it", name)
}

// Checker checks rules and dashboards, and the names they select against
// its Metrics (none: names are not checked).
type Checker struct {
	known  Metrics
	parser parser.Parser
}

// NewChecker returns a Checker of the names in known; nil checks no names.
func NewChecker(known Metrics) *Checker {
	if known != nil {
		known = Metrics(cloneMap(known))
	}
	return &Checker{known: known, parser: parser.NewParser(parser.Options{})}
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// severities are the severity labels an alert may carry.
var severities = []string{"warning", "critical"}

// Rules checks a Prometheus rule file, or a PrometheusRule manifest (its
// spec is a rule file), and returns how many rules it holds. A recording
// rule's name is known from then on, to later rules and dashboards.
func (c *Checker) Rules(data []byte) (int, error) {
	var doc struct {
		APIVersion string    `yaml:"apiVersion"`
		Kind       string    `yaml:"kind"`
		Spec       yaml.Node `yaml:"spec"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return 0, fmt.Errorf("not a YAML rule file: %w", err)
	}
	if doc.Kind != "" || doc.APIVersion != "" {
		if doc.Kind != "PrometheusRule" || doc.APIVersion != "monitoring.coreos.com/v1" {
			return 0, fmt.Errorf("apiVersion %q kind %q: want a rule file (groups: ...) or a monitoring.coreos.com/v1 PrometheusRule", doc.APIVersion, doc.Kind)
		}
		spec, err := yaml.Marshal(&doc.Spec)
		if err != nil {
			return 0, fmt.Errorf("PrometheusRule spec: %w", err)
		}
		data = spec
	}
	groups, errs := rulefmt.Parse(data, false, model.UTF8Validation, c.parser, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		return 0, errors.Join(errs...)
	}
	n := 0
	for _, g := range groups.Groups {
		n += len(g.Rules)
		if len(g.Rules) == 0 {
			errs = append(errs, fmt.Errorf("group %s: no rules", g.Name))
		}
		for _, r := range g.Rules {
			if r.Record != "" && c.known != nil {
				c.known[r.Record] = "gauge"
			}
		}
	}
	if n == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("no rule groups"))
	}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			where := fmt.Sprintf("group %s, record %s", g.Name, r.Record)
			if r.Alert != "" {
				where = fmt.Sprintf("group %s, alert %s", g.Name, r.Alert)
				if !slices.Contains(severities, r.Labels["severity"]) {
					errs = append(errs, fmt.Errorf("%s: labels.severity %q: want one of %s", where, r.Labels["severity"], strings.Join(severities, ", ")))
				}
				for _, a := range []string{"summary", "description"} {
					if strings.TrimSpace(r.Annotations[a]) == "" {
						errs = append(errs, fmt.Errorf("%s: annotations.%s: missing: say what fired and what to do", where, a))
					}
				}
			}
			errs = append(errs, c.expr(where, r.Expr)...)
		}
	}
	return n, errors.Join(errs...)
}

// expr checks that q parses and that every metric it selects is known.
func (c *Checker) expr(where, q string) []error {
	e, err := c.parser.ParseExpr(q)
	if err != nil {
		return []error{fmt.Errorf("%s: %w", where, err)}
	}
	var errs []error
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		vs, ok := node.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if name == "" && m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		switch {
		case name == "":
			errs = append(errs, fmt.Errorf("%s: %s selects series by their labels alone: name the metric, so that it can be checked", where, vs))
		case c.known != nil:
			if msg := c.known.problem(name); msg != "" {
				errs = append(errs, fmt.Errorf("%s: %s", where, msg))
			}
		}
		return nil
	})
	return errs
}

// dashboard is the part of Grafana's dashboard JSON model that holds
// queries.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Title   string `json:"title"`
	Type    string `json:"type"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	// Panels are a collapsed row's.
	Panels []panel `json:"panels"`
}

type variable struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// Query is a string, or an object whose query field is one.
	Query json.RawMessage `json:"query"`
}

// grafanaIntervals are Grafana's interval variables, which stand for a
// duration in a range selector.
var grafanaIntervals = regexp.MustCompile(`\$\{(__rate_interval|__interval|__range)\}|\$(__rate_interval|__interval|__range)\b`)

// Dashboard checks a Grafana dashboard: it has a uid and a title, every
// panel a title and queries, every query and query variable parses as
// PromQL and selects known metrics. It returns how many queries it
// checked.
func (c *Checker) Dashboard(data []byte) (int, error) {
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return 0, fmt.Errorf("not a Grafana dashboard's JSON: %w", err)
	}
	var errs []error
	if d.UID == "" || d.Title == "" {
		errs = append(errs, errors.New("uid and title: both required (Grafana keys a provisioned dashboard by its uid)"))
	}
	n := 0
	var walk func(prefix string, ps []panel)
	walk = func(prefix string, ps []panel) {
		for i, p := range ps {
			where := fmt.Sprintf("%spanels[%d] %q", prefix, i, p.Title)
			if p.Type == "row" {
				walk(where+": ", p.Panels)
				continue
			}
			if p.Title == "" {
				errs = append(errs, fmt.Errorf("%s: no title", where))
			}
			if len(p.Targets) == 0 {
				errs = append(errs, fmt.Errorf("%s: no queries", where))
			}
			for _, t := range p.Targets {
				n++
				q := grafanaIntervals.ReplaceAllString(t.Expr, "5m")
				if strings.TrimSpace(q) == "" {
					errs = append(errs, fmt.Errorf("%s, query %s: no expr", where, t.RefID))
					continue
				}
				errs = append(errs, c.expr(fmt.Sprintf("%s, query %s", where, t.RefID), q)...)
			}
		}
	}
	walk("", d.Panels)
	if n == 0 {
		errs = append(errs, errors.New("no panel has a query"))
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		n++
		where := fmt.Sprintf("variable %s", v.Name)
		q, err := variableQuery(v.Query)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		if q != "" {
			errs = append(errs, c.expr(where, q)...)
		}
	}
	return n, errors.Join(errs...)
}

// variableQuery returns the PromQL in a query variable's query, "" for
// one that selects no metric (label_values(label)).
func variableQuery(raw json.RawMessage) (string, error) {
	var q string
	if err := json.Unmarshal(raw, &q); err != nil {
		var obj struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(raw, &obj); err != nil {
			return "", fmt.Errorf("query: want a string or {\"query\": string}, got %s", bytes.TrimSpace(raw))
		}
		q = obj.Query
	}
	q = strings.TrimSpace(q)
	if inner, ok := strings.CutPrefix(q, "label_values("); ok && strings.HasSuffix(inner, ")") {
		inner = strings.TrimSuffix(inner, ")")
		i := strings.LastIndexByte(inner, ',')
		if i < 0 {
			return "", nil // label_values(label): every series
		}
		return inner[:i], nil
	}
	if inner, ok := strings.CutPrefix(q, "query_result("); ok && strings.HasSuffix(inner, ")") {
		return strings.TrimSuffix(inner, ")"), nil
	}
	return "", fmt.Errorf("query %q: want label_values(metric, label) or query_result(expr)", q)
}
