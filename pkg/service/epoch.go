package service

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	Pipeline() redis.Pipeliner
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
//
// On a Redis Cluster one master can lose its data while the others keep
// theirs, and the marker lives on one of them: a slotted Epoch
// (NewSlottedEpoch) has one more marker in every hash slot, so the loss
// of any master's slots is seen, and a script that writes state under a
// tag can check (and raise) the marker of its own slot in the same call.
// The state is whole only while every one of them holds its seq.
type Epoch struct {
	rdb   EpochRedis
	key   string
	slots []string       // a slotted Epoch's marker per hash slot; nil: none
	turn  *atomic.Uint64 // which share of the slots' markers Read reads next
}

// SlotShares is how many reads of a slotted Epoch (Read, Lost) take to
// read every slot's marker: each reads one slot in SlotShares, spread
// over the whole range (slot % SlotShares == the read's turn), so every
// master's slots are in every read and a master that lost its data is
// seen by the next, while one slot's marker lost alone is seen within
// SlotShares reads (and by the first write a script guards in its slot).
// 2,048 HGETs a read instead of 16,384.
const SlotShares = 8

// NewEpoch returns the marker at key.
func NewEpoch(rdb EpochRedis, key string) Epoch { return Epoch{rdb: rdb, key: key} }

// NewSlottedEpoch returns the marker at key with one more per hash slot,
// slotKeys[slot] (keys.MeterEpochSlots): for a Redis Cluster. Reading all
// of them (ReadAll) is one pipelined HGET per slot, about 1.2 ms of Redis
// time for the 16,384; Read reads a share of them (SlotShares).
func NewSlottedEpoch(rdb EpochRedis, key string, slotKeys []string) Epoch {
	return Epoch{rdb: rdb, key: key, slots: slotKeys, turn: new(atomic.Uint64)}
}

// Key returns the marker's key.
func (e Epoch) Key() string { return e.key }

// Slotted reports whether the Epoch has a marker per hash slot.
func (e Epoch) Slotted() bool { return e.slots != nil }

// Marks is what ReadAll found.
type Marks struct {
	Seq uint64 // the marker's seq
	OK  bool   // the marker holds a seq
	// SlotsWritten: the marker says the slots' markers were written (a
	// slotted Epoch's Init or Set); without it, a marker from before the
	// slots' (Adopt writes them).
	SlotsWritten bool
	// HeldSince is set when the rebuild that wrote the marker found the
	// stream without its oldest events (removed by its max_age, or by
	// hand): state from before it could not be restored. Zero: whole.
	HeldSince time.Time
	Slots     []uint64 // each slot's seq (a slotted Epoch), for the slots read
	Missing   []int    // the slots read whose marker holds no seq, in order
	// The slots read: those whose index modulo Step is From (Step 1:
	// every one).
	From, Step int
}

// WasRead reports whether slot's marker was read.
func (m Marks) WasRead(slot int) bool { return m.Step > 0 && slot%m.Step == m.From }

// Whole reports whether every marker holds its seq.
func (m Marks) Whole() bool { return m.OK && len(m.Missing) == 0 }

// ReadAll reads the marker and, for a slotted Epoch, every slot's, in one
// pipeline.
func (e Epoch) ReadAll(ctx context.Context) (Marks, error) { return e.read(ctx, 0, 1) }

// ReadShare reads the marker and, for a slotted Epoch, the next share of
// the slots' markers (SlotShares), in one pipeline: a loss check's read.
func (e Epoch) ReadShare(ctx context.Context) (Marks, error) {
	if e.slots == nil {
		return e.read(ctx, 0, 1)
	}
	return e.read(ctx, int(e.turn.Add(1)%SlotShares), SlotShares)
}

func (e Epoch) read(ctx context.Context, from, step int) (Marks, error) {
	m := Marks{From: from, Step: step}
	pipe := e.rdb.Pipeline()
	main := pipe.HMGet(ctx, e.key, "seq", "slots", "held_since")
	cmds := make([]*redis.StringCmd, len(e.slots))
	for i := from; i < len(e.slots); i += step {
		cmds[i] = pipe.HGet(ctx, e.slots[i], "seq")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return m, fmt.Errorf("%w: read %s and its slots': %w", ErrEpochRedis, e.key, err)
	}
	vals := main.Val()
	if v, ok := vals[0].(string); ok {
		seq, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return m, fmt.Errorf("service: epoch marker %s: seq %q is not a sequence", e.key, v)
		}
		m.Seq, m.OK = seq, true
	}
	m.SlotsWritten = vals[1] != nil
	if v, ok := vals[2].(string); ok {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return m, fmt.Errorf("service: epoch marker %s: held_since %q is not a time in ms", e.key, v)
		}
		m.HeldSince = time.UnixMilli(ms).UTC()
	}
	if e.slots == nil {
		return m, nil
	}
	m.Slots = make([]uint64, len(e.slots))
	for i, cmd := range cmds {
		if cmd == nil {
			continue
		}
		v, err := cmd.Result()
		if errors.Is(err, redis.Nil) {
			m.Missing = append(m.Missing, i)
			continue
		}
		if err != nil {
			return m, fmt.Errorf("%w: read %s: %w", ErrEpochRedis, e.slots[i], err)
		}
		if m.Slots[i], err = strconv.ParseUint(v, 10, 64); err != nil {
			return m, fmt.Errorf("service: epoch marker %s: seq %q is not a sequence", e.slots[i], v)
		}
	}
	return m, nil
}

// Read reads the marker's seq, and whether the state is whole: the
// marker is there and, for a slotted Epoch, the slots' too, a share of
// them a read (ReadShare).
func (e Epoch) Read(ctx context.Context) (seq uint64, ok bool, err error) {
	if e.slots != nil {
		m, err := e.ReadShare(ctx)
		return m.Seq, m.Whole(), err
	}
	return e.readMain(ctx)
}

func (e Epoch) readMain(ctx context.Context) (uint64, bool, error) {
	v, err := e.rdb.HGet(ctx, e.key, "seq").Result()
	if errors.Is(err, redis.Nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("%w: read %s: %w", ErrEpochRedis, e.key, err)
	}
	seq, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, true, fmt.Errorf("service: epoch marker %s: seq %q is not a sequence", e.key, v)
	}
	return seq, true, nil
}

// setSlots runs one command per slot's marker, pipelined.
func (e Epoch) setSlots(ctx context.Context, what string, cmd func(redis.Pipeliner, string)) error {
	if e.slots == nil {
		return nil
	}
	pipe := e.rdb.Pipeline()
	for _, k := range e.slots {
		cmd(pipe, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("%w: %s the slots' markers of %s: %w", ErrEpochRedis, what, e.key, err)
	}
	return nil
}

// Init writes the marker at seq unless one is there, and says whether it
// wrote it. A slotted Epoch writes each slot's missing marker first.
func (e Epoch) Init(ctx context.Context, seq uint64) (bool, error) {
	err := e.setSlots(ctx, "write", func(p redis.Pipeliner, k string) { p.HSetNX(ctx, k, "seq", seq) })
	if err != nil {
		return false, err
	}
	ok, err := e.rdb.HSetNX(ctx, e.key, "seq", seq).Result()
	if err == nil && e.slots != nil {
		err = e.rdb.HSet(ctx, e.key, "slots", "1").Err()
	}
	if err != nil {
		return false, fmt.Errorf("%w: write %s: %w", ErrEpochRedis, e.key, err)
	}
	return ok, nil
}

// adoptSlots writes the slots' markers of a slotted Epoch whose marker
// was written before them (by a version without them), at the marker's
// seq, and reports whether it did; m is what ReadAll found. Only at a
// service's start, from Adopt: once the slots' markers were written, one
// missing is a loss.
func (e Epoch) adoptSlots(ctx context.Context, m Marks) (bool, error) {
	if e.slots == nil || !m.OK || m.SlotsWritten {
		return false, nil
	}
	if _, err := e.Init(ctx, m.Seq); err != nil {
		return false, err
	}
	return true, nil
}

// Set writes the marker at seq: Redis holds the state up to it (a
// rebuild's last step), and from heldSince on when that is not zero (the
// stream had lost its oldest events: Marks.HeldSince). It clears
// MarkRebuilding's mark in the same step. A slotted Epoch writes every
// slot's marker first.
func (e Epoch) Set(ctx context.Context, seq uint64, heldSince time.Time) error {
	if err := e.setSlots(ctx, "write", func(p redis.Pipeliner, k string) { p.HSet(ctx, k, "seq", seq) }); err != nil {
		return err
	}
	tx := e.rdb.TxPipeline()
	tx.HSet(ctx, e.key, "seq", seq)
	if heldSince.IsZero() {
		tx.HDel(ctx, e.key, "held_since")
	} else {
		tx.HSet(ctx, e.key, "held_since", heldSince.UnixMilli())
	}
	if e.slots != nil {
		tx.HSet(ctx, e.key, "slots", "1")
	}
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
// a service that starts meanwhile, as the half of a rebuild must. A
// slotted Epoch then removes every slot's seq too, so that a script
// checking its slot's marker refuses.
func (e Epoch) Withdraw(ctx context.Context) error {
	tx := e.rdb.TxPipeline()
	tx.HSet(ctx, e.key, "rebuilding", "1")
	tx.HDel(ctx, e.key, "seq")
	if _, err := tx.Exec(ctx); err != nil {
		return fmt.Errorf("%w: mark the rebuild in %s: %w", ErrEpochRedis, e.key, err)
	}
	return e.setSlots(ctx, "withdraw", func(p redis.Pipeliner, k string) { p.HDel(ctx, k, "seq") })
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

// SlotRanges writes slots (in order) as ranges, "0-5460 10923", for logs.
func SlotRanges(slots []int) string {
	var b strings.Builder
	for i := 0; i < len(slots); {
		j := i
		for j+1 < len(slots) && slots[j+1] == slots[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(slots[i]))
		if j > i {
			b.WriteString("-" + strconv.Itoa(slots[j]))
		}
		i = j + 1
	}
	return b.String()
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
	// before the marker, kept and the marker written.
	EpochAdopted
	// EpochSlotsAdopted: a slotted Epoch's marker without the slots'
	// markers, written by a version from before them: the slots' markers
	// written at its seq.
	EpochSlotsAdopted
	// EpochCut: the state of a rebuild that did not finish, never kept.
	EpochCut
)

// Adopt is the check at a service's start, before Lost. Redis holding
// the service's state (hasState) but no marker was written by a version
// from before the marker: its state is kept and the marker written at
// seq, since a rebuild may not restore all of it. Only at start: once
// running, a missing marker is a loss even if something has written a
// key since. State left by a rebuild that was cut short (the rebuilding
// mark) is never kept. A slotted Epoch adopts only when no marker at all
// is there: one slot's marker there says they were written, and the
// others missing is a loss.
func (e Epoch) Adopt(ctx context.Context, seq uint64, hasState func(context.Context) (bool, error)) (EpochAtStart, error) {
	m, err := e.ReadAll(ctx)
	if err != nil {
		return EpochThere, err
	}
	if adopted, err := e.adoptSlots(ctx, m); err != nil || adopted {
		if adopted {
			return EpochSlotsAdopted, nil
		}
		return EpochThere, err
	}
	if m.OK || len(m.Missing) < len(e.slots) {
		return EpochThere, nil
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
	if _, err := e.Init(ctx, seq); err != nil {
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
