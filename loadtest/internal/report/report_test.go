package report

import (
	"encoding/json"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/loadtest/internal/hist"
)

func sample() *Report {
	met, missed := true, false
	return &Report{
		Run:        Run{ID: "abc", Started: time.Unix(0, 0), Target: "inprocess", Scenarios: []string{"ingest", "credit"}, Duration: 12, Machine: "linux"},
		Complete:   false,
		Incomplete: []string{"the target stopped mid-run: the stack process exited"},
		Headlines: []Headline{
			{Name: "ingest.max rate", Value: 21000, Unit: "ev/s", Baseline: "raw loop", BaseVal: 30000, Ratio: 0.7, Target: ">= 0.6x", Met: &met},
			{Name: "credit p99", Value: 7.5, Unit: "ms", Baseline: "raw", BaseVal: 5, Ratio: 0.67, Target: "<= 2 ms", Met: &missed},
		},
		Phases: []Phase{
			{Name: "ingest.max", What: "meter", Mode: "closed", Concurrency: 8, Start: 0, Seconds: 5, Ops: 100000, Throughput: 21000,
				Lag: &hist.Summary{Count: 10, P50: 40, P99: 200, Max: 210}, Errors: map[string]int64{"timeout": 2},
				Series: []Series{{Name: "ingest.max lag", Points: []hist.Point{{T: 0, Count: 5, P99: 100}, {T: 1, Count: 5, P99: 200}}}}},
			{Name: "credit", What: "meter.credit", Mode: "open", Rate: 5000, Start: 6, Seconds: 5, Ops: 25000, Throughput: 5000,
				Latency: &hist.Summary{Count: 25000, P50: 1, P90: 2, P99: 7.5, P999: 12, Max: 30}, Incomplete: "stopped early",
				Resources: []Resource{{What: "stack process", CPUPercent: 120, RSSMiB: 200}},
				Series:    []Series{{Name: "credit latency", Points: []hist.Point{{T: 6, P99: 0.8}, {T: 7, P99: 9}, {T: 10, P99: 3}}}}},
		},
		Exactness: Exactness{Checked: true, OK: false, Events: 100, Lost: 1, Differences: []string{"grant photo_daily_total of u1: sent 2, Redis holds 1: 1 lost"}},
	}
}

func TestMarkdown(t *testing.T) {
	md := Markdown(sample())
	for _, want := range []string{
		"**INCOMPLETE RUN**", "the stack process exited",
		"| ingest.max rate | 21.0k ev/s | 30.0k ev/s (raw loop) | 0.70x | >= 0.6x: met |",
		"<= 2 ms: **not met**", "**FAILED**", "grant photo_daily_total of u1", "credit (incomplete)", "timeout 2", "| credit | stack process | 120 | 200 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestSVGIsWellFormed(t *testing.T) {
	for name, r := range map[string]*Report{"full": sample(), "empty": {Run: Run{ID: "x"}}} {
		t.Run(name, func(t *testing.T) {
			svg := SVG(r)
			dec := xml.NewDecoder(strings.NewReader(svg))
			paths := 0
			for {
				tok, err := dec.Token()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("not well-formed XML: %v\n%s", err, svg)
				}
				if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "path" {
					paths++
				}
			}
			want := 0
			if name == "full" {
				want = 2
			}
			if paths != want {
				t.Errorf("%d paths, want %d", paths, want)
			}
		})
	}
	if svg := SVG(sample()); !strings.Contains(svg, "INCOMPLETE") || !strings.Contains(svg, "credit latency") {
		t.Error("the chart names neither its state nor its series")
	}
}

func TestWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	files, err := Write(dir, sample())
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(files.JSON)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if back.Complete || back.Phases[0].Lag.P99 != 200 || back.Headlines[0].Ratio != 0.7 {
		t.Errorf("JSON round trip lost figures: %+v", back)
	}
	for _, f := range []string{files.Markdown, files.SVG} {
		if st, err := os.Stat(f); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 0.0412: "0.041", 3.521: "3.52", 42.1: "42.1", 812.4: "812", 23456: "23.5k", 2.5e6: "2.50M"} {
		if got := Num(v); got != want {
			t.Errorf("Num(%v) = %q, want %q", v, got, want)
		}
	}
}

// Phases that run at once share one band, labelled by their common
// prefix, so their names do not pile up on each other.
func TestSVGLabelsConcurrentPhasesOnce(t *testing.T) {
	r := sample()
	start := r.Phases[len(r.Phases)-1].Start + 10
	r.Phases = append(r.Phases,
		Phase{Name: "mixed.credit", Start: start, Seconds: 5},
		Phase{Name: "mixed.ingest", Start: start, Seconds: 6})
	svg := SVG(r)
	if strings.Contains(svg, ">mixed.credit</text>") || strings.Contains(svg, ">mixed.ingest</text>") || !strings.Contains(svg, ">mixed</text>") {
		t.Errorf("concurrent phases labelled one by one:\n%s", svg)
	}
}
