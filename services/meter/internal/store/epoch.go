package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/allot/allot/pkg/service"
)

// The meter's epoch marker (keys.MeterEpoch) is a service.Epoch, the
// rate limiter's kind too; its seq is the highest usage stream sequence
// applied, raised by apply_chunk.lua. These wrap its errors in ErrRedis.

func (s *Store) epoch() service.Epoch { return s.epochs }

// redisErr marks a marker that Redis did not read or write as ErrRedis.
func redisErr(err error) error {
	if errors.Is(err, service.ErrEpochRedis) {
		return fmt.Errorf("%w: %w", ErrRedis, err)
	}
	return err
}

// Epoch reads the epoch marker: the highest usage stream sequence
// applied, and whether the marker is there at all.
func (s *Store) Epoch(ctx context.Context) (seq uint64, ok bool, err error) {
	seq, ok, err = s.epoch().Read(ctx)
	return seq, ok, redisErr(err)
}

// Slotted reports whether the store keeps an epoch marker per hash slot
// (a Cluster), which EpochMarks reads.
func (s *Store) Slotted() bool { return s.slotEpochs != nil }

// EpochMarks reads the marker and, when Slotted, every slot's.
func (s *Store) EpochMarks(ctx context.Context) (service.Marks, error) {
	m, err := s.epoch().ReadAll(ctx)
	return m, redisErr(err)
}

// EpochShare reads the marker and, when Slotted, the next share of the
// slots' markers (service.SlotShares): the periodic check's read.
func (s *Store) EpochShare(ctx context.Context) (service.Marks, error) {
	m, err := s.epoch().ReadShare(ctx)
	return m, redisErr(err)
}

// AppliedSlots returns, when Slotted, the highest stream sequence this
// Store applied in each hash slot: that slot's marker was raised to at
// least it, and one found below it (read after this call) means the
// slot's master went back in time, a replica promoted without the write.
func (s *Store) AppliedSlots() []uint64 {
	out := make([]uint64, len(s.applied))
	for i := range s.applied {
		out[i] = s.applied[i].Load()
	}
	return out
}

// DropSlotEpoch is DropEpoch for the marker of one hash slot.
func (s *Store) DropSlotEpoch(ctx context.Context, slot int, seq uint64) (bool, error) {
	n, err := s.dropEpoch.Run(ctx, s.rdb, []string{s.slotEpochs[slot]}, seq).Int()
	if err != nil {
		return false, fmt.Errorf("%w: drop the epoch marker of slot %d: %w", ErrRedis, slot, err)
	}
	return n == 1, nil
}

// AdoptEpoch is service.Epoch.Adopt on the meter's marker, with HasState
// telling a Redis written before the marker; seq is what to write then.
func (s *Store) AdoptEpoch(ctx context.Context, seq uint64) (service.EpochAtStart, error) {
	at, err := s.epoch().Adopt(ctx, seq, s.HasState)
	return at, redisErr(err)
}

// InitEpoch writes the epoch marker at seq unless one is there, and says
// whether it wrote it.
func (s *Store) InitEpoch(ctx context.Context, seq uint64) (bool, error) {
	ok, err := s.epoch().Init(ctx, seq)
	return ok, redisErr(err)
}

// SetEpoch writes the epoch marker at seq: Redis holds the state applied
// up to it (a rebuild's last step), and only from heldSince on when that
// is not zero (the stream had lost its oldest events). It clears
// MarkRebuilding's mark in the same step.
func (s *Store) SetEpoch(ctx context.Context, seq uint64, heldSince time.Time) error {
	return redisErr(s.epoch().Set(ctx, seq, heldSince))
}

// MarkRebuilding records, beside the epoch marker, that a rebuild is
// rewriting the state, and removes the marker's seq in the same step;
// SetEpoch writes both back. State found without a marker but with this
// mark is a rebuild cut short (its process killed), not the state of a
// meter from before the marker: it must be rebuilt again, not kept. And
// without the seq a rebuild an operator started on a whole state (allot
// rebuild) and that was cut short reads as lost to the meters, which
// rebuild it, rather than apply into half of it.
func (s *Store) MarkRebuilding(ctx context.Context) error {
	return redisErr(s.epoch().Withdraw(ctx))
}

// Rebuilding reports whether MarkRebuilding's mark is there: a rebuild
// is under way, or was cut short.
func (s *Store) Rebuilding(ctx context.Context) (bool, error) {
	r, err := s.epoch().Rebuilding(ctx)
	return r, redisErr(err)
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
	found, err := service.AnyKey(ctx, s.rdb, s.keys.Prefix()+"{*}:[gce]:*")
	if err != nil {
		return false, fmt.Errorf("%w: look for the meter's state: %w", ErrRedis, err)
	}
	return found, nil
}

// TracksSeq reports whether the epoch marker's seq follows the state: on
// one Redis every apply raises it to the highest stream sequence it
// applied; on a Redis Cluster each apply raises its own slot's marker
// (Slotted) and none the marker itself.
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
