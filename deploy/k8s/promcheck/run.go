package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// files is a flag that may be given more than once.
type files []string

func (f *files) String() string     { return strings.Join(*f, ",") }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

// run is the whole command; it returns the exit code: 0 when everything
// checks, 1 with problems, 2 when the command line or a file cannot be
// read.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("promcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var rules, dashboards files
	metricsPath := fs.String("metrics", "", "the metrics exported, one \"name type\" line each; without it, names are not checked")
	fs.Var(&rules, "rules", "a Prometheus rule file or PrometheusRule manifest (repeatable)")
	fs.Var(&dashboards, "dashboard", "a Grafana dashboard's JSON (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || len(rules)+len(dashboards) == 0 {
		fmt.Fprintln(stderr, "promcheck: usage: promcheck [-metrics names.txt] -rules FILE... -dashboard FILE...")
		return 2
	}
	var known Metrics
	if *metricsPath != "" {
		f, err := os.Open(*metricsPath)
		if err != nil {
			fmt.Fprintf(stderr, "promcheck: %v\n", err)
			return 2
		}
		known, err = ReadMetrics(f)
		_ = f.Close()
		if err != nil {
			fmt.Fprintf(stderr, "promcheck: %s: %v\n", *metricsPath, err)
			return 2
		}
	}
	c := NewChecker(known)
	var errs []error
	var nRules, nQueries int
	for _, p := range rules {
		data, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintf(stderr, "promcheck: %v\n", err)
			return 2
		}
		n, err := c.Rules(data)
		nRules += n
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
		}
	}
	for _, p := range dashboards {
		data, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintf(stderr, "promcheck: %v\n", err)
			return 2
		}
		n, err := c.Dashboard(data)
		nQueries += n
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	names := "metric names not checked (no -metrics)"
	if known != nil {
		names = fmt.Sprintf("every metric named is one of the %d exported", len(known))
	}
	fmt.Fprintf(stdout, "promcheck: %d rules in %d files, %d queries in %d dashboards: %s\n",
		nRules, len(rules), nQueries, len(dashboards), names)
	return 0
}
