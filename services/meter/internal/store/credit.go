package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// RawGrant is a grant's state as stored, before the period is checked.
type RawGrant struct {
	Started bool
	Used    float64
	Start   time.Time
	End     time.Time // zero: indefinite
}

// CreditRead is everything credit needs of one uid, read in one round
// trip.
type CreditRead struct {
	Now       time.Time
	Overrides map[string]float64
	Grants    map[string]RawGrant
}

// ReadCredit reads uid's overrides and the state of the named grants.
func (s *Store) ReadCredit(ctx context.Context, uid string, metrics []string) (CreditRead, error) {
	reads, errs := s.ReadCredits(ctx, []CreditQuery{{UID: uid, Metrics: metrics}})
	return reads[0], errs[0]
}

// CreditQuery names the grants of one uid that credit reads.
type CreditQuery struct {
	UID     string
	Metrics []string
}

// ReadCredits runs ReadCredit for each query in one pipelined round
// trip, with one reading of Redis's clock for all (on a Redis Cluster,
// one per master: clocks); errs[i] is query i's own failure.
func (s *Store) ReadCredits(ctx context.Context, qs []CreditQuery) ([]CreditRead, []error) {
	reads, errs := make([]CreditRead, len(qs)), make([]error, len(qs))
	pipe := s.rdb.Pipeline()
	clock := s.clocks(ctx, pipe, qs)
	overs := make([]*redis.MapStringStringCmd, len(qs))
	states := make([][]*redis.SliceCmd, len(qs))
	for i, q := range qs {
		overs[i] = pipe.HGetAll(ctx, s.keys.Grants(q.UID))
		states[i] = make([]*redis.SliceCmd, len(q.Metrics))
		for j, m := range q.Metrics {
			states[i][j] = pipe.HMGet(ctx, s.keys.Grant(q.UID, m), "u", "s", "e")
		}
	}
	_, _ = pipe.Exec(ctx)
	for i, q := range qs {
		now, err := clock(i)
		if err != nil {
			errs[i] = fmt.Errorf("%w: read credit: %w", ErrRedis, err)
			continue
		}
		reads[i], errs[i] = readCredit(now, q, overs[i], states[i])
	}
	return reads, errs
}

// clockLua reads Redis's clock in a script called on a key, so that on a
// Redis Cluster it runs on the master of that key's slot.
const clockLua = "return redis.call('TIME')"

// clocks queues the readings of Redis's clock that qs need on pipe and
// returns, after Exec, query i's time. One TIME on a single Redis. On a
// Cluster a keyless TIME goes to any node, and one that is down (a
// master failing over) would fail every credit of the batch: there each
// master serving a query's uid reads its own, a script on that uid's
// key, so a master that is down fails only its own uids' credits.
func (s *Store) clocks(ctx context.Context, pipe redis.Pipeliner, qs []CreditQuery) func(i int) (time.Time, error) {
	if s.now != nil {
		now := s.now().UTC()
		return func(int) (time.Time, error) { return now, nil }
	}
	if !s.cluster {
		cmd := pipe.Time(ctx)
		return func(int) (time.Time, error) { return cmd.Val().UTC(), cmd.Err() }
	}
	byNode := map[any]*redis.Cmd{}
	of := make([]*redis.Cmd, len(qs))
	for i, q := range qs {
		key := s.keys.Grants(q.UID)
		var node any = true // the Cluster's path on one Redis (tests): one clock
		if s.cc != nil {
			if n, err := s.cc.MasterForKey(ctx, key); err == nil {
				node = n
			} else {
				node = key // no master known: its own reading, which fails alone
			}
		}
		cmd, ok := byNode[node]
		if !ok {
			cmd = pipe.Eval(ctx, clockLua, []string{key})
			byNode[node] = cmd
		}
		of[i] = cmd
	}
	return func(i int) (time.Time, error) { return redisTime(of[i]) }
}

// redisTime parses what clockLua returns: seconds and microseconds.
func redisTime(cmd *redis.Cmd) (time.Time, error) {
	v, err := cmd.Slice()
	if err != nil {
		return time.Time{}, err
	}
	if len(v) != 2 {
		return time.Time{}, fmt.Errorf("store: TIME replied %v", v)
	}
	var parts [2]int64
	for i, x := range v {
		s, _ := x.(string)
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("store: TIME replied %v", v)
		}
		parts[i] = n
	}
	return time.Unix(parts[0], parts[1]*1000).UTC(), nil
}

// readCredit puts together one query's replies.
func readCredit(now time.Time, q CreditQuery, over *redis.MapStringStringCmd, states []*redis.SliceCmd) (CreditRead, error) {
	if err := over.Err(); err != nil && !errors.Is(err, redis.Nil) {
		return CreditRead{}, fmt.Errorf("%w: read credit: %w", ErrRedis, err)
	}
	out := CreditRead{Now: now, Grants: make(map[string]RawGrant, len(q.Metrics))}
	var err error
	if out.Overrides, err = parseOverrides(over.Val()); err != nil {
		return CreditRead{}, err
	}
	for j, m := range q.Metrics {
		if err := states[j].Err(); err != nil && !errors.Is(err, redis.Nil) {
			return CreditRead{}, fmt.Errorf("%w: read credit: %w", ErrRedis, err)
		}
		vals := states[j].Val()
		if len(vals) != 3 || vals[1] == nil {
			out.Grants[m] = RawGrant{}
			continue
		}
		used, _ := strconv.ParseFloat(fmt.Sprint(vals[0]), 64)
		start, _ := strconv.ParseInt(fmt.Sprint(vals[1]), 10, 64)
		end, _ := strconv.ParseInt(fmt.Sprint(vals[2]), 10, 64)
		out.Grants[m] = RawGrant{Started: true, Used: used, Start: msTime(start), End: msTime(end)}
	}
	return out, nil
}
