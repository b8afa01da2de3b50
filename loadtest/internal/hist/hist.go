// Package hist records latencies in HDR histograms (HdrHistogram's Go
// port) and keeps one histogram per second, for a latency-over-time chart.
// Values are recorded in microseconds, from 1 µs to 10 minutes, with three
// significant digits; a larger value is clamped to the maximum and
// counted in Clamped.
package hist

import (
	"sync"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

const (
	minMicros = 1
	maxMicros = int64(10 * time.Minute / time.Microsecond)
	sigDigits = 3
)

// Summary is a histogram reduced to the figures a report prints, in
// milliseconds.
type Summary struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

// Point is one second of a Recorder's timeline.
type Point struct {
	T     float64 `json:"t_s"` // seconds since the recorder's origin, at the start of the second
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

// Recorder is a histogram over a whole phase and one per second of it.
// It is safe for concurrent use.
type Recorder struct {
	origin time.Time

	mu      sync.Mutex
	all     *hdrhistogram.Histogram
	seconds []*hdrhistogram.Histogram
	clamped int64
}

// New returns a Recorder whose timeline starts at origin.
func New(origin time.Time) *Recorder {
	return &Recorder{origin: origin, all: newHist()}
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(minMicros, maxMicros, sigDigits)
}

// Record adds one latency d, observed at time at.
func (r *Recorder) Record(at time.Time, d time.Duration) {
	us := d.Microseconds()
	r.mu.Lock()
	defer r.mu.Unlock()
	if us < minMicros {
		us = minMicros
	}
	if us > maxMicros {
		us = maxMicros
		r.clamped++
	}
	_ = r.all.RecordValue(us) // in range: cannot fail
	sec := int(at.Sub(r.origin) / time.Second)
	if sec < 0 {
		sec = 0
	}
	for len(r.seconds) <= sec {
		r.seconds = append(r.seconds, nil)
	}
	h := r.seconds[sec]
	if h == nil {
		h = newHist()
		r.seconds[sec] = h
	}
	_ = h.RecordValue(us)
}

// Count is the number of values recorded.
func (r *Recorder) Count() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.all.TotalCount()
}

// Clamped is the number of values above the maximum, recorded as it.
func (r *Recorder) Clamped() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.clamped
}

// Summary reduces everything recorded so far.
func (r *Recorder) Summary() Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	return summarize(r.all)
}

// Recent summarizes the last n whole or partial seconds before now, for a
// progress line.
func (r *Recorder) Recent(now time.Time, n int) Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := newHist()
	last := int(now.Sub(r.origin) / time.Second)
	for s := max(0, last-n+1); s <= last && s < len(r.seconds); s++ {
		if r.seconds[s] != nil {
			h.Merge(r.seconds[s])
		}
	}
	return summarize(h)
}

// Timeline returns one point per second that has values, offset by
// shift seconds (the recorder's origin relative to the run's start).
func (r *Recorder) Timeline(shift float64) []Point {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Point
	for s, h := range r.seconds {
		if h == nil || h.TotalCount() == 0 {
			continue
		}
		out = append(out, Point{
			T:     shift + float64(s),
			Count: h.TotalCount(),
			P50:   ms(h.ValueAtQuantile(50)),
			P99:   ms(h.ValueAtQuantile(99)),
			Max:   ms(h.Max()),
		})
	}
	return out
}

// Origin is where the timeline starts.
func (r *Recorder) Origin() time.Time { return r.origin }

func summarize(h *hdrhistogram.Histogram) Summary {
	if h.TotalCount() == 0 {
		return Summary{}
	}
	return Summary{
		Count: h.TotalCount(),
		Mean:  h.Mean() / 1000,
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
	}
}

func ms(us int64) float64 { return float64(us) / 1000 }
