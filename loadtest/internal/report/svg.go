package report

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Chart geometry.
const (
	svgW, svgH             = 960, 480
	padL, padR, padT, padB = 70, 230, 40, 50
)

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"}

// SVG draws every series of every phase as its p99 per second over the
// run's time, on a logarithmic millisecond axis, with phases shaded and
// named. It needs no plotting library: the chart is a few lines and paths.
func SVG(r *Report) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", svgW, svgH, svgW, svgH)
	w(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	title := "allot load test " + r.Run.ID + ": p99 per second (ms, log scale)"
	if !r.Complete {
		title += " — INCOMPLETE"
	}
	w(`<text x="%d" y="22" font-size="15">%s</text>`+"\n", padL, html.EscapeString(title))

	// Axes' ranges.
	tMax := r.Run.Duration
	lo, hi := math.Inf(1), math.Inf(-1)
	n := 0
	for _, p := range r.Phases {
		tMax = math.Max(tMax, p.Start+p.Seconds)
		for _, s := range p.Series {
			for _, pt := range s.Points {
				tMax = math.Max(tMax, pt.T+1)
				if pt.P99 > 0 {
					lo, hi = math.Min(lo, pt.P99), math.Max(hi, pt.P99)
					n++
				}
			}
		}
	}
	if tMax <= 0 {
		tMax = 1
	}
	if n == 0 {
		lo, hi = 0.1, 10
	}
	decLo := math.Floor(math.Log10(math.Max(lo, 0.001)))
	decHi := math.Ceil(math.Log10(math.Max(hi, 0.001)))
	if decHi <= decLo {
		decHi = decLo + 1
	}
	plotW, plotH := float64(svgW-padL-padR), float64(svgH-padT-padB)
	x := func(t float64) float64 { return padL + t/tMax*plotW }
	y := func(v float64) float64 {
		lv := math.Log10(math.Max(v, math.Pow(10, decLo)))
		return padT + plotH - (lv-decLo)/(decHi-decLo)*plotH
	}

	// Phases as shaded bands, named at the bottom. Phases that run at
	// once (mixed.*) share one band and one label: their common prefix.
	for i := 0; i < len(r.Phases); i++ {
		p := r.Phases[i]
		if p.Seconds <= 0 {
			continue
		}
		name, end := p.Name, p.Start+p.Seconds
		for i+1 < len(r.Phases) && r.Phases[i+1].Start == p.Start {
			i++
			name = commonPrefix(name, r.Phases[i].Name)
			end = math.Max(end, r.Phases[i].Start+r.Phases[i].Seconds)
		}
		name = strings.TrimRight(name, ".")
		fill := "#f4f4f4"
		if i%2 == 1 {
			fill = "#e9eef5"
		}
		w(`<rect x="%.1f" y="%d" width="%.1f" height="%.0f" fill="%s"/>`+"\n", x(p.Start), padT, x(end)-x(p.Start), plotH, fill)
		w(`<text x="%.1f" y="%.0f" font-size="9" transform="rotate(-30 %.1f %.0f)" text-anchor="end">%s</text>`+"\n",
			x((p.Start+end)/2), padT+plotH+14, x((p.Start+end)/2), padT+plotH+14, html.EscapeString(name))
	}
	// Grid and y labels, one per decade.
	for d := decLo; d <= decHi; d++ {
		v := math.Pow(10, d)
		w(`<line x1="%d" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#bbb" stroke-dasharray="3,3"/>`+"\n", padL, padL+plotW, y(v), y(v))
		w(`<text x="%d" y="%.1f" text-anchor="end">%s ms</text>`+"\n", padL-6, y(v)+4, Num(v))
	}
	// x axis in seconds.
	step := niceStep(tMax / 8)
	for t := 0.0; t <= tMax+1e-9; t += step {
		w(`<text x="%.1f" y="%d" text-anchor="middle">%gs</text>`+"\n", x(t), svgH-8, t)
	}
	w(`<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", padL, padT, plotW, plotH)

	// One path per series; a series name seen in several phases keeps its colour.
	colours := map[string]string{}
	var legend []string
	for _, p := range r.Phases {
		for _, s := range p.Series {
			c, ok := colours[s.Name]
			if !ok {
				c = palette[len(colours)%len(palette)]
				colours[s.Name] = c
				legend = append(legend, s.Name)
			}
			var d strings.Builder
			for i, pt := range s.Points {
				cmd := "L"
				if i == 0 || pt.T-s.Points[i-1].T > 1.5 {
					cmd = "M"
				}
				fmt.Fprintf(&d, "%s%.1f,%.1f ", cmd, x(pt.T+0.5), y(pt.P99))
			}
			if d.Len() > 0 {
				w(`<path d="%s" fill="none" stroke="%s" stroke-width="1.8"/>`+"\n", strings.TrimSpace(d.String()), c)
			}
		}
	}
	for i, name := range legend {
		ly := padT + 10 + i*18
		w(`<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", svgW-padR+15, svgW-padR+35, ly, ly, colours[name])
		w(`<text x="%d" y="%d">%s</text>`+"\n", svgW-padR+40, ly+4, html.EscapeString(name))
	}
	if len(legend) == 0 {
		w(`<text x="%.0f" y="%.0f" text-anchor="middle">no latency was recorded</text>`+"\n", padL+plotW/2, padT+plotH/2)
	}
	w("</svg>\n")
	return b.String()
}

// niceStep rounds a raw step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// commonPrefix is the longest prefix a and b share.
func commonPrefix(a, b string) string {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return a[:n]
}
