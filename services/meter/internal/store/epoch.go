package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"

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
// up to it (a rebuild's last step).
func (s *Store) SetEpoch(ctx context.Context, seq uint64) error {
	if err := s.rdb.HSet(ctx, s.keys.MeterEpoch(), "seq", seq).Err(); err != nil {
		return fmt.Errorf("%w: write the epoch marker: %w", ErrRedis, err)
	}
	return nil
}
