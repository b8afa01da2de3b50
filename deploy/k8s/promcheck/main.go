// Command promcheck checks Prometheus rule files (or PrometheusRule
// manifests) and Grafana dashboards against the metrics a program
// exports:
//
//	promcheck -metrics names.txt -rules alerts.yaml -dashboard dashboard.json
//
// Each rule file must parse with Prometheus's rule parser, and each alert
// carry a severity (warning or critical), a summary and a description.
// Each dashboard panel's queries and each query variable must parse as
// PromQL (Grafana's interval variables read as 5m). With -metrics, every
// metric a rule or query selects must be in that file: one "name type"
// line per metric (type counter, gauge, histogram, summary or untyped), so
// that a histogram's _bucket, _sum and _count are known and a counter's
// are not. It prints what it checked, or every problem and exits 1.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
