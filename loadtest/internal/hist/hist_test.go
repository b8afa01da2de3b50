package hist

import (
	"math"
	"testing"
	"time"
)

func TestSummaryQuantiles(t *testing.T) {
	origin := time.Unix(1000, 0)
	r := New(origin)
	// 1..1000 ms, one each, spread over 10 seconds.
	for i := 1; i <= 1000; i++ {
		r.Record(origin.Add(time.Duration(i%10)*time.Second), time.Duration(i)*time.Millisecond)
	}
	s := r.Summary()
	if s.Count != 1000 {
		t.Fatalf("count = %d, want 1000", s.Count)
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"p50", s.P50, 500}, {"p90", s.P90, 900}, {"p99", s.P99, 990}, {"p99.9", s.P999, 999}, {"max", s.Max, 1000}, {"mean", s.Mean, 500.5},
	} {
		// Three significant digits: within 0.1%.
		if math.Abs(c.got-c.want) > c.want*0.001+0.001 {
			t.Errorf("%s = %v ms, want %v ms", c.name, c.got, c.want)
		}
	}
	tl := r.Timeline(2)
	if len(tl) != 10 {
		t.Fatalf("timeline has %d points, want 10", len(tl))
	}
	if tl[0].T != 2 || tl[9].T != 11 {
		t.Errorf("timeline spans %v..%v, want 2..11", tl[0].T, tl[9].T)
	}
	var n int64
	for _, p := range tl {
		n += p.Count
	}
	if n != 1000 {
		t.Errorf("timeline counts %d values, want 1000", n)
	}
}

func TestClampAndEmpty(t *testing.T) {
	origin := time.Now()
	r := New(origin)
	if s := r.Summary(); s != (Summary{}) {
		t.Errorf("empty summary = %+v, want zero", s)
	}
	r.Record(origin.Add(-time.Second), time.Hour) // before the origin, above the range
	r.Record(origin, 0)
	if r.Clamped() != 1 {
		t.Errorf("clamped = %d, want 1", r.Clamped())
	}
	s := r.Summary()
	if s.Max < 599_000 || s.Max > 601_000 {
		t.Errorf("max = %v ms, want about 10 minutes", s.Max)
	}
	if got := r.Recent(origin, 5).Count; got != 2 {
		t.Errorf("recent count = %d, want 2", got)
	}
}
