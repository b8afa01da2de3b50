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
// trip, with one reading of Redis's clock for all; errs[i] is query i's
// own failure.
func (s *Store) ReadCredits(ctx context.Context, qs []CreditQuery) ([]CreditRead, []error) {
	reads, errs := make([]CreditRead, len(qs)), make([]error, len(qs))
	pipe := s.rdb.Pipeline()
	var timeCmd *redis.TimeCmd
	if s.now == nil {
		timeCmd = pipe.Time(ctx)
	}
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
	var now time.Time
	if timeCmd != nil {
		if err := timeCmd.Err(); err != nil {
			for i := range errs {
				errs[i] = fmt.Errorf("%w: read credit: %w", ErrRedis, err)
			}
			return reads, errs
		}
		now = timeCmd.Val().UTC()
	} else {
		now = s.now().UTC()
	}
	for i, q := range qs {
		reads[i], errs[i] = readCredit(now, q, overs[i], states[i])
	}
	return reads, errs
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
