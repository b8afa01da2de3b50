package ratelimit

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// redisFactory opens clients to one Redis (each worker has its own) and
// returns the key prefix to use.
type redisFactory func(t *testing.T) (open func() redis.UniversalClient, prefix string)

func miniFactory(t *testing.T) (func() redis.UniversalClient, string) {
	mr := miniredis.RunT(t)
	return func() redis.UniversalClient {
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
		t.Cleanup(func() { _ = rdb.Close() })
		return rdb
	}, "allot:"
}

// slidingBound is the most a sliding limit admits within any span of one
// interval, as proved in the package doc: L + floor(L*(I-2)/I), I in ms.
func slidingBound(limit int64, interval time.Duration) int64 {
	i := interval.Milliseconds()
	return limit + limit*(i-2)/i
}

// maxInSpan returns the most of the sorted times inside any [s, s+span).
func maxInSpan(times []time.Time, span time.Duration) int64 {
	best, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= span {
			j++
		}
		best = max(best, i-j+1)
	}
	return int64(best)
}

// perWindow counts times per epoch-aligned window of d.
func perWindow(times []time.Time, d time.Duration) map[int64]int64 {
	out := map[int64]int64{}
	for _, t := range times {
		out[t.UnixMilli()/d.Milliseconds()]++
	}
	return out
}

// simulation is three workers (rate limiters, each with its own Redis
// connection) deciding for one uid on a shared Redis. Each worker's local
// clock is off by up to 2s; the decisions run on the one Redis clock.
type simulation struct {
	redis   *fakeClock // Redis's clock: the script's time
	workers []*Limiter
	mu      sync.Mutex
	got     map[string][]time.Time // service -> Redis times of admitted calls
}

var skews = []time.Duration{-2 * time.Second, 0, 2 * time.Second}

func newSimulation(t *testing.T, factory redisFactory, cfg Config, start time.Time, workersPassTheirOwnClock, oneScriptPerCheck bool) *simulation {
	t.Helper()
	open, prefix := factory(t)
	cfg.Redis.KeyPrefix = prefix
	sim := &simulation{redis: &fakeClock{t: start}, got: map[string][]time.Time{}}
	for _, skew := range skews {
		local := func() time.Time { return sim.redis.Now().Add(skew) }
		now := sim.redis.Now
		if workersPassTheirOwnClock {
			now = local // what the design forbids, to show why
		}
		w, err := New(t.Context(), cfg, Deps{Redis: open(), Now: now, Clock: local, Log: testLog(), oneScriptPerCheck: oneScriptPerCheck})
		if err != nil {
			t.Fatal(err)
		}
		sim.workers = append(sim.workers, w)
	}
	return sim
}

// round has every worker send calls calls of svc at the current time,
// concurrently, and records the admitted ones.
func (s *simulation) round(t *testing.T, svc string, calls [3]int) {
	t.Helper()
	var wg sync.WaitGroup
	at := s.redis.Now()
	for i, w := range s.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range calls[i] {
				r, err := w.Check(t.Context(), "u-1", events.CheckRequest{Service: svc})
				if err != nil {
					t.Errorf("worker %d: %v", i, err)
					return
				}
				if r.Allowed {
					s.mu.Lock()
					s.got[svc] = append(s.got[svc], at)
					s.mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
}

// run drives steady random traffic at about 4x the limit plus a burst of
// 2x the limit from every worker around each window boundary, over
// windows intervals.
func (s *simulation) run(t *testing.T, svc string, limit int64, interval time.Duration, windows int, rng *rand.Rand) {
	t.Helper()
	start := s.redis.Now()
	step := interval / 1000
	burstAt := map[time.Duration]bool{}
	for k := 1; k <= windows; k++ {
		for _, off := range []time.Duration{-3 * step, -step, 0, step, 3 * step} {
			burstAt[time.Duration(k)*interval+off] = true
		}
	}
	// Each worker calls with this chance per step: 4x the limit in all.
	p := float64(4*limit) / 1000 / 3
	for at := time.Duration(0); at < time.Duration(windows)*interval; at += step {
		s.redis.Set(start.Add(at))
		var calls [3]int
		for i := range calls {
			if rng.Float64() < p {
				calls[i] = 1
			}
			if burstAt[at] {
				calls[i] += int(2 * limit / 5)
			}
		}
		if calls != [3]int{} {
			s.round(t, svc, calls)
		}
	}
	sort.Slice(s.got[svc], func(i, j int) bool { return s.got[svc][i].Before(s.got[svc][j]) })
}

func accuracyConfig(limit int64, interval time.Duration, cache bool) Config {
	cfg := DefaultConfig()
	cfg.Instance = "test"
	cfg.RateLimit.Timeout = 2 * time.Second // a loaded CI machine must not fail a decision
	cfg.RateLimit.Services = map[string]Service{
		"fixed":   {Limit: &limit, Interval: interval, Mode: ModeFixed, Cache: cache},
		"sliding": {Limit: &limit, Interval: interval, Mode: ModeSliding, Cache: cache},
	}
	return cfg
}

// testAccuracy: three workers with clocks 2s apart, steady traffic and
// boundary bursts. fixed admits exactly the limit in every epoch window
// (it is oversubscribed in each); sliding never passes its proven bound
// in any span of one interval, and the boundary bursts do not pass 2x.
// It runs with each batch one check_many.lua call (a single Redis node)
// and with one check.lua call per check (as on a Cluster).
func testAccuracy(t *testing.T, factory redisFactory) {
	t.Run("OneScriptPerBatch", func(t *testing.T) { testAccuracyOf(t, factory, false) })
	t.Run("OneScriptPerCheck", func(t *testing.T) { testAccuracyOf(t, factory, true) })
}

func testAccuracyOf(t *testing.T, factory redisFactory, oneScriptPerCheck bool) {
	for _, tc := range []struct {
		limit    int64
		interval time.Duration
		cache    bool
	}{
		{20, time.Second, false},
		{20, time.Second, true}, // the cache runs on the skewed local clocks
		{50, 3 * time.Second, false},
	} {
		t.Run(fmt.Sprintf("limit %d per %v, cache %v", tc.limit, tc.interval, tc.cache), func(t *testing.T) {
			const windows = 6
			start := windowStart(tc.interval)
			sim := newSimulation(t, factory, accuracyConfig(tc.limit, tc.interval, tc.cache), start, false, oneScriptPerCheck)
			rng := rand.New(rand.NewPCG(uint64(tc.limit), uint64(tc.interval)))
			sim.run(t, "fixed", tc.limit, tc.interval, windows, rng)
			sim.redis.Set(start)
			sim.run(t, "sliding", tc.limit, tc.interval, windows, rng)

			counts := perWindow(sim.got["fixed"], tc.interval)
			for k := start.UnixMilli() / tc.interval.Milliseconds(); k < start.UnixMilli()/tc.interval.Milliseconds()+windows; k++ {
				if counts[k] != tc.limit {
					t.Errorf("fixed: window %d admitted %d, want exactly the limit %d", k, counts[k], tc.limit)
				}
			}
			if got := maxInSpan(sim.got["fixed"], tc.interval); got <= tc.limit {
				t.Logf("fixed: worst span %d (the boundary bursts did not line up)", got)
			} else {
				t.Logf("fixed: worst span of one interval %d (limit %d): the boundary weakness", got, tc.limit)
			}
			bound := slidingBound(tc.limit, tc.interval)
			got := maxInSpan(sim.got["sliding"], tc.interval)
			if got > bound {
				t.Errorf("sliding: %d admitted within one interval, past the proven bound %d", got, bound)
			}
			// The bursts span 7 steps around each boundary: at most
			// L + L*(d-1)/I of them pass, d = 7 steps.
			burst := maxInSpan(sim.got["sliding"], 7*tc.interval/1000)
			if most := tc.limit + tc.limit*6/1000 + 1; burst > most {
				t.Errorf("sliding: %d admitted within a boundary burst, want at most %d", burst, most)
			}
			t.Logf("sliding: worst span %d, bound %d; worst 7-step burst %d", got, bound, burst)
			for i, w := range sim.workers {
				if tc.cache {
					t.Logf("worker %d (clock %+v): %v cache hits", i, skews[i], cacheHits(w))
				}
			}
		})
	}
}

func cacheHits(l *Limiter) float64 {
	var n float64
	for _, svc := range []string{"fixed", "sliding"} {
		n += testutil.ToFloat64(l.metrics.cacheHits.WithLabelValues(svc))
	}
	return n
}

func TestAccuracyMiniredis(t *testing.T) { testAccuracy(t, miniFactory) }

// If each worker passed its own clock, windows would disagree by the skew
// and a fixed window of Redis time would admit more than the limit. The
// design forbids it; this shows why.
func TestOwnClocksWouldOvershoot(t *testing.T) {
	const limit, interval = 20, time.Second
	start := windowStart(interval)
	sim := newSimulation(t, miniFactory, accuracyConfig(limit, interval, false), start, true, false)
	// The workers' windows have other indexes (the skews are whole
	// windows here), so each takes the others' counts for stale ones.
	sim.run(t, "fixed", limit, interval, 4, rand.New(rand.NewPCG(1, 2)))
	worst := int64(0)
	for _, n := range perWindow(sim.got["fixed"], interval) {
		worst = max(worst, n)
	}
	if worst <= limit {
		t.Errorf("workers on their own clocks admitted at most %d per window; expected an overshoot past %d", worst, limit)
	}
	t.Logf("workers on their own (skewed) clocks: up to %d admitted in one window of limit %d", worst, limit)
}
