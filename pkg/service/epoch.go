package service

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// ErrEpochRedis marks an epoch marker that could not be read or written
// because Redis did not answer; retrying later may succeed.
var ErrEpochRedis = errors.New("service: epoch marker: redis unavailable")

// EpochRedis is what an Epoch needs of a go-redis client.
type EpochRedis interface {
	HGet(ctx context.Context, key, field string) *redis.StringCmd
	HSet(ctx context.Context, key string, values ...any) *redis.IntCmd
	HSetNX(ctx context.Context, key, field string, value any) *redis.BoolCmd
	TxPipeline() redis.Pipeliner
}

// Epoch is the marker a service keeps in Redis to say that Redis holds
// the state it derives from a stream: a HASH whose field seq is a stream
// sequence (what it means is the service's), and whose field rebuilding
// says a rebuild is rewriting the state. Redis losing its data (a restart
// without persistence, a failover to an empty replica, FLUSHALL) loses
// the marker with the state; a service that checks for it every few
// seconds (Lost) learns of the loss and can rebuild from the stream, one
// replica of several under a pkg/mutex lock, writing the marker last
// (Set). The meter (meter:epoch) and the rate limiter's hit windows
// (ratelimit:epoch) each have one.
type Epoch struct {
	rdb EpochRedis
	key string
}

// NewEpoch returns the marker at key.
func NewEpoch(rdb EpochRedis, key string) Epoch { return Epoch{rdb: rdb, key: key} }

// Key returns the marker's key.
func (e Epoch) Key() string { return e.key }

// Read reads the marker's seq, and whether the marker is there at all.
func (e Epoch) Read(ctx context.Context) (seq uint64, ok bool, err error) {
	v, err := e.rdb.HGet(ctx, e.key, "seq").Result()
	if errors.Is(err, redis.Nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("%w: read %s: %w", ErrEpochRedis, e.key, err)
	}
	seq, err = strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, true, fmt.Errorf("service: epoch marker %s: seq %q is not a sequence", e.key, v)
	}
	return seq, true, nil
}

// Init writes the marker at seq unless one is there, and says whether it
// wrote it.
func (e Epoch) Init(ctx context.Context, seq uint64) (bool, error) {
	ok, err := e.rdb.HSetNX(ctx, e.key, "seq", seq).Result()
	if err != nil {
		return false, fmt.Errorf("%w: write %s: %w", ErrEpochRedis, e.key, err)
	}
	return ok, nil
}

// Set writes the marker at seq: Redis holds the state up to it (a
// rebuild's last step). It clears MarkRebuilding's mark in the same step.
func (e Epoch) Set(ctx context.Context, seq uint64) error {
	tx := e.rdb.TxPipeline()
	tx.HSet(ctx, e.key, "seq", seq)
	tx.HDel(ctx, e.key, "rebuilding")
	if _, err := tx.Exec(ctx); err != nil {
		return fmt.Errorf("%w: write %s: %w", ErrEpochRedis, e.key, err)
	}
	return nil
}

// MarkRebuilding records, beside the marker, that a rebuild is rewriting
// the state; Set clears it. State found without a marker but with this
// mark is a rebuild cut short (its process killed), not the state of a
// version from before the marker: it must be rebuilt again, not kept.
func (e Epoch) MarkRebuilding(ctx context.Context) error {
	if err := e.rdb.HSet(ctx, e.key, "rebuilding", "1").Err(); err != nil {
		return fmt.Errorf("%w: mark the rebuild in %s: %w", ErrEpochRedis, e.key, err)
	}
	return nil
}

// Withdraw is MarkRebuilding for a rebuild that deletes the state before
// it replays: it also removes the seq, in the same step, so that until
// Set the state reads as lost (Read's ok false) to every replica and to
// a service that starts meanwhile, as the half of a rebuild must.
func (e Epoch) Withdraw(ctx context.Context) error {
	tx := e.rdb.TxPipeline()
	tx.HSet(ctx, e.key, "rebuilding", "1")
	tx.HDel(ctx, e.key, "seq")
	if _, err := tx.Exec(ctx); err != nil {
		return fmt.Errorf("%w: mark the rebuild in %s: %w", ErrEpochRedis, e.key, err)
	}
	return nil
}

// Rebuilding reports whether MarkRebuilding's mark is there: a rebuild
// is under way, or was cut short.
func (e Epoch) Rebuilding(ctx context.Context) (bool, error) {
	err := e.rdb.HGet(ctx, e.key, "rebuilding").Err()
	switch {
	case errors.Is(err, redis.Nil):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("%w: read the rebuild mark in %s: %w", ErrEpochRedis, e.key, err)
	}
	return true, nil
}

// Lost reports whether Redis lost the state: the marker is missing while
// the stream holds events. A stream without events is a new deployment:
// the marker is written (at the stream's last sequence) and nothing is
// lost.
func (e Epoch) Lost(ctx context.Context, stream jetstream.Stream) (bool, error) {
	if _, ok, err := e.Read(ctx); err != nil || ok {
		return false, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return false, fmt.Errorf("service: stream of %s: %w", e.key, err)
	}
	if info.State.Msgs > 0 {
		return true, nil
	}
	_, err = e.Init(ctx, info.State.LastSeq)
	return false, err
}

// EpochAtStart is what Adopt found.
type EpochAtStart int

const (
	// EpochThere: the marker is there (or nothing was found to adopt).
	EpochThere EpochAtStart = iota
	// EpochAdopted: state without a marker, written by a version from
	// before the marker, kept and the marker written (at seq 0).
	EpochAdopted
	// EpochCut: the state of a rebuild that did not finish, never kept.
	EpochCut
)

// Adopt is the check at a service's start, before Lost. Redis holding
// the service's state (hasState) but no marker was written by a version
// from before the marker: its state is kept and the marker written at
// seq 0, since a rebuild may not restore all of it. Only at start: once
// running, a missing marker is a loss even if something has written a
// key since. State left by a rebuild that was cut short (the rebuilding
// mark) is never kept.
func (e Epoch) Adopt(ctx context.Context, hasState func(context.Context) (bool, error)) (EpochAtStart, error) {
	if _, ok, err := e.Read(ctx); err != nil || ok {
		return EpochThere, err
	}
	cut, err := e.Rebuilding(ctx)
	if err != nil {
		return EpochThere, err
	}
	if cut {
		return EpochCut, nil
	}
	has, err := hasState(ctx)
	if err != nil || !has {
		return EpochThere, err
	}
	if _, err := e.Init(ctx, 0); err != nil {
		return EpochThere, err
	}
	return EpochAdopted, nil
}

// Scanner is what AnyKey needs of a go-redis client.
type Scanner interface {
	Scan(ctx context.Context, cursor uint64, match string, count int64) *redis.ScanCmd
}

// AnyKey reports whether some key matches pattern, asking every master of
// a Redis Cluster and stopping at the first key found. It walks the key
// space with SCAN: a service calls it at start, not per request.
func AnyKey(ctx context.Context, rdb Scanner, pattern string) (bool, error) {
	scan := func(ctx context.Context, c Scanner) (bool, error) {
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
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return scan(ctx, rdb)
	}
	var mu sync.Mutex
	var found bool
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		f, err := scan(ctx, c)
		mu.Lock()
		found = found || f
		mu.Unlock()
		return err
	})
	return found, err
}
