package main

import (
	"net/http"
	"net/http/httptest"
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
	if v, ok := w.verdict(); ok {
		t.Errorf("two holders at once passed: %s", v)
	}
	w.max["allot_notifier_scheduler_leader"] = 1
	if v, ok := w.verdict(); !ok {
		t.Errorf("one holder each failed: %s", v)
	}
}
