package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestScrapeGauges(t *testing.T) {
	page := "# HELP allot_registry_reaper_leader x\n# TYPE allot_registry_reaper_leader gauge\n" +
		"allot_registry_reaper_leader 1\nallot_registry_reaper_leader_other 7\n" +
		"allot_notifier_scheduler_leader{x=\"y\"} 5\nallot_notifier_scheduler_leader not-a-number\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(page))
	}))
	defer srv.Close()
	c := &http.Client{Timeout: time.Second}
	got, err := scrapeGauges(t.Context(), c, srv.URL+"/metrics", leaderGauges)
	if err != nil {
		t.Fatal(err)
	}
	if got["allot_registry_reaper_leader"] != 1 || got["allot_notifier_scheduler_leader"] != 0 {
		t.Errorf("gauges %v: want the reaper's 1 and no unlabelled scheduler value", got)
	}
	if _, err := scrapeGauges(t.Context(), c, srv.URL+"/nothing", leaderGauges); err == nil {
		t.Error("a 404 page read as gauges")
	}
}

func TestLeaderVerdict(t *testing.T) {
	w := &leaderWatch{samples: 10, max: map[string]int{"allot_registry_reaper_leader": 1, "allot_notifier_scheduler_leader": 2}, none: map[string]int{}}
	if v, ok := w.verdict(true); ok {
		t.Errorf("two holders at once passed: %s", v)
	}
	w.max["allot_notifier_scheduler_leader"] = 1
	if v, ok := w.verdict(true); !ok {
		t.Errorf("one holder each failed: %s", v)
	}
	// Two meters applying in one interval fails an ordered run only.
	w.countApplying(nil, [][]float64{{5}, {5}}, true) // the first sample: no interval yet
	w.countApplying([][]float64{{5}, {5}}, [][]float64{{9}, {5}}, true)
	w.countApplying([][]float64{{9}, {5}}, [][]float64{{9}, {5}}, true) // idle
	if v, ok := w.verdict(true); !ok || w.applyingOne != 1 || w.applyingMany != 0 {
		t.Errorf("one meter applying: %v, %s", ok, v)
	}
	w.countApplying([][]float64{{9}, {5}}, [][]float64{{12}, {6}}, true)
	if v, ok := w.verdict(true); !ok || w.handovers != 1 {
		t.Errorf("two meters applying in one interval alone (a handover) failed: %s", v)
	}
	w.countApplying([][]float64{{12}, {6}}, [][]float64{{13}, {8}}, true)
	if v, ok := w.verdict(true); ok || w.applyingMany != 1 || !strings.Contains(v, "two intervals running in 1") {
		t.Errorf("two meters applying in two intervals running, ordered, passed: %s", v)
	}
	if v, ok := w.verdict(false); !ok {
		t.Errorf("two meters applying, unordered, failed: %s", v)
	}
}

// The applied count is read from its labelled series.
func TestScrapeApplied(t *testing.T) {
	page := "allot_meter_events_total{result=\"applied\"} 42\nallot_meter_events_total{result=\"duplicate\"} 3\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(page)) }))
	defer srv.Close()
	got, err := scrapeGauges(t.Context(), &http.Client{Timeout: time.Second}, srv.URL, []string{appliedSeries})
	if err != nil || got[appliedSeries] != 42 {
		t.Errorf("applied = %v, %v; want 42", got, err)
	}
}

// With partitions, two meters applying events of different partitions in
// one interval is their turns; two applying one partition's in one
// interval alone is a handover, in two running a failure.
func TestLeaderWatchByPartition(t *testing.T) {
	w := &leaderWatch{max: map[string]int{}, none: map[string]int{}}
	w.countApplying([][]float64{{1, 1, 0}, {0, 0, 1}}, [][]float64{{4, 2, 0}, {0, 0, 5}}, true)
	if w.applyingOne != 1 || w.applyingMany != 0 {
		t.Errorf("two meters on partitions of their own: one %d, many %d; want one interval of one", w.applyingOne, w.applyingMany)
	}
	w.countApplying([][]float64{{4, 2, 0}, {0, 0, 5}}, [][]float64{{4, 3, 0}, {0, 1, 5}}, true)
	if w.handovers != 1 || w.applyingMany != 0 {
		t.Errorf("two meters on partition 1 in one interval: handovers %d, many %d; want a handover", w.handovers, w.applyingMany)
	}
	w.countApplying([][]float64{{4, 3, 0}, {0, 1, 5}}, [][]float64{{5, 3, 0}, {0, 1, 6}}, true)
	if w.applyingMany != 0 || w.applyingOne != 2 {
		t.Errorf("after the handover, partitions of their own again: one %d, many %d", w.applyingOne, w.applyingMany)
	}
	w.countApplying([][]float64{{5, 3, 0}, {0, 1, 6}}, [][]float64{{5, 4, 0}, {0, 2, 6}}, true)
	w.countApplying([][]float64{{5, 4, 0}, {0, 2, 6}}, [][]float64{{5, 5, 0}, {0, 3, 6}}, true)
	if w.applyingMany != 1 {
		t.Errorf("two meters on partition 1 in two intervals running: many %d, want 1", w.applyingMany)
	}
	// The same, but a round read over more than maxSpread (a process
	// answering late): not one moment, so unsure, and not a failure.
	w.countApplying([][]float64{{5, 5, 0}, {0, 3, 6}}, [][]float64{{5, 5, 0}, {0, 3, 6}}, true) // idle
	w.countApplying([][]float64{{5, 5, 0}, {0, 3, 6}}, [][]float64{{5, 6, 0}, {0, 4, 6}}, true)
	w.countApplying([][]float64{{5, 6, 0}, {0, 4, 6}}, [][]float64{{5, 7, 0}, {0, 5, 6}}, false)
	if w.applyingMany != 1 || w.unsure != 1 {
		t.Errorf("two meters on partition 1 in two intervals running, the second read late: many %d (want still 1), unsure %d (want 1)", w.applyingMany, w.unsure)
	}
	if v, _ := w.verdict(true); !strings.Contains(v, "1 more whose samples took over") {
		t.Errorf("the verdict does not say what was unsure: %s", v)
	}
	if got := appliedSeriesOf(2); len(got) != 2 || got[1] != `allot_meter_partition_applied_total{partition="1"}` {
		t.Errorf("appliedSeriesOf(2) = %v", got)
	}
	page := "allot_meter_partition_applied_total{partition=\"0\"} 7\nallot_meter_partition_applied_total{partition=\"1\"} 9\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(page)) }))
	defer srv.Close()
	got, err := scrapeGauges(t.Context(), &http.Client{Timeout: time.Second}, srv.URL, appliedSeriesOf(2))
	if err != nil || got[appliedSeriesOf(2)[0]] != 7 || got[appliedSeriesOf(2)[1]] != 9 {
		t.Errorf("partition counts = %v, %v; want 7 and 9", got, err)
	}
}
