// Package store keeps the rate limiter's windows in Redis. A decision is
// Lua (check_one.lua) that reads the limit and the windows, decides and
// records the call in one step, on Redis's clock; every key comes from
// pkg/keys. CheckMany decides many calls in one round trip: on a single
// node with one script call for them all (check_many.lua: one clock
// reading, the calls in order), on a Redis Cluster, whose calls live in
// many slots, with one script call per call (check.lua), pipelined.
package store

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/redis/go-redis/v9"
)

var (
	//go:embed check_one.lua
	checkOneLua string
	//go:embed check.lua
	checkLua string
	//go:embed check_many.lua
	checkManyLua string
	//go:embed hit.lua
	hitLua string
)

// Redis is what the store needs of a go-redis client.
type Redis interface {
	redis.Scripter
	Del(ctx context.Context, keys ...string) *redis.IntCmd
	Pipeline() redis.Pipeliner
	Ping(ctx context.Context) *redis.StatusCmd
}

// ErrRedis marks a failure to reach Redis in time or a Redis that refused
// to work; retrying later may succeed.
var ErrRedis = errors.New("store: redis unavailable")

// ErrLost marks hits refused because the epoch marker is missing: Redis
// lost the windows, and counting into them before they are rebuilt would
// hand the rebuild a mix. Always with ErrRedis: retrying after the
// rebuild succeeds.
var ErrLost = errors.New("store: redis lost the rate limiter's hit windows (no epoch marker)")

// Modes, as in ratelimit.ModeFixed and ratelimit.ModeSliding.
const (
	ModeFixed   = "fixed"
	ModeSliding = "sliding"
)

// Store is the rate limiter's Redis state.
type Store struct {
	rdb      Redis
	keys     keys.Keys
	now      func() time.Time // nil: Redis TIME
	perCheck bool             // one script call per check (Cluster)
	guard    bool             // count hits only while the epoch marker is there
	// slotEpochs: on a Cluster, the marker of every hash slot
	// (keys.RateLimitEpochSlots), each hit checking its own slot's.
	slotEpochs []string
	check      *redis.Script
	checkMany  *redis.Script
	hit        *redis.Script
}

// Options configures a Store.
type Options struct {
	Keys keys.Keys
	// Now overrides Redis TIME as the clock of the windows (tests). Nil
	// uses Redis TIME, the one clock every replica shares.
	Now func() time.Time
	// OneScriptPerCheck sends one check.lua call per check, pipelined,
	// instead of one check_many.lua call per batch. It is forced on for a
	// Redis Cluster (or Ring), where the checks of a batch live in many
	// slots; tests set it to cover that path on a single node.
	OneScriptPerCheck bool
	// Guard counts hits only while the rate limiter's epoch marker is
	// there, checked inside each hit's script call (Hits fails with
	// ErrLost otherwise). On a Redis Cluster, where the marker lives in
	// another slot than a hit's windows, each hit checks the marker of its
	// own slot (keys.RateLimitEpochSlots, service.NewSlottedEpoch): a
	// master that lost its data refuses the hits of its slots, and only
	// those. A Ring has no slots: there the caller stops counting once it
	// sees the marker gone.
	Guard bool
	// SlotMarkers checks the markers per hash slot, as on a Redis Cluster,
	// where it is forced on; tests set it on a single node.
	SlotMarkers bool
}

// New returns a Store and loads its scripts.
func New(ctx context.Context, rdb Redis, opts Options) (*Store, error) {
	if rdb == nil {
		return nil, errors.New("store: nil redis client")
	}
	s := &Store{
		rdb:       rdb,
		keys:      opts.Keys,
		now:       opts.Now,
		perCheck:  opts.OneScriptPerCheck,
		check:     redis.NewScript(checkOneLua + checkLua),
		checkMany: redis.NewScript(checkOneLua + checkManyLua),
		hit:       redis.NewScript(hitLua),
		guard:     opts.Guard,
	}
	switch rdb.(type) {
	case *redis.ClusterClient:
		s.perCheck, opts.SlotMarkers = true, true
	case *redis.Ring:
		s.perCheck, s.guard = true, false
	}
	if s.guard && opts.SlotMarkers {
		s.slotEpochs = s.keys.RateLimitEpochSlots()
	}
	if err := s.Load(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Load loads the scripts into Redis, so calls go out as EVALSHA.
func (s *Store) Load(ctx context.Context) error {
	for _, sc := range []*redis.Script{s.check, s.checkMany, s.hit} {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("%w: load scripts: %w", ErrRedis, err)
		}
	}
	return nil
}

// Keys returns the key builder.
func (s *Store) Keys() keys.Keys { return s.keys }

// Limit is the rule of one decision.
type Limit struct {
	// Service is the rate-limited service; "" is the uid's own limit.
	Service  string
	Interval time.Duration
	Mode     string // ModeFixed or ModeSliding
	// Configured is the service's configured limit; -1: none, the uid's
	// "ratelimit" grant applies. A uid's "ratelimit_<service>" grant
	// overrides either.
	Configured int64
	// DefaultGrant is the configured default of the "ratelimit" grant.
	DefaultGrant int64
	// Descriptor, when set, is the keys.DescriptorID of an Envoy
	// descriptor (the gRPC front) whose windows are spent instead of a
	// uid's: the op's UID is then unused, Configured must be set (a
	// descriptor has no grants) and Service should be "".
	Descriptor string
}

// Decision is the outcome of one check.
type Decision struct {
	Allowed    bool
	Limit      int64
	Remaining  int64
	Used       int64 // the window's count after the call (sliding: the weighted estimate, rounded up)
	ResetAfter time.Duration
	RetryAfter time.Duration // 0 when allowed
}

// Check decides whether uid may spend cost on l and records it when it
// may; cost 0 only peeks. The error wraps ErrRedis when Redis did not
// answer (or not within ctx). It is CheckMany of one call.
func (s *Store) Check(ctx context.Context, uid string, l Limit, cost int64) (Decision, error) {
	ds, errs := s.CheckMany(ctx, []CheckOp{{UID: uid, Limit: l, Cost: cost}})
	return ds[0], errs[0]
}

// CheckOp is one call of CheckMany: uid spending cost on l.
type CheckOp struct {
	UID   string
	Limit Limit
	Cost  int64
}

// keysOf returns the three keys of op's script call: its two windows and
// the HASH of its overrides (a uid's grants), all in one slot.
func (s *Store) keysOf(op CheckOp) (even, odd, overrides string) {
	if d := op.Limit.Descriptor; d != "" {
		even, odd = s.keys.RateLimitDescriptor(d)
		return even, odd, s.keys.RateLimitDescriptorOverrides(d)
	}
	even, odd = s.keys.RateLimit(op.UID, op.Limit.Service)
	return even, odd, s.keys.Grants(op.UID)
}

// CheckMany decides ops in one round trip, in order, as Check decides
// each: ds[i] and errs[i] are op i's. errs[i] is op i's own when the
// script failed on it (a key of the wrong type), the others decided
// regardless, and wraps ErrRedis when Redis did not answer (or not within
// ctx). On a single node one check_many.lua call decides them all;
// otherwise each is a check.lua call of one pipeline. If Redis had
// forgotten the script, it is loaded again once and what found it missing
// is sent again in a second round trip, on the same clock.
func (s *Store) CheckMany(ctx context.Context, ops []CheckOp) ([]Decision, []error) {
	ds := make([]Decision, len(ops))
	errs := make([]error, len(ops))
	if len(ops) == 0 {
		return ds, errs
	}
	var now int64
	if s.now != nil {
		now = s.now().UnixMilli()
	}
	if !s.perCheck {
		s.checkBatch(ctx, ops, now, ds, errs)
		return ds, errs
	}
	all := make([]int, len(ops))
	for i := range all {
		all[i] = i
	}
	var missing []int
	for i, r := range s.checkPipeline(ctx, ops, all, now) {
		if isNoScript(r.err) {
			missing = append(missing, i)
			continue
		}
		ds[i], errs[i] = decisionOf(ops[i], r.v, r.err)
	}
	if len(missing) == 0 {
		return ds, errs
	}
	// Redis forgot the script (a restart, SCRIPT FLUSH): load it again.
	if err := s.Load(ctx); err != nil {
		for _, i := range missing {
			errs[i] = err
		}
		return ds, errs
	}
	for j, r := range s.checkPipeline(ctx, ops, missing, now) {
		i := missing[j]
		ds[i], errs[i] = decisionOf(ops[i], r.v, r.err)
	}
	return ds, errs
}

// checkBatch decides ops with one check_many.lua call, filling ds and
// errs.
func (s *Store) checkBatch(ctx context.Context, ops []CheckOp, now int64, ds []Decision, errs []error) {
	keyList := make([]string, 0, 3*len(ops))
	args := make([]any, 1, 1+6*len(ops))
	args[0] = now
	for _, op := range ops {
		even, odd, overrides := s.keysOf(op)
		keyList = append(keyList, even, odd, overrides)
		args = append(args, op.Limit.Interval.Milliseconds(), op.Limit.Mode, op.Cost,
			keys.RateLimitField(op.Limit.Service), op.Limit.Configured, op.Limit.DefaultGrant)
	}
	v, err := s.checkMany.EvalSha(ctx, s.rdb, keyList, args...).Result()
	if isNoScript(err) {
		// Redis forgot the script (a restart, SCRIPT FLUSH), so it ran
		// nothing: load it again and resend.
		if lerr := s.Load(ctx); lerr != nil {
			for i := range errs {
				errs[i] = lerr
			}
			return
		}
		v, err = s.checkMany.EvalSha(ctx, s.rdb, keyList, args...).Result()
	}
	if err != nil {
		// Redis not answering (ErrRedis), or the script failing outside
		// any one call, which it should not (every call runs under pcall).
		for i, op := range ops {
			ds[i], errs[i] = decisionOf(op, nil, err)
		}
		return
	}
	replies, ok := v.([]any)
	if !ok || len(replies) != len(ops) {
		for i := range errs {
			errs[i] = fmt.Errorf("store: check_many: unexpected reply %v to %d checks", v, len(ops))
		}
		return
	}
	for i, r := range replies {
		if arr, ok := r.([]any); ok && len(arr) == 2 {
			if status, _ := arr[0].(int64); status == -1 {
				msg, _ := arr[1].(string)
				errs[i] = failedOp(ops[i], msg)
				continue
			}
		}
		ds[i], errs[i] = decisionOf(ops[i], r, nil)
	}
}

// failedOp is the error of op, which failed inside check_many.lua with
// msg, classified as check.lua's reply would be: a Redis error raised by
// redis.call keeps its code (WRONGTYPE, ERR, OOM ...), a Lua error is ERR
// as Redis reports it. Then, as in decisionOf, ERR and WRONGTYPE are the
// op's own and anything else (OOM, READONLY: Redis that cannot work) is
// ErrRedis.
func failedOp(op CheckOp, msg string) error {
	if !hasErrorCode(msg) {
		msg = "ERR " + msg
	}
	if strings.HasPrefix(msg, "ERR ") || strings.HasPrefix(msg, "WRONGTYPE") {
		return fmt.Errorf("store: check %s/%s: %s", op.UID, op.Limit.Service, msg)
	}
	return fmt.Errorf("%w: check %s/%s: %s", ErrRedis, op.UID, op.Limit.Service, msg)
}

// hasErrorCode reports whether msg starts with a Redis error code: an
// upper-case word.
func hasErrorCode(msg string) bool {
	code, _, ok := strings.Cut(msg, " ")
	if !ok || code == "" {
		return false
	}
	for _, r := range code {
		if r < 'A' || r > 'Z' {
			return false
		}
	}
	return true
}

// result is one script call's raw reply.
type result struct {
	v   any
	err error
}

// checkPipeline runs the check script for ops[i] of each i in which, in
// one pipeline, and returns their replies in that order.
func (s *Store) checkPipeline(ctx context.Context, ops []CheckOp, which []int, now int64) []result {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(which))
	for j, i := range which {
		op := ops[i]
		even, odd, overrides := s.keysOf(op)
		cmds[j] = s.check.EvalSha(ctx, pipe, []string{even, odd, overrides},
			now, op.Limit.Interval.Milliseconds(), op.Limit.Mode, op.Cost, keys.RateLimitField(op.Limit.Service), op.Limit.Configured, op.Limit.DefaultGrant)
	}
	_, execErr := pipe.Exec(ctx)
	out := make([]result, len(cmds))
	for j, cmd := range cmds {
		out[j].v, out[j].err = cmd.Result()
		if out[j].err == nil && out[j].v == nil && execErr != nil {
			out[j].err = execErr // a command the failed round trip left unanswered
		}
	}
	return out
}

// decisionOf reads the check script's reply to op, or classifies its
// error: one raised inside the script (a key of the wrong type) is the
// op's own; any other is Redis failing, ErrRedis.
func decisionOf(op CheckOp, v any, err error) (Decision, error) {
	if err != nil {
		if isScriptError(err) {
			return Decision{}, fmt.Errorf("store: check %s/%s: %w", op.UID, op.Limit.Service, err)
		}
		return Decision{}, fmt.Errorf("%w: check: %w", ErrRedis, err)
	}
	arr, ok := v.([]any)
	if !ok || len(arr) != 6 {
		return Decision{}, fmt.Errorf("store: check: unexpected reply %v", v)
	}
	var n [6]int64
	for i, x := range arr {
		if n[i], ok = x.(int64); !ok {
			return Decision{}, fmt.Errorf("store: check: unexpected reply %v", v)
		}
	}
	return Decision{
		Allowed:    n[0] == 1,
		Limit:      n[1],
		Remaining:  n[2],
		ResetAfter: time.Duration(n[3]) * time.Millisecond,
		RetryAfter: time.Duration(n[4]) * time.Millisecond,
		Used:       n[5],
	}, nil
}

// Hit is one usage event counted against one (uid, service).
type Hit struct {
	ID       string // the event id
	UID      string
	Service  string
	Interval time.Duration
	Value    int64
	// At is when the usage stream stored the event: it decides the
	// event's window (Options.Now overrides it), so a replay counts it
	// where a live count did.
	At time.Time
}

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrRedis, err)
	}
	return nil
}

// ErrOutOfRange marks a hit refused, changing nothing, because it would
// take its window past 1e15, the largest number allot keeps.
var ErrOutOfRange = errors.New("store: out of range")

// Hits counts hits in one pipelined round trip, each once however often
// it is sent: counted[i] is false for one counted before. errs[i] is a
// failure of that hit alone, retrying will not help: a script error (a key
// of the wrong type) or ErrOutOfRange. The error is non-nil when the round trip failed: then
// nothing can be said of any hit, and the caller sends them all again,
// which the dedup records make safe.
func (s *Store) Hits(ctx context.Context, hits []Hit, dedupTTL time.Duration) (counted []bool, errs []error, err error) {
	counted, errs, err = s.hitsOnce(ctx, hits, dedupTTL)
	if err != nil && isNoScript(err) {
		if err = s.Load(ctx); err != nil {
			return nil, nil, err
		}
		counted, errs, err = s.hitsOnce(ctx, hits, dedupTTL)
	}
	return counted, errs, err
}

func (s *Store) hitsOnce(ctx context.Context, hits []Hit, dedupTTL time.Duration) ([]bool, []error, error) {
	var now int64
	if s.now != nil {
		now = s.now().UnixMilli()
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(hits))
	for i, h := range hits {
		at := now
		if s.now == nil {
			if h.At.IsZero() {
				return nil, nil, fmt.Errorf("store: hit %s of %s/%s has no stream time", h.ID, h.UID, h.Service)
			}
			at = h.At.UnixMilli()
		}
		even, odd := s.keys.RateLimit(h.UID, h.Service)
		keyList := []string{s.keys.RateLimitDedup(h.UID, h.Service, h.ID), even, odd}
		switch {
		case s.slotEpochs != nil:
			keyList = append(keyList, s.slotEpochs[keys.Slot(keys.UserTag(h.UID))])
		case s.guard:
			keyList = append(keyList, s.keys.RateLimitEpoch())
		}
		cmds[i] = s.hit.EvalSha(ctx, pipe, keyList, dedupTTL.Milliseconds(), at, h.Interval.Milliseconds(), h.Value)
	}
	_, _ = pipe.Exec(ctx)
	counted := make([]bool, len(hits))
	errs := make([]error, len(hits))
	for i, cmd := range cmds {
		v, err := cmd.Int64()
		switch {
		case err == nil && v == 2:
			errs[i] = fmt.Errorf("%w: hit %s of %s/%s: %d more would take the window past 1e15", ErrOutOfRange, hits[i].ID, hits[i].UID, hits[i].Service, hits[i].Value)
		case err == nil:
			counted[i] = v == 1
		case isNoScript(err):
			return nil, nil, err
		case strings.HasPrefix(err.Error(), "LOST "):
			return nil, nil, fmt.Errorf("%w: %w", ErrRedis, ErrLost)
		case isScriptError(err):
			errs[i] = fmt.Errorf("store: hit %s of %s/%s: %w", hits[i].ID, hits[i].UID, hits[i].Service, err)
		default:
			return nil, nil, fmt.Errorf("%w: hits: %w", ErrRedis, err)
		}
	}
	return counted, errs, nil
}

// Reset clears uid's windows for service ("" : the uid's own limit).
func (s *Store) Reset(ctx context.Context, uid, service string) error {
	even, odd := s.keys.RateLimit(uid, service)
	if err := s.rdb.Del(ctx, even, odd).Err(); err != nil {
		return fmt.Errorf("%w: reset: %w", ErrRedis, err)
	}
	return nil
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// isScriptError tells an error raised inside the script (a bug, or a key
// of the wrong type: retrying will not help) from a Redis that cannot
// work.
func isScriptError(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	msg := err.Error()
	return strings.HasPrefix(msg, "ERR ") || strings.HasPrefix(msg, "WRONGTYPE")
}
