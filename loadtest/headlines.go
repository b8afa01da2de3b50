package main

import (
	"fmt"
	"strings"

	"github.com/allot/allot/loadtest/internal/hist"
	"github.com/allot/allot/loadtest/internal/report"
)

// headlines picks the figures that matter from the phases, each beside
// its baseline from the same run, with the targets.
func headlines(phases []report.Phase) []report.Headline {
	by := map[string]report.Phase{}
	for _, p := range phases {
		by[p.Name] = p
	}
	var out []report.Headline
	rate := func(name, unit, baseName, baseWhat string, target func(v, ratio float64) (string, bool)) {
		p, ok := by[name]
		if !ok || p.Throughput == 0 {
			return
		}
		h := report.Headline{Name: name + " " + unitWord(unit), Value: p.Throughput, Unit: unit}
		if b, ok := by[baseName]; ok && b.Throughput > 0 {
			h.Baseline, h.BaseVal, h.Ratio = baseWhat, b.Throughput, p.Throughput/b.Throughput
		}
		if target != nil {
			t, met := target(h.Value, h.Ratio)
			h.Target, h.Met = t, &met
		}
		out = append(out, h)
	}
	latency := func(name, q, baseName, baseWhat string, pick func(p report.Phase) float64, target func(v float64) (string, bool)) {
		p, ok := by[name]
		if !ok {
			return
		}
		v := pick(p)
		if v == 0 {
			return
		}
		h := report.Headline{Name: name + " " + q, Value: v, Unit: "ms"}
		if b, ok := by[baseName]; ok && pick(b) > 0 {
			h.Baseline, h.BaseVal, h.Ratio = baseWhat, pick(b), pick(b)/v
		}
		if target != nil {
			t, met := target(v)
			h.Target, h.Met = t, &met
		}
		out = append(out, h)
	}
	lat := func(f func(s reportSummary) float64) func(p report.Phase) float64 {
		return func(p report.Phase) float64 {
			if p.Latency == nil {
				return 0
			}
			return f(*p.Latency)
		}
	}
	lag := func(f func(s reportSummary) float64) func(p report.Phase) float64 {
		return func(p report.Phase) float64 {
			if p.Lag == nil {
				return 0
			}
			return f(*p.Lag)
		}
	}
	p50 := func(s reportSummary) float64 { return s.P50 }
	p99 := func(s reportSummary) float64 { return s.P99 }
	p999 := func(s reportSummary) float64 { return s.P999 }
	mx := func(s reportSummary) float64 { return s.Max }

	rate("publish", "ev/s", "publish.raw", "raw nats.go async publish with ids", nil)
	rate("ingest.max", "ev/s", "ingest.raw.max", "raw fetch+decode+INCRBY+EXPIRE+ack loop", func(_, r float64) (string, bool) {
		return ">= 1.0x the raw loop", r >= 1.0
	})
	perEvent := func(p report.Phase) float64 {
		if p.Counts["events"] == 0 {
			return 0
		}
		return float64(p.Counts["redis_commands"]) / float64(p.Counts["events"])
	}
	if p, ok := by["ingest.max"]; ok && perEvent(p) > 0 {
		h := report.Headline{Name: "ingest.max redis commands per event", Value: perEvent(p), Unit: "cmd/ev"}
		if b, ok := by["ingest.raw.max"]; ok && perEvent(b) > 0 {
			h.Baseline, h.BaseVal, h.Ratio = "the raw loop", perEvent(b), perEvent(b)/perEvent(p)
		}
		out = append(out, h)
	}
	if p, ok := by["ingest.rate"]; ok {
		at := fmt.Sprintf(" (at %s ev/s)", report.Num(p.Rate))
		base := "raw loop at the same rate"
		latency("ingest.rate", "lag p50"+at, "ingest.raw.rate", base, lag(p50), nil)
		latency("ingest.rate", "lag p99"+at, "ingest.raw.rate", base, lag(p99), func(v float64) (string, bool) { return "<= 250 ms", v <= 250 })
		latency("ingest.rate", "lag max"+at, "ingest.raw.rate", base, lag(mx), nil)
	}
	raw := "raw request/reply, one Redis GET"
	for _, name := range []string{"credit", "authorize", "ratelimit", "registry"} {
		var rt func(v, r float64) (string, bool)
		var lt func(v float64) (string, bool)
		if name == "credit" {
			rt = func(v, _ float64) (string, bool) { return ">= 30k req/s", v >= 30000 }
			lt = func(v float64) (string, bool) { return "<= 2 ms", v <= 2 }
		}
		rate(name, "req/s", "request.raw", raw, rt)
		latency(name, "p50", "request.raw", raw, lat(p50), nil)
		latency(name, "p99", "request.raw", raw, lat(p99), lt)
		latency(name, "p99.9", "request.raw", raw, lat(p999), nil)
	}
	bare := "bare request/reply, no work"
	for _, name := range []string{"ratelimit.batched", "credit.batched"} {
		rate(name, "req/s", "request.bare", bare, func(_, r float64) (string, bool) { return ">= 1.5x the bare responder", r >= 1.5 })
		latency(name, "p50", "request.bare", bare, lat(p50), nil)
		latency(name, "p99", "request.bare", bare, lat(p99), func(v float64) (string, bool) { return "<= 2 ms", v <= 2 })
		alone := strings.TrimSuffix(name, ".batched")
		rate(name, "req/s", alone, alone+" alone, same run", nil)
		rate(name, "req/s", "request.bare.batched", "the floor of batching, same run", nil)
	}
	rate("request.bare.batched", "req/s", "request.bare", bare, nil)
	latency("request.bare.batched", "p99", "request.bare", bare, lat(p99), nil)
	return append(out, grpcHeadlines(by)...)
}

type reportSummary = hist.Summary

func unitWord(unit string) string {
	if unit == "ev/s" {
		return "rate"
	}
	return "throughput"
}
