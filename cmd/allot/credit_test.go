package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
)

// A credit whose used figure may be low (counted_since) says so under
// the table; a whole one does not.
func TestPrintCreditsNotesCountedSince(t *testing.T) {
	since := time.Now().Add(-time.Hour).Truncate(time.Second).UTC()
	var out bytes.Buffer
	if err := printCredits(&out, []events.Credit{
		{UID: "u-1", Metric: "photo_daily_total", Limit: 200, Used: 4, Remaining: 196, Period: "day", CountedSince: since},
		{UID: "u-1", Metric: "email_daily_total", Limit: 10, Period: "day"},
	}); err != nil {
		t.Fatal(err)
	}
	want := "note: photo_daily_total counts usage only since " + since.Format(time.RFC3339)
	if !strings.Contains(out.String(), want) || strings.Count(out.String(), "note:") != 1 {
		t.Errorf("output:\n%s\nwant one note %q", out.String(), want)
	}
}
