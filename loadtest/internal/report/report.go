// Package report holds the result of one load-test run and writes it as
// JSON, Markdown and an SVG chart of latency over time.
package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/allot/allot/loadtest/internal/hist"
)

// Report is one run.
type Report struct {
	Run        Run        `json:"run"`
	Complete   bool       `json:"complete"`
	Incomplete []string   `json:"incomplete,omitempty"` // why the run is partial
	Headlines  []Headline `json:"headlines"`
	Phases     []Phase    `json:"phases"`
	Exactness  Exactness  `json:"exactness"`
	Notes      []string   `json:"notes,omitempty"`
}

// Run says what ran where.
type Run struct {
	ID        string            `json:"id"`
	Started   time.Time         `json:"started"`
	Finished  time.Time         `json:"finished"`
	Target    string            `json:"target"`
	Profile   string            `json:"profile,omitempty"`
	Scenarios []string          `json:"scenarios"`
	Duration  float64           `json:"duration_s"`
	Settings  map[string]string `json:"settings"`
	Machine   string            `json:"machine"`
}

// Headline is one figure with its baseline measured in the same run.
type Headline struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Baseline string  `json:"baseline,omitempty"` // what the baseline is
	BaseVal  float64 `json:"baseline_value,omitempty"`
	// Ratio is Value / BaseVal for rates and BaseVal / Value for
	// latencies, so above 1 is always better than the baseline.
	Ratio  float64 `json:"ratio,omitempty"`
	Target string  `json:"target,omitempty"` // e.g. ">= 0.6x" or "<= 2 ms"
	Met    *bool   `json:"met,omitempty"`
}

// Phase is one measured stretch of the run.
type Phase struct {
	Name        string           `json:"name"`
	What        string           `json:"what"`
	Mode        string           `json:"mode"` // open (rate) or closed (concurrency)
	Rate        float64          `json:"rate,omitempty"`
	Concurrency int              `json:"concurrency,omitempty"`
	Start       float64          `json:"start_s"` // since the run started
	Seconds     float64          `json:"seconds"`
	Ops         int64            `json:"ops"`
	Throughput  float64          `json:"throughput_per_s"`
	Latency     *hist.Summary    `json:"latency,omitempty"` // request latency, or publish latency
	Lag         *hist.Summary    `json:"lag,omitempty"`     // publish to applied
	Errors      map[string]int64 `json:"errors,omitempty"`  // by kind
	Counts      map[string]int64 `json:"counts,omitempty"`  // by outcome (allowed, denied, duplicate, ...)
	Resources   []Resource       `json:"resources,omitempty"`
	Series      []Series         `json:"series,omitempty"`
	Incomplete  string           `json:"incomplete,omitempty"`
}

// Resource is what one process or server used during a phase.
type Resource struct {
	What       string  `json:"what"`                  // "stack process", "baseline process", "redis"
	CPUPercent float64 `json:"cpu_percent,omitempty"` // of one core, averaged over the phase
	RSSMiB     float64 `json:"rss_mib,omitempty"`     // at the end of the phase
	MemMiB     float64 `json:"mem_mib,omitempty"`     // Redis used_memory at the end
	Note       string  `json:"note,omitempty"`
}

// Series is a timeline of one measurement, for the chart.
type Series struct {
	Name   string       `json:"name"` // e.g. "credit latency", "ingest lag"
	Points []hist.Point `json:"points"`
}

// Exactness is the check that nothing was lost or counted twice.
type Exactness struct {
	Checked     bool     `json:"checked"`
	OK          bool     `json:"ok"`
	Events      int64    `json:"events"`     // good events the stream acknowledged
	Duplicates  int64    `json:"duplicates"` // extra copies sent
	Bad         int64    `json:"bad"`        // bad events sent
	Dead        int64    `json:"dead"`       // dead letters found for the run's uids
	Uncertain   int64    `json:"uncertain"`  // sends whose fate is unknown (publish failed, request timed out)
	Keys        int      `json:"keys"`       // counters and grants compared
	Lost        float64  `json:"lost"`       // total expected but missing
	Double      float64  `json:"double"`     // total found above expected
	Differences []string `json:"differences,omitempty"`
	Note        string   `json:"note,omitempty"`
}

// Files are the paths Write produced.
type Files struct {
	JSON, Markdown, SVG string
}

// Write puts report.json, report.md and latency.svg into dir, creating it.
func Write(dir string, r *Report) (Files, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Files{}, fmt.Errorf("report: %w", err)
	}
	f := Files{
		JSON:     filepath.Join(dir, "report.json"),
		Markdown: filepath.Join(dir, "report.md"),
		SVG:      filepath.Join(dir, "latency.svg"),
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return Files{}, fmt.Errorf("report: encode: %w", err)
	}
	errs := []error{
		os.WriteFile(f.JSON, append(data, '\n'), 0o644),
		os.WriteFile(f.Markdown, []byte(Markdown(r)), 0o644),
		os.WriteFile(f.SVG, []byte(SVG(r)), 0o644),
	}
	if err := errors.Join(errs...); err != nil {
		return f, fmt.Errorf("report: %w", err)
	}
	return f, nil
}
