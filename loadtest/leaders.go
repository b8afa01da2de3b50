package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// With several stack processes (-stacks), some work must run in one
// replica at a time: the registry's reaper and the notifier's asynq
// scheduler, each under a pkg/mutex lock whose holder sets a gauge. The
// leader watch reads those gauges from every stack process's /metrics
// through the run and fails it if two replicas ever held one lock at
// once.

// The meters take turns too (meter.ordered, the default: one pulls the
// usage consumer at a time, so a uid's events apply in stream order):
// the watch also reads each process's count of applied events and counts
// the intervals in which more than one of them rose: in two intervals
// running, a failure; in one alone, a handover (the meter giving a pin up
// drains first, and the next may start within the same interval). With a partitioned
// usage stream (streams.partitions) each partition is its own turn: it
// reads the count of each partition and counts an interval in which two
// processes applied events of one partition.

// leaderGauges are the one-at-a-time locks' gauges.
var leaderGauges = []string{"allot_registry_reaper_leader", "allot_notifier_scheduler_leader"}

// appliedSeries is the meter's count of events applied.
const appliedSeries = `allot_meter_events_total{result="applied"}`

// appliedSeriesOf are the counts of applied events whose rises the watch
// compares across processes: the whole stream's, or each partition's.
func appliedSeriesOf(partitions int) []string {
	if partitions == 0 {
		return []string{appliedSeries}
	}
	out := make([]string, partitions)
	for p := range out {
		out[p] = fmt.Sprintf(`allot_meter_partition_applied_total{partition="%d"}`, p)
	}
	return out
}

// leaderWatch is what the watch saw.
type leaderWatch struct {
	mu      sync.Mutex
	samples int
	max     map[string]int // the most holders seen at once
	none    map[string]int // samples with no holder (a hand-over)
	errs    int            // samples a process did not answer
	// Intervals between two answered samples in which one meter applied
	// events (of each partition), in which more than one did (of one
	// partition) in this interval and the one before, and handovers: one
	// interval alone in which two did, as when a meter drains its last
	// chunk of a partition and gives the pin up, and the next applies
	// the partition's following events within the same 250 ms.
	applyingOne, applyingMany, handovers int
	// sharedLast marks the partitions two meters applied in the
	// interval before.
	sharedLast map[int]bool
	// exactLast says the round before was one moment (maxSpread);
	// unsure counts intervals that would count as many but whose rounds
	// were not.
	exactLast bool
	unsure    int
}

// watchLeaders samples every stack process's gauges every interval
// until ctx ends.
func (h *harness) watchLeaders(ctx context.Context, interval time.Duration, partitions int) *leaderWatch {
	w := &leaderWatch{max: map[string]int{}, none: map[string]int{}}
	var urls []string
	for _, c := range append([]*child{h.t.stack}, h.t.more...) {
		if c != nil && c.ready.HTTPURL != "" {
			urls = append(urls, c.metricsURL())
		}
	}
	client := &http.Client{Timeout: interval}
	appliedOf := appliedSeriesOf(partitions)
	series := append(slices.Clone(appliedOf), leaderGauges...)
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		var before [][]float64 // each process's applied counts at the last answered sample
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			// All at once, so the samples are of one moment: read one
			// after another, a meter read early and one read late could
			// show a handover's two sides in the same two intervals.
			held := map[string]int{}
			applied := make([][]float64, len(urls))
			vals := make([]map[string]float64, len(urls))
			errs := make([]error, len(urls))
			began := time.Now()
			var wg sync.WaitGroup
			for i, u := range urls {
				wg.Go(func() { vals[i], errs[i] = scrapeGauges(ctx, client, u, series) })
			}
			wg.Wait()
			spread := time.Since(began)
			failed := slices.ContainsFunc(errs, func(err error) bool { return err != nil })
			for i := range urls {
				if failed {
					break
				}
				for _, name := range leaderGauges {
					held[name] += int(vals[i][name])
				}
				for _, name := range appliedOf {
					applied[i] = append(applied[i], vals[i][name])
				}
			}
			w.mu.Lock()
			if failed {
				w.errs++
				before = nil
			} else {
				w.samples++
				for _, name := range leaderGauges {
					w.max[name] = max(w.max[name], held[name])
					if held[name] == 0 {
						w.none[name]++
					}
				}
				w.countApplying(before, applied, spread <= maxSpread)
				before = applied
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// maxSpread is the longest a round of samples may take and still be
// taken as one moment. A process capped in CPU (-stack-cpu) may answer a
// throttle period late; a meter read late can then show events it
// applied before a handover in the interval after it.
const maxSpread = 25 * time.Millisecond

// countApplying counts the interval from before to now (each process's
// counts: of the stream, or of each partition) by how many meters
// applied events of one partition in it: more than one of any counts the
// interval as many, unless this round or the one before was not one
// moment (exact false: its samples took longer than maxSpread), when it
// counts as unsure; w.mu is held.
func (w *leaderWatch) countApplying(before, now [][]float64, exact bool) {
	if before == nil {
		w.sharedLast, w.exactLast = nil, exact
		return
	}
	exactLast := w.exactLast
	w.exactLast = exact
	shared := map[int]bool{}
	any, twice := false, false
	for p := range now[0] {
		rose := 0
		for i := range now {
			if now[i][p] > before[i][p] {
				rose++
			}
		}
		any = any || rose > 0
		if rose > 1 {
			shared[p] = true
			twice = twice || w.sharedLast[p]
		}
	}
	switch {
	case twice && !(exact && exactLast):
		w.unsure++
	case twice:
		w.applyingMany++
	case len(shared) > 0:
		w.handovers++
	case any:
		w.applyingOne++
	}
	w.sharedLast = shared
}

// verdict says what the watch saw, and whether a lock ever had two
// holders, or (ordered) two meters applied events in one interval.
func (w *leaderWatch) verdict(ordered bool) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ok := true
	var parts []string
	for _, name := range leaderGauges {
		parts = append(parts, fmt.Sprintf("%s: at most %d holder(s) at once, none in %d", name, w.max[name], w.none[name]))
		ok = ok && w.max[name] <= 1
	}
	parts = append(parts, fmt.Sprintf("meters applying events: one in %d intervals, two in one interval alone (a handover) in %d, more than one in two intervals running in %d", w.applyingOne, w.handovers, w.applyingMany))
	if w.unsure > 0 {
		parts = append(parts, fmt.Sprintf("and in %d more whose samples took over %v to read (a process answering late; not counted)", w.unsure, maxSpread))
	}
	if ordered {
		ok = ok && w.applyingMany == 0
	}
	return fmt.Sprintf("one-at-a-time work over %d samples of every stack process (%d unanswered): %s", w.samples, w.errs, strings.Join(parts, "; ")), ok
}

// scrapeGauges reads the named unlabelled gauges from a Prometheus text
// page.
func scrapeGauges(ctx context.Context, c *http.Client, url string, names []string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, n := range names {
			if rest, ok := strings.CutPrefix(line, n+" "); ok {
				if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
					out[n] += v
				}
			}
		}
	}
	return out, sc.Err()
}
