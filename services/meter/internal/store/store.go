// Package store keeps the meter's state in Redis: it applies usage events,
// admits authorize requests, reads credit and grant overrides. Every
// check-and-update is one Lua script (the .lua files beside this one);
// every key comes from pkg/keys.
package store

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/redis/go-redis/v9"
)

var (
	//go:embed numbers.lua
	numbersLua string
	//go:embed periods.lua
	periodsLua string
	//go:embed apply_chunk.lua
	applyChunkLua string
	//go:embed authorize.lua
	authorizeLua string
	//go:embed confirm.lua
	confirmLua string
	//go:embed epoch_raise.lua
	epochRaiseLua string
	//go:embed epoch_drop.lua
	epochDropLua string
)

// Redis is what the store needs of a go-redis client.
type Redis interface {
	redis.Scripter
	Pipeline() redis.Pipeliner
	TxPipeline() redis.Pipeliner
	Ping(ctx context.Context) *redis.StatusCmd
	HGetAll(ctx context.Context, key string) *redis.MapStringStringCmd
	HGet(ctx context.Context, key, field string) *redis.StringCmd
	HSet(ctx context.Context, key string, values ...any) *redis.IntCmd
	HSetNX(ctx context.Context, key, field string, value any) *redis.BoolCmd
	SMembers(ctx context.Context, key string) *redis.StringSliceCmd
	Scan(ctx context.Context, cursor uint64, match string, count int64) *redis.ScanCmd
}

// ErrRedis marks a failure to reach Redis or a Redis that refused to
// work; retrying later may succeed.
var ErrRedis = errors.New("store: redis unavailable")

// ErrLost marks an apply refused because the epoch marker is missing:
// Redis lost the meter's state, and a rebuild puts it back. It comes
// wrapped with ErrRedis, so a worker retries it later as any Redis
// failure.
var ErrLost = errors.New("store: redis lost the meter's state (no epoch marker)")

// ErrOutOfRange is matched by every [RangeError].
var ErrOutOfRange = errors.New("store: out of range")

// RangeError is an event the scripts refused, changing nothing: its value
// is not a number the meter takes, or it would take a counter or a
// grant's used past events.MaxNumber (1e15). Retrying will not help.
type RangeError struct {
	Value string // the value, as sent to Redis
	Held  string // what the counter or the grant's used holds
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("store: %s added to %s is not a number from 0 to 1e15", e.Value, e.Held)
}

// Is makes every RangeError match [ErrOutOfRange].
func (e *RangeError) Is(target error) bool { return target == ErrOutOfRange }

// decimal writes v as the scripts read numbers: a plain decimal, never an
// exponent form, and -0 as 0 (numbers.lua).
func decimal(v float64) string {
	if v == 0 {
		return "0"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// Store is the meter's Redis state.
type Store struct {
	rdb      Redis
	keys     keys.Keys
	dedupTTL time.Duration
	now      func() time.Time // nil: Redis TIME
	cluster  bool             // a Redis Cluster: one script call per hash tag
	guard    bool             // apply only while the epoch marker is there
	stream   bool             // dedup by stream position (Options.StreamDedup)
	seqKey   string
	// floors are the consumers' ack floors, one per partition (one when
	// not partitioned): records at or below a partition's can go.
	floors     []atomic.Uint64
	partitions int
	// grantStates: Options.GrantStates. oneByOne decides every counter
	// event one at a time, reading the field, as before the HINCRBY of
	// whole numbers: the reference the tests hold that path to.
	grantStates, oneByOne bool
	// waitReplicas and waitTimeout: Options.WaitReplicas (wait.go); cc
	// is the client when it is a Cluster's.
	waitReplicas int
	waitTimeout  time.Duration
	cc           *redis.ClusterClient
	applyChunk   *redis.Script
	authorize    *redis.Script
	confirm      *redis.Script
	raiseEpoch   *redis.Script
	dropEpoch    *redis.Script
	// On a Cluster, the epoch marker of every hash slot
	// (keys.MeterEpochSlots), which each apply call checks and raises in
	// its own slot with Guard, and then the highest sequence this Store
	// applied in each slot (AppliedSlots).
	slotEpochs []string
	applied    []atomic.Uint64
	epochs     service.Epoch
}

// Options configures a Store.
type Options struct {
	Keys     keys.Keys
	DedupTTL time.Duration
	// Now overrides Redis TIME as the clock of grant periods (tests). Nil
	// uses Redis TIME, the one clock every replica shares.
	Now func() time.Time
	// Cluster applies a chunk with one apply_chunk.lua call per hash tag,
	// pipelined, and keeps dedup SETs per tag, as on a Redis Cluster, where
	// the events of a chunk live in many slots and a script touches one.
	// It is forced on for a *redis.ClusterClient; tests set it to run the
	// Cluster's path on a single Redis.
	Cluster bool
	// StreamDedup dedups a redelivered event by its stream sequence
	// (Op.Seq), recorded as runs in a ZSET, instead of recording its id:
	// no record per event. Ids are still looked up (an authorized
	// request's id, recorded by Authorize, makes an event of the same id a
	// duplicate), and an event without a sequence is recorded by id. A
	// publisher's repeat under a new sequence is then the stream's
	// duplicate window's job alone.
	StreamDedup bool
	// SeqKey overrides the key of the stream-position records (a rebuild
	// of one uid on a single Redis replays into records of its own, since
	// every uid shares the live ones there). "" is keys.DedupSeqs.
	SeqKey string
	// Partitions is the usage stream's streams.partitions: with
	// StreamDedup each partition has its stream-position records and its
	// ack floor (SetAckFloor), and a chunk spanning partitions (a
	// rebuild's) is applied with a call per partition.
	Partitions int
	// Guard applies events only while the epoch marker is there, checked
	// inside the same script call (Apply fails with ErrLost otherwise),
	// and raises the marker's seq with each chunk. On a Cluster, where a
	// chunk spans slots, each call checks and raises the marker of its own
	// slot (keys.MeterEpochSlots): a master that lost its data refuses
	// the events of its slots, and only those.
	Guard bool
	// WaitReplicas, when above 0, makes Apply and Authorize return only
	// once that many replicas of each master written to have acknowledged
	// the writes (WAIT, wait.go), within WaitTimeout (default 1s); else
	// they fail with ErrNotReplicated, wrapped in ErrRedis. A write
	// acknowledged so survives its master's failover; one not waited for
	// can be lost with it. With fewer replicas than WaitReplicas every
	// write fails.
	WaitReplicas int
	WaitTimeout  time.Duration
	// GrantStates has Apply return every grant's state after the chunk
	// (Result.Grant); otherwise only those of grants holding notices come
	// back, which spares Redis a reply of five values per grant that the
	// meter does not read.
	GrantStates bool
}

// New returns a Store and loads its scripts, so pipelines can send them
// as EVALSHA.
func New(ctx context.Context, rdb Redis, opts Options) (*Store, error) {
	if rdb == nil {
		return nil, errors.New("store: nil redis client")
	}
	if opts.DedupTTL <= 0 {
		return nil, errors.New("store: dedup TTL must be > 0")
	}
	s := &Store{
		rdb:         rdb,
		keys:        opts.Keys,
		dedupTTL:    opts.DedupTTL,
		now:         opts.Now,
		cluster:     opts.Cluster,
		guard:       opts.Guard,
		stream:      opts.StreamDedup,
		seqKey:      opts.SeqKey,
		partitions:  opts.Partitions,
		floors:      make([]atomic.Uint64, max(opts.Partitions, 1)),
		grantStates: opts.GrantStates,
		applyChunk:  redis.NewScript(numbersLua + periodsLua + applyChunkLua),
		authorize:   redis.NewScript(numbersLua + periodsLua + authorizeLua),
		confirm:     redis.NewScript(confirmLua),
		raiseEpoch:  redis.NewScript(epochRaiseLua),
		dropEpoch:   redis.NewScript(epochDropLua),
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		s.cluster, s.cc = true, cc
	}
	s.epochs = service.NewEpoch(rdb, s.keys.MeterEpoch())
	if s.cluster {
		// A rebuild's store writes them (SetEpoch) without applying under them.
		s.slotEpochs = s.keys.MeterEpochSlots()
		s.epochs = service.NewSlottedEpoch(rdb, s.keys.MeterEpoch(), s.slotEpochs)
	}
	if s.cluster && s.guard {
		s.applied = make([]atomic.Uint64, keys.Slots)
	}
	if opts.WaitReplicas < 0 {
		return nil, errors.New("store: wait replicas must be >= 0")
	}
	s.waitReplicas, s.waitTimeout = opts.WaitReplicas, opts.WaitTimeout
	if s.waitTimeout <= 0 {
		s.waitTimeout = time.Second
	}
	if err := s.Load(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Load loads the scripts into Redis. Apply calls it again after Redis
// forgot them (a restart or SCRIPT FLUSH).
func (s *Store) Load(ctx context.Context) error {
	for _, sc := range []*redis.Script{s.applyChunk, s.authorize, s.confirm} {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("%w: load scripts: %w", ErrRedis, err)
		}
	}
	return nil
}

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrRedis, err)
	}
	return nil
}

// SetAckFloor tells the store the ack floor of the usage consumer of
// partition (0 when not partitioned): no message of it at or below the
// floor is handed out again, so its stream-position records can go. 0
// keeps them all; a partition out of range is ignored.
func (s *Store) SetAckFloor(partition int, seq uint64) {
	if partition >= 0 && partition < len(s.floors) {
		s.floors[partition].Store(seq)
	}
}

// ackFloor is partition's ack floor (0: unknown).
func (s *Store) ackFloor(partition int) uint64 {
	if partition < 0 || partition >= len(s.floors) {
		return 0
	}
	return s.floors[partition].Load()
}

// seqsKey is the key of the stream-position records of state under tag
// in partition: {tag}:seqs, or {tag}:seqs:<partition> when partitioned.
func (s *Store) seqsKey(tag string, partition int) string {
	key := s.seqKey
	switch {
	case key != "":
	case s.cluster:
		key = s.keys.DedupSeqs(tag)
	default:
		key = s.keys.DedupSeqs(keys.DedupTag)
	}
	if s.partitions > 0 {
		key += ":" + strconv.Itoa(partition)
	}
	return key
}

// Keys returns the key builder.
func (s *Store) Keys() keys.Keys { return s.keys }

func (s *Store) nowArg() int64 {
	if s.now == nil {
		return 0
	}
	return s.now().UnixMilli()
}

// opNow is the time an op's grant period is judged by, in ms (0: Redis
// TIME): the store's clock when one overrides Redis's (tests), else the
// op's own time.
func (s *Store) opNow(op Op) int64 {
	if s.now != nil || op.At.IsZero() {
		return s.nowArg()
	}
	return op.At.UnixMilli()
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// isScriptError tells an error raised inside a script (a bug, or a key of
// the wrong type: retrying will not help) from a Redis that cannot work
// now (down, loading, busy, read-only), which a retry may cure.
func isScriptError(err error) bool {
	if err == nil {
		return false
	}
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	msg := err.Error()
	for _, busy := range []string{"BUSY", "LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS", "OOM"} {
		if strings.HasPrefix(msg, busy) {
			return false
		}
	}
	return strings.Contains(msg, "WRONGTYPE") || strings.Contains(strings.ToLower(msg), "script")
}
