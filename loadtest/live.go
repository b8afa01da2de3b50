package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allot/allot/loadtest/internal/hist"
	"github.com/allot/allot/loadtest/internal/report"
	"github.com/redis/go-redis/v9"
)

// liveStat is what the progress line shows of one running phase.
type liveStat struct {
	name    string
	started time.Time
	ops     atomic.Int64
	errs    atomic.Int64
	lat     *hist.Recorder
	lag     *hist.Recorder
	backlog func() uint64

	lastOps int64
	lastAt  time.Time
}

type liveSet struct {
	mu     sync.Mutex
	phases []*liveStat
}

func (l *liveSet) add(name string, lat, lag *hist.Recorder, backlog func() uint64) *liveStat {
	s := &liveStat{name: name, started: time.Now(), lat: lat, lag: lag, backlog: backlog, lastAt: time.Now()}
	l.mu.Lock()
	l.phases = append(l.phases, s)
	l.mu.Unlock()
	return s
}

func (l *liveSet) remove(s *liveStat) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, p := range l.phases {
		if p == s {
			l.phases = append(l.phases[:i], l.phases[i+1:]...)
			return
		}
	}
}

// line is the progress line: elapsed, then per running phase its rate
// over the last interval, latency or lag p99 over the last seconds, and
// errors.
func (l *liveSet) line(elapsed, total time.Duration) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "[%5.1fs/%.0fs]", elapsed.Seconds(), total.Seconds())
	if len(l.phases) == 0 {
		b.WriteString(" between phases")
	}
	now := time.Now()
	for _, p := range l.phases {
		ops := p.ops.Load()
		rate := float64(ops-p.lastOps) / now.Sub(p.lastAt).Seconds()
		p.lastOps, p.lastAt = ops, now
		fmt.Fprintf(&b, "  %s %s/s", p.name, report.Num(rate))
		if p.lag != nil {
			if s := p.lag.Recent(now, 3); s.Count > 0 {
				fmt.Fprintf(&b, " lag p99 %sms", report.Num(s.P99))
			}
		} else if p.lat != nil {
			if s := p.lat.Recent(now, 3); s.Count > 0 {
				fmt.Fprintf(&b, " p99 %sms", report.Num(s.P99))
			}
		}
		if p.backlog != nil {
			fmt.Fprintf(&b, " backlog %d", p.backlog())
		}
		fmt.Fprintf(&b, " errors %d", p.errs.Load())
	}
	return b.String()
}

// progress prints the line every interval until ctx ends.
func (h *harness) progress(ctx context.Context, w io.Writer, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			fmt.Fprintln(w, h.live.line(time.Since(h.start), h.o.Duration))
		}
	}
}

// procSample is a process's CPU time and resident memory at one moment.
type procSample struct {
	at    time.Time
	ticks uint64 // utime + stime, in clock ticks
	rssKB uint64
	ok    bool
}

const clockTicks = 100 // USER_HZ on Linux

func sampleProc(pid int) procSample {
	s := procSample{at: time.Now()}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return s
	}
	// Fields after the command, which is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return s
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return s
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	s.ticks = ut + st
	status, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return s
	}
	defer status.Close()
	sc := bufio.NewScanner(status)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			s.rssKB, _ = strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	s.ok = true
	return s
}

type resStart struct {
	procs map[string]procSample
}

func (h *harness) procs() map[string]int {
	m := map[string]int{"harness (apps and clients)": os.Getpid()}
	for i, c := range h.t.more {
		m[fmt.Sprintf("stack process %d", i+2)] = c.pid()
	}
	if h.t.stack != nil {
		m["stack process"] = h.t.stack.pid()
	}
	if h.t.baseline != nil {
		m["baseline process"] = h.t.baseline.pid()
	}
	return m
}

func (h *harness) sampleStart() resStart {
	r := resStart{procs: map[string]procSample{}}
	for name, pid := range h.procs() {
		r.procs[name] = sampleProc(pid)
	}
	return r
}

// sampleEnd reports each process's CPU over the phase and RSS at its
// end, and Redis's used_memory.
func (h *harness) sampleEnd(r resStart) []report.Resource {
	var out []report.Resource
	for _, name := range []string{"stack process", "baseline process", "harness (apps and clients)"} {
		a, ok := r.procs[name]
		if !ok || !a.ok {
			continue
		}
		b := sampleProc(h.procs()[name])
		if !b.ok {
			continue
		}
		secs := b.at.Sub(a.at).Seconds()
		cpu := 0.0
		if secs > 0 {
			cpu = float64(b.ticks-a.ticks) / clockTicks / secs * 100
		}
		out = append(out, report.Resource{What: name, CPUPercent: cpu, RSSMiB: float64(b.rssKB) / 1024})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if mem, err := redisMemory(ctx, h.t.rdb); err == nil && mem > 0 {
		out = append(out, report.Resource{What: "redis", MemMiB: float64(mem) / (1 << 20)})
	} else if h.t.kind == targetInProcess && h.o.RedisURL == "" && len(h.o.RedisAddrs) == 0 {
		out = append(out, report.Resource{What: "redis", Note: "miniredis, in the stack process: no INFO memory"})
	}
	return out
}

// redisMemory is INFO memory's used_memory (a Cluster's first node's).
func redisMemory(ctx context.Context, rdb redis.UniversalClient) (uint64, error) {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			return strconv.ParseUint(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no used_memory in INFO memory")
}
