package main

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/allot/allot/loadtest/internal/report"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// stateKey is one number the meter keeps: a field of a counter's hash
// (its label set) or of a grant's hash ("u", the amount used).
type stateKey struct {
	uid    string
	metric string
	field  string
	grant  bool
}

func (k stateKey) String() string {
	if k.grant {
		return fmt.Sprintf("grant %s of %s", k.metric, k.uid)
	}
	return fmt.Sprintf("counter %s{%s} of %s", k.metric, strings.ReplaceAll(k.field, "\x1f", ","), k.uid)
}

// ledger is what the harness sent that the meter must end up with.
type ledger struct {
	mu        sync.Mutex
	expected  map[stateKey]float64
	uncertain map[stateKey]float64 // sent, but its fate is unknown

	good, dups, bad, badFailed, unknown atomic.Int64
}

func newLedger() *ledger {
	return &ledger{expected: map[stateKey]float64{}, uncertain: map[stateKey]float64{}}
}

func (l *ledger) add(k stateKey, v float64) {
	l.mu.Lock()
	l.expected[k] += v
	l.mu.Unlock()
}

// fail moves an amount from expected to uncertain: an original whose
// publish failed (it may or may not be stored).
func (l *ledger) fail(k stateKey, v float64, original bool) {
	l.mu.Lock()
	if original {
		l.expected[k] -= v
	}
	l.uncertain[k] += v
	l.mu.Unlock()
	l.unknown.Add(1)
}

// maybe records an amount that may or may not have been applied (a
// request that timed out).
func (l *ledger) maybe(k stateKey, v float64) {
	l.mu.Lock()
	l.uncertain[k] += v
	if _, ok := l.expected[k]; !ok {
		l.expected[k] = 0
	}
	l.mu.Unlock()
	l.unknown.Add(1)
}

// diff is one key whose state is not what was sent.
type diff struct {
	key            stateKey
	want, got, tol float64
}

func (d diff) String() string {
	what := "lost"
	if d.got > d.want {
		what = "double-counted"
	}
	tol := ""
	if d.tol > 0 {
		tol = fmt.Sprintf(" (up to %s more allowed for sends of unknown fate)", report.Num(d.tol))
	}
	return fmt.Sprintf("%s: sent %s, Redis holds %s: %s %s%s", d.key, report.Num(d.want), report.Num(d.got), report.Num(math.Abs(d.got-d.want)), what, tol)
}

// compare finds the keys whose actual value is outside [want, want+tol].
// The result is sorted by key, so "the first differences" are stable.
func compare(expected, uncertain, actual map[stateKey]float64) (diffs []diff, lost, double float64) {
	seen := map[stateKey]bool{}
	check := func(k stateKey) {
		if seen[k] {
			return
		}
		seen[k] = true
		want, tol, got := expected[k], uncertain[k], actual[k]
		const eps = 1e-9
		switch {
		case got < want-eps:
			lost += want - got
			diffs = append(diffs, diff{k, want, got, tol})
		case got > want+tol+eps:
			double += got - want - tol
			diffs = append(diffs, diff{k, want, got, tol})
		}
	}
	for k := range expected {
		check(k)
	}
	for k := range actual {
		check(k)
	}
	sort.Slice(diffs, func(i, j int) bool { return diffs[i].key.String() < diffs[j].key.String() })
	return diffs, lost, double
}

// readState reads, for every uid, the counters and grants the run
// writes, straight from the meter's keys (pkg/keys), in pipelines.
func readState(ctx context.Context, rdb redis.UniversalClient, k keys.Keys, uids []string, counters, grants []string) (map[stateKey]float64, error) {
	out := map[stateKey]float64{}
	for start := 0; start < len(uids); start += 200 {
		chunk := uids[start:min(len(uids), start+200)]
		pipe := rdb.Pipeline()
		type pending struct {
			uid, metric string
			grant       bool
			hash        *redis.MapStringStringCmd
			used        *redis.StringCmd
		}
		var ps []pending
		for _, uid := range chunk {
			for _, m := range counters {
				ps = append(ps, pending{uid: uid, metric: m, hash: pipe.HGetAll(ctx, k.Values(keys.UserTag(uid), m))})
			}
			for _, m := range grants {
				ps = append(ps, pending{uid: uid, metric: m, grant: true, used: pipe.HGet(ctx, k.Grant(uid, m), "u")})
			}
		}
		if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
			return nil, fmt.Errorf("read the meter's state: %w", err)
		}
		for _, p := range ps {
			if p.grant {
				s, err := p.used.Result()
				if err == redis.Nil {
					continue
				}
				if err != nil {
					return nil, fmt.Errorf("read grant %s of %s: %w", p.metric, p.uid, err)
				}
				v, err := strconv.ParseFloat(s, 64)
				if err != nil {
					return nil, fmt.Errorf("grant %s of %s: used is %q: %w", p.metric, p.uid, s, err)
				}
				out[stateKey{uid: p.uid, metric: p.metric, field: "u", grant: true}] = v
				continue
			}
			h, err := p.hash.Result()
			if err != nil {
				return nil, fmt.Errorf("read counter %s of %s: %w", p.metric, p.uid, err)
			}
			for f, s := range h {
				v, err := strconv.ParseFloat(s, 64)
				if err != nil {
					return nil, fmt.Errorf("counter %s of %s: field %q is %q: %w", p.metric, p.uid, f, s, err)
				}
				out[stateKey{uid: p.uid, metric: p.metric, field: f}] = v
			}
		}
	}
	return out, nil
}

// countDead counts the dead letters of the run's uids: the dead-letter
// stream's per-subject counts, filtered to <dead>.<uid prefix>*.
func countDead(ctx context.Context, js jetstream.JetStream, stream string, subj events.Subjects, uidPrefix string) (int64, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("dead-letter stream %s: %w", stream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subj.DeadFor("*")))
	if err != nil {
		return 0, fmt.Errorf("dead-letter stream %s: %w", stream, err)
	}
	var n int64
	want := subj.DeadFor(uidPrefix)
	for subject, c := range info.State.Subjects {
		if strings.HasPrefix(subject, want) {
			n += int64(c)
		}
	}
	return n, nil
}

// exactness compares the ledger with Redis and the dead letters, and
// cross-checks a few uids through meter.credit, the way an app reads them.
func exactness(ctx context.Context, t *target, l *ledger, uids []string) report.Exactness {
	e := report.Exactness{Checked: true, Events: l.good.Load(), Duplicates: l.dups.Load(), Bad: l.bad.Load(), Uncertain: l.unknown.Load()}
	actual, err := readState(ctx, t.rdb, t.keys, uids, []string{metricCounter}, []string{metricGrant, metricAuthorize})
	if err != nil {
		e.Checked, e.Note = false, err.Error()
		return e
	}
	l.mu.Lock()
	diffs, lost, double := compare(l.expected, l.uncertain, actual)
	e.Keys = len(l.expected)
	l.mu.Unlock()
	e.Lost, e.Double = lost, double
	for i, d := range diffs {
		if i == 20 {
			e.Differences = append(e.Differences, fmt.Sprintf("... and %d more", len(diffs)-20))
			break
		}
		e.Differences = append(e.Differences, d.String())
	}
	dead, err := countDead(ctx, t.js, t.cfg.Streams.Dead, t.cfg.Subjects, t.uidPrefix())
	if err != nil {
		e.Checked, e.Note = false, err.Error()
		return e
	}
	e.Dead = dead
	wantDead := e.Bad - l.badFailed.Load()
	if dead < wantDead || dead > e.Bad {
		e.Differences = append([]string{fmt.Sprintf("dead letters: %d bad events sent (%d of unknown fate), %d dead letters found", e.Bad, l.badFailed.Load(), dead)}, e.Differences...)
	}
	// The app's view: meter.credit for a few uids must say the same.
	c, err := events.NewClient(t.ctl, events.ClientOptions{Subjects: t.cfg.Subjects})
	if err == nil {
		checked := 0
		for _, uid := range uids {
			if checked == 20 {
				break
			}
			k := stateKey{uid: uid, metric: metricGrant, field: "u", grant: true}
			if _, ok := actual[k]; !ok {
				continue
			}
			checked++
			cr, err := c.Credit(ctx, uid, metricGrant)
			if err != nil {
				e.Differences = append(e.Differences, fmt.Sprintf("meter.credit for %s: %v", uid, err))
				continue
			}
			if cr.Used != actual[k] {
				e.Differences = append(e.Differences, fmt.Sprintf("meter.credit for %s says used %s, Redis holds %s", uid, report.Num(cr.Used), report.Num(actual[k])))
			}
		}
	}
	e.OK = len(e.Differences) == 0
	return e
}
