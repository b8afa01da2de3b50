package report

import (
	"fmt"
	"sort"
	"strings"
)

// Markdown renders the report for people: the headlines with their
// baselines and ratios first, then every phase, the exactness check and
// the resources.
func Markdown(r *Report) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# allot load test %s\n\n", r.Run.ID)
	if !r.Complete {
		w("**INCOMPLETE RUN** — these figures are partial:\n\n")
		for _, why := range r.Incomplete {
			w("- %s\n", why)
		}
		w("\n")
	}
	w("- target: %s\n", r.Run.Target)
	if r.Run.Profile != "" {
		w("- profile: %s\n", r.Run.Profile)
	}
	w("- scenarios: %s\n", strings.Join(r.Run.Scenarios, ", "))
	w("- started %s, ran %.1f s\n", r.Run.Started.UTC().Format("2006-01-02 15:04:05Z"), r.Run.Duration)
	w("- machine: %s\n", r.Run.Machine)
	if len(r.Run.Settings) > 0 {
		keys := make([]string, 0, len(r.Run.Settings))
		for k := range r.Run.Settings {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + r.Run.Settings[k]
		}
		w("- settings: %s\n", strings.Join(parts, " "))
	}
	w("\n## Headlines\n\n")
	if len(r.Headlines) == 0 {
		w("No headline figure: no phase finished.\n")
	} else {
		w("| figure | value | baseline (same run) | ratio | target |\n| --- | --- | --- | --- | --- |\n")
		for _, h := range r.Headlines {
			base, ratio := "—", "—"
			if h.Baseline != "" {
				base = fmt.Sprintf("%s %s (%s)", Num(h.BaseVal), h.Unit, h.Baseline)
			}
			if h.Ratio != 0 {
				ratio = fmt.Sprintf("%.2fx", h.Ratio)
			}
			target := "—"
			if h.Target != "" {
				target = h.Target
				if h.Met != nil {
					if *h.Met {
						target += ": met"
					} else {
						target += ": **not met**"
					}
				}
			}
			w("| %s | %s %s | %s | %s | %s |\n", h.Name, Num(h.Value), h.Unit, base, ratio, target)
		}
	}
	w("\n## Exactness\n\n")
	e := r.Exactness
	switch {
	case !e.Checked:
		w("Not checked: %s\n", e.Note)
	default:
		verdict := "**passed**: 0 lost, 0 double-counted"
		if !e.OK {
			verdict = fmt.Sprintf("**FAILED**: %s lost, %s double-counted", Num(e.Lost), Num(e.Double))
		}
		w("%s. %d good events acknowledged by the stream, %d duplicate copies, %d bad events sent, %d dead letters found, %d sends of unknown fate; %d counters and grants compared.\n",
			verdict, e.Events, e.Duplicates, e.Bad, e.Dead, e.Uncertain, e.Keys)
		if e.Note != "" {
			w("\n%s\n", e.Note)
		}
		if len(e.Differences) > 0 {
			w("\nFirst differences:\n\n")
			for _, d := range e.Differences {
				w("- %s\n", d)
			}
		}
	}
	w("\n## Phases\n\n")
	w("| phase | what | load | s | ops | per s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | lag p50 / p99 / max ms | errors |\n")
	w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, p := range r.Phases {
		load := fmt.Sprintf("closed, %d", p.Concurrency)
		if p.Mode == "open" {
			load = fmt.Sprintf("open, %s/s", Num(p.Rate))
		}
		lat := "| — | — | — | — | —"
		if p.Latency != nil && p.Latency.Count > 0 {
			l := p.Latency
			lat = fmt.Sprintf("| %s | %s | %s | %s | %s", Num(l.P50), Num(l.P90), Num(l.P99), Num(l.P999), Num(l.Max))
		}
		lag := "—"
		if p.Lag != nil && p.Lag.Count > 0 {
			lag = fmt.Sprintf("%s / %s / %s (%d samples)", Num(p.Lag.P50), Num(p.Lag.P99), Num(p.Lag.Max), p.Lag.Count)
		}
		name := p.Name
		if p.Incomplete != "" {
			name += " (incomplete)"
		}
		w("| %s | %s | %s | %.1f | %d | %s %s | %s | %s |\n", name, p.What, load, p.Seconds, p.Ops, Num(p.Throughput), lat, lag, kinds(p.Errors))
	}
	var outcomes, resources, incomplete bool
	for _, p := range r.Phases {
		outcomes = outcomes || len(p.Counts) > 0
		resources = resources || len(p.Resources) > 0
		incomplete = incomplete || p.Incomplete != ""
	}
	if outcomes {
		w("\nOutcomes:\n\n")
		for _, p := range r.Phases {
			if len(p.Counts) > 0 {
				w("- %s: %s\n", p.Name, kinds(p.Counts))
			}
		}
	}
	if incomplete {
		w("\nIncomplete phases:\n\n")
		for _, p := range r.Phases {
			if p.Incomplete != "" {
				w("- %s: %s\n", p.Name, p.Incomplete)
			}
		}
	}
	if resources {
		w("\n## Resources\n\n| phase | process | CPU (%% of one core) | RSS MiB | Redis used_memory MiB |\n| --- | --- | --- | --- | --- |\n")
		for _, p := range r.Phases {
			for _, res := range p.Resources {
				cpu, rss, mem := "—", "—", "—"
				if res.CPUPercent > 0 {
					cpu = fmt.Sprintf("%.0f", res.CPUPercent)
				}
				if res.RSSMiB > 0 {
					rss = fmt.Sprintf("%.0f", res.RSSMiB)
				}
				if res.MemMiB > 0 {
					mem = fmt.Sprintf("%.1f", res.MemMiB)
				}
				what := res.What
				if res.Note != "" {
					what += " (" + res.Note + ")"
				}
				w("| %s | %s | %s | %s | %s |\n", p.Name, what, cpu, rss, mem)
			}
		}
	}
	if len(r.Notes) > 0 {
		w("\n## Notes\n\n")
		for _, n := range r.Notes {
			w("- %s\n", n)
		}
	}
	w("\nLatency over time: [latency.svg](latency.svg). Raw figures: [report.json](report.json).\n")
	return b.String()
}

// kinds prints a count map as "a 3, b 1", largest first, or "0".
func kinds(m map[string]int64) string {
	if len(m) == 0 {
		return "0"
	}
	type kv struct {
		k string
		v int64
	}
	var list []kv
	for k, v := range m {
		list = append(list, kv{k, v})
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].v != list[j].v {
			return list[i].v > list[j].v
		}
		return list[i].k < list[j].k
	})
	parts := make([]string, len(list))
	for i, e := range list {
		parts[i] = fmt.Sprintf("%s %d", e.k, e.v)
	}
	return strings.Join(parts, ", ")
}

// Num prints a figure with sensible precision: 23.4k, 812, 3.52, 0.041.
func Num(v float64) string {
	a := v
	if a < 0 {
		a = -a
	}
	switch {
	case a >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	case a == 0:
		return "0"
	default:
		return fmt.Sprintf("%.3f", v)
	}
}
