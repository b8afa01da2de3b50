package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Epoch reads the epoch marker: the highest usage stream sequence
// applied, and whether the marker is there at all.
func (s *Store) Epoch(ctx context.Context) (seq uint64, ok bool, err error) {
	v, err := s.rdb.HGet(ctx, s.keys.MeterEpoch(), "seq").Result()
	if errors.Is(err, redis.Nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("%w: read the epoch marker: %w", ErrRedis, err)
	}
	seq, err = strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, true, fmt.Errorf("store: epoch marker seq %q is not a sequence", v)
	}
	return seq, true, nil
}

// InitEpoch writes the epoch marker at seq unless one is there, and says
// whether it wrote it.
func (s *Store) InitEpoch(ctx context.Context, seq uint64) (bool, error) {
	ok, err := s.rdb.HSetNX(ctx, s.keys.MeterEpoch(), "seq", seq).Result()
	if err != nil {
		return false, fmt.Errorf("%w: write the epoch marker: %w", ErrRedis, err)
	}
	return ok, nil
}

// SetEpoch writes the epoch marker at seq: Redis holds the state applied
// up to it (a rebuild's last step). It clears MarkRebuilding's mark in
// the same step.
func (s *Store) SetEpoch(ctx context.Context, seq uint64) error {
	tx := s.rdb.TxPipeline()
	tx.HSet(ctx, s.keys.MeterEpoch(), "seq", seq)
	tx.HDel(ctx, s.keys.MeterEpoch(), "rebuilding")
	if _, err := tx.Exec(ctx); err != nil {
		return fmt.Errorf("%w: write the epoch marker: %w", ErrRedis, err)
	}
	return nil
}

// MarkRebuilding records, beside the epoch marker, that a rebuild is
// rewriting the state; SetEpoch clears it. State found without a marker
// but with this mark is a rebuild cut short (its process killed), not
// the state of a meter from before the marker: it must be rebuilt again,
// not kept.
func (s *Store) MarkRebuilding(ctx context.Context) error {
	if err := s.rdb.HSet(ctx, s.keys.MeterEpoch(), "rebuilding", "1").Err(); err != nil {
		return fmt.Errorf("%w: mark the rebuild: %w", ErrRedis, err)
	}
	return nil
}

// Rebuilding reports whether MarkRebuilding's mark is there: a rebuild
// is under way, or was cut short.
func (s *Store) Rebuilding(ctx context.Context) (bool, error) {
	err := s.rdb.HGet(ctx, s.keys.MeterEpoch(), "rebuilding").Err()
	switch {
	case errors.Is(err, redis.Nil):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("%w: read the rebuild mark: %w", ErrRedis, err)
	}
	return true, nil
}

// HasState reports whether Redis holds any of the meter's state: a grant
// period, a counter or gauge, or a dedup record as a key of its own (the
// versions before the marker kept them so). The dedup SETs and stream
// records of later versions are not looked for: they never stand without
// a grant or counter beside them but once those have expired, and a
// Redis holding only them is rebuilt, which is safe. Without an epoch marker
// that tells a Redis that lost the state (none) from one written by a
// meter from before the marker (some), whose state must be kept, not
// rebuilt over: a rebuild cannot restore what authorize charged. It asks
// every master of a Redis Cluster, and stops at the first key found.
func (s *Store) HasState(ctx context.Context) (bool, error) {
	// {tag}:g:<metric>, {tag}:c:<metric>, {tag}:e:<id> (pkg/keys); no
	// other service's key has one of those letters alone after the tag.
	pattern := s.keys.Prefix() + "{*}:[gce]:*"
	any := func(ctx context.Context, c interface {
		Scan(ctx context.Context, cursor uint64, match string, count int64) *redis.ScanCmd
	}) (bool, error) {
		var cursor uint64
		for {
			keys, next, err := c.Scan(ctx, cursor, pattern, 1000).Result()
			if err != nil {
				return false, err
			}
			if len(keys) > 0 {
				return true, nil
			}
			if cursor = next; cursor == 0 {
				return false, nil
			}
		}
	}
	var found bool
	var err error
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			f, err := any(ctx, c)
			mu.Lock()
			found = found || f
			mu.Unlock()
			return err
		})
	} else {
		found, err = any(ctx, s.rdb)
	}
	if err != nil {
		return false, fmt.Errorf("%w: look for the meter's state: %w", ErrRedis, err)
	}
	return found, nil
}

// TracksSeq reports whether the epoch marker's seq follows the state: on
// one Redis every apply raises it to the highest stream sequence it
// applied; on a Redis Cluster the marker lives in a slot of its own and
// no apply touches it.
func (s *Store) TracksSeq() bool { return s.guard && !s.cluster }

// RaiseEpoch raises the marker's seq to seq, if the marker is there and
// below it: for events the meter acks without applying (refused before
// the apply script), so that the marker never trails what the consumer
// acked.
func (s *Store) RaiseEpoch(ctx context.Context, seq uint64) error {
	if err := s.raiseEpoch.Run(ctx, s.rdb, []string{s.keys.MeterEpoch()}, seq).Err(); err != nil {
		return fmt.Errorf("%w: raise the epoch marker: %w", ErrRedis, err)
	}
	return nil
}

// DropEpoch removes the marker's seq, if it is still seq: Redis holds an
// older state than the meter applied, which is then treated as lost (the
// apply script refuses, every replica answers 503, one rebuilds). It
// reports whether it dropped it; a marker that moved meanwhile is kept.
func (s *Store) DropEpoch(ctx context.Context, seq uint64) (bool, error) {
	n, err := s.dropEpoch.Run(ctx, s.rdb, []string{s.keys.MeterEpoch()}, seq).Int()
	if err != nil {
		return false, fmt.Errorf("%w: drop the epoch marker: %w", ErrRedis, err)
	}
	return n == 1, nil
}
