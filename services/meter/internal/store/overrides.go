package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/allot/allot/pkg/events"
	"github.com/redis/go-redis/v9"
)

func parseOverrides(raw map[string]string) (map[string]float64, error) {
	out := make(map[string]float64, len(raw))
	for k, v := range raw {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("store: grant override %s=%q is not a number", k, v)
		}
		out[k] = f
	}
	return out, nil
}

// Overrides returns uid's grant overrides.
func (s *Store) Overrides(ctx context.Context, uid string) (map[string]float64, error) {
	pipe := s.rdb.Pipeline()
	cmd := pipe.HGetAll(ctx, s.keys.Grants(uid))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%w: read grants: %w", ErrRedis, err)
	}
	return parseOverrides(cmd.Val())
}

// SetOverrides sets and unsets uid's grant overrides in one transaction
// and returns the overrides that result.
func (s *Store) SetOverrides(ctx context.Context, uid string, set map[string]float64, unset []string) (map[string]float64, error) {
	for k, v := range set {
		// The endpoint checked already; a grant Redis holds must be one
		// the scripts can read.
		if err := events.CheckAmount("set."+k, v); err != nil {
			return nil, err
		}
	}
	key := s.keys.Grants(uid)
	tx := s.rdb.TxPipeline()
	if len(set) > 0 {
		vals := make([]any, 0, 2*len(set))
		for k, v := range set {
			vals = append(vals, k, decimal(v))
		}
		tx.HSet(ctx, key, vals...)
	}
	if len(unset) > 0 {
		tx.HDel(ctx, key, unset...)
	}
	all := tx.HGetAll(ctx, key)
	if _, err := tx.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%w: write grants: %w", ErrRedis, err)
	}
	return parseOverrides(all.Val())
}
