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
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/redis/go-redis/v9"
)

var (
	//go:embed numbers.lua
	numbersLua string
	//go:embed periods.lua
	periodsLua string
	//go:embed apply_event.lua
	applyEventLua string
	//go:embed apply.lua
	applyLua string
	//go:embed apply_many.lua
	applyManyLua string
	//go:embed authorize.lua
	authorizeLua string
	//go:embed confirm.lua
	confirmLua string
)

// Redis is what the store needs of a go-redis client.
type Redis interface {
	redis.Scripter
	Pipeline() redis.Pipeliner
	TxPipeline() redis.Pipeliner
	Ping(ctx context.Context) *redis.StatusCmd
	HGetAll(ctx context.Context, key string) *redis.MapStringStringCmd
	SMembers(ctx context.Context, key string) *redis.StringSliceCmd
	Scan(ctx context.Context, cursor uint64, match string, count int64) *redis.ScanCmd
}

// ErrRedis marks a failure to reach Redis or a Redis that refused to
// work; retrying later may succeed.
var ErrRedis = errors.New("store: redis unavailable")

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
	rdb       Redis
	keys      keys.Keys
	dedupTTL  time.Duration
	now       func() time.Time // nil: Redis TIME
	perEvent  bool             // one script call per event (Cluster)
	apply     *redis.Script
	applyMany *redis.Script
	authorize *redis.Script
	confirm   *redis.Script
}

// Options configures a Store.
type Options struct {
	Keys     keys.Keys
	DedupTTL time.Duration
	// Now overrides Redis TIME as the clock of grant periods (tests). Nil
	// uses Redis TIME, the one clock every replica shares.
	Now func() time.Time
	// OneScriptPerEvent sends one apply.lua call per event, pipelined,
	// instead of one apply_many.lua call per chunk. It is forced on for a
	// Redis Cluster, where the events of a chunk live in many slots.
	OneScriptPerEvent bool
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
		rdb:       rdb,
		keys:      opts.Keys,
		dedupTTL:  opts.DedupTTL,
		now:       opts.Now,
		perEvent:  opts.OneScriptPerEvent,
		apply:     redis.NewScript(numbersLua + periodsLua + applyEventLua + applyLua),
		applyMany: redis.NewScript(numbersLua + periodsLua + applyEventLua + applyManyLua),
		authorize: redis.NewScript(numbersLua + periodsLua + authorizeLua),
		confirm:   redis.NewScript(confirmLua),
	}
	if _, ok := rdb.(*redis.ClusterClient); ok {
		s.perEvent = true
	}
	if err := s.Load(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Load loads the scripts into Redis. Apply calls it again after Redis
// forgot them (a restart or SCRIPT FLUSH).
func (s *Store) Load(ctx context.Context) error {
	for _, sc := range []*redis.Script{s.apply, s.applyMany, s.authorize, s.confirm} {
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

// Values reads a counter's or gauge's values hash: label set -> value.
func (s *Store) Values(ctx context.Context, key string) (map[string]float64, error) {
	raw, err := s.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrRedis, key, err)
	}
	out := make(map[string]float64, len(raw))
	for f, v := range raw {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("store: %s[%q] = %q is not a number", key, f, v)
		}
		out[f] = x
	}
	return out, nil
}

// Members reads a set.
func (s *Store) Members(ctx context.Context, key string) ([]string, error) {
	v, err := s.rdb.SMembers(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrRedis, key, err)
	}
	return v, nil
}

// ScanUIDs returns up to max uids that have grant or usage state, by
// scanning the keyspace (on a Cluster, every master).
func (s *Store) ScanUIDs(ctx context.Context, max int) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	scan := func(ctx context.Context, c interface {
		Scan(context.Context, uint64, string, int64) *redis.ScanCmd
	}) error {
		iter := c.Scan(ctx, 0, s.keys.Prefix()+"{*}:*", 1000).Iterator()
		for iter.Next(ctx) && len(out) < max {
			uid, ok := s.keys.TagOf(iter.Val())
			if !ok || uid == keys.GlobalTag || strings.HasPrefix(uid, "i.") || seen[uid] {
				continue
			}
			seen[uid] = true
			out = append(out, uid)
		}
		return iter.Err()
	}
	var err error
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return scan(ctx, node)
		})
	} else {
		err = scan(ctx, s.rdb)
	}
	if err != nil {
		return out, fmt.Errorf("%w: scan uids: %w", ErrRedis, err)
	}
	sort.Strings(out)
	return out, nil
}

// Keys returns the key builder.
func (s *Store) Keys() keys.Keys { return s.keys }

func (s *Store) nowArg() int64 {
	if s.now == nil {
		return 0
	}
	return s.now().UnixMilli()
}

// Op is one usage event to apply.
type Op struct {
	ID     string
	UID    string
	Source string
	Metric string
	Config service.MetricConfig // normalized
	Limit  float64              // the default grant, for grants
	Value  float64
	Field  string // the label set, for counters and gauges
}

// GrantState is a grant as a script left it.
type GrantState struct {
	Used  float64
	Limit float64
	Start time.Time
	End   time.Time // zero: indefinite
}

// Notice is a threshold crossing to publish, exactly as Redis holds it
// until Confirm.
type Notice struct {
	Raw       string
	Threshold float64
	Start     time.Time
	End       time.Time
	Limit     float64
	Used      float64
}

// Result is the outcome of one Op.
type Result struct {
	Applied bool        // false: a duplicate, nothing changed
	Grant   *GrantState // grants, when applied
	Notices []Notice    // grants: notices to publish (also for duplicates)
	Err     error       // this op failed inside Redis (not a connection failure)
}

// Tag returns the hash tag of the state an op changes, which its dedup
// record shares.
func Tag(op Op) string {
	switch op.Config.Scope {
	case service.ScopeGlobal:
		return keys.GlobalTag
	case service.ScopeInstance:
		return keys.InstanceTag(op.Source)
	}
	return keys.UserTag(op.UID)
}

func (s *Store) applyArgs(op Op) (keyList []string, args []any) {
	tag := Tag(op)
	dedup := s.keys.Dedup(tag, op.ID)
	ttl := s.dedupTTL.Milliseconds()
	value := decimal(op.Value)
	if op.Config.Style != service.StyleGrant {
		state := s.keys.Values(tag, op.Metric)
		return []string{dedup, state, state}, []any{ttl, op.Config.Style, value, 0, op.Field}
	}
	args = []any{ttl, op.Config.Style, value, s.nowArg(), op.Metric,
		decimal(op.Limit), op.Config.Period, op.Config.Align}
	for _, t := range op.Config.Notify {
		args = append(args, strconv.FormatFloat(t, 'g', -1, 64))
	}
	return []string{dedup, s.keys.Grant(op.UID, op.Metric), s.keys.Grants(op.UID)}, args
}

// Apply applies ops in one pipelined round trip. The error is non-nil
// only when the round trip itself failed (Redis down, a timeout): then
// nothing can be said of any op, and the caller retries them all, which
// the dedup records make safe.
func (s *Store) Apply(ctx context.Context, ops []Op) ([]Result, error) {
	if !s.perEvent && len(ops) > 1 {
		results, err := s.applyChunk(ctx, ops)
		if err != nil && isNoScript(err) {
			if lerr := s.Load(ctx); lerr != nil {
				return nil, lerr
			}
			results, err = s.applyChunk(ctx, ops)
		}
		if err == nil || !isScriptError(err) {
			return results, err
		}
		// The chunk's script failed as a whole (it should not: each event
		// runs under pcall). What it applied is recorded; send the events
		// one by one, which the dedup records make safe and which tells
		// the failing event apart.
	}
	results, err := s.applyOnce(ctx, ops)
	if err != nil && isNoScript(err) {
		if lerr := s.Load(ctx); lerr != nil {
			return nil, lerr
		}
		results, err = s.applyOnce(ctx, ops)
	}
	return results, err
}

// applyChunk applies ops with one apply_many.lua call.
func (s *Store) applyChunk(ctx context.Context, ops []Op) ([]Result, error) {
	keyList := make([]string, 0, 3*len(ops))
	args := make([]any, 1, 1+10*len(ops))
	args[0] = len(ops)
	var sources []any
	for _, op := range ops {
		k, a := s.applyArgs(op)
		keyList = append(keyList, k...)
		args = append(args, len(a))
		args = append(args, a...)
		if op.Config.Scope == service.ScopeInstance {
			sources = append(sources, op.Source)
		}
	}
	pipe := s.rdb.Pipeline()
	cmd := s.applyMany.EvalSha(ctx, pipe, keyList, args...)
	if len(sources) > 0 {
		pipe.SAdd(ctx, s.keys.Instances(), sources...)
	}
	_, _ = pipe.Exec(ctx)
	v, err := cmd.Result()
	if err != nil {
		if isNoScript(err) || isScriptError(err) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrRedis, err)
	}
	replies, ok := v.([]any)
	if !ok || len(replies) != len(ops) {
		return nil, fmt.Errorf("store: apply_many: %d replies for %d events", len(replies), len(ops))
	}
	results := make([]Result, len(ops))
	for i, r := range replies {
		if arr, ok := r.([]any); ok && len(arr) == 2 {
			if status, _ := arr[0].(int64); status == -1 {
				results[i].Err = fmt.Errorf("store: apply event %s: %v", ops[i].ID, arr[1])
				continue
			}
		}
		res, perr := parseGrantReply(r, ops[i])
		if perr != nil {
			results[i].Err = fmt.Errorf("store: apply event %s: %w", ops[i].ID, perr)
			continue
		}
		results[i] = res
	}
	return results, nil
}

func (s *Store) applyOnce(ctx context.Context, ops []Op) ([]Result, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(ops))
	var sources []any
	for i, op := range ops {
		k, a := s.applyArgs(op)
		cmds[i] = s.apply.EvalSha(ctx, pipe, k, a...)
		if op.Config.Scope == service.ScopeInstance {
			sources = append(sources, op.Source)
		}
	}
	if len(sources) > 0 {
		// The index /metrics reads; idempotent, so outside the scripts.
		pipe.SAdd(ctx, s.keys.Instances(), sources...)
	}
	_, err := pipe.Exec(ctx)
	results := make([]Result, len(ops))
	for i, cmd := range cmds {
		cerr := cmd.Err()
		if cerr != nil {
			if isNoScript(cerr) {
				return nil, cerr
			}
			if !isScriptError(cerr) {
				return nil, fmt.Errorf("%w: %w", ErrRedis, cerr)
			}
			results[i].Err = fmt.Errorf("store: apply event %s: %w", ops[i].ID, cerr)
			continue
		}
		res, perr := parseGrantReply(cmd.Val(), ops[i])
		if perr != nil {
			results[i].Err = fmt.Errorf("store: apply event %s: %w", ops[i].ID, perr)
			continue
		}
		results[i] = res
	}
	if err != nil && !errors.Is(err, redis.Nil) && !isScriptError(err) && !isNoScript(err) {
		return nil, fmt.Errorf("%w: %w", ErrRedis, err)
	}
	return results, nil
}

// parseGrantReply reads op's reply {applied|status, used, limit, start,
// end, pending}, or {-2, held} for a refusal: a *RangeError.
func parseGrantReply(v any, op Op) (Result, error) {
	arr, ok := v.([]any)
	if !ok || len(arr) == 0 {
		return Result{}, fmt.Errorf("unexpected script reply %v", v)
	}
	status, _ := arr[0].(int64)
	if status == -2 && len(arr) == 2 {
		held, _ := arr[1].(string)
		return Result{Err: &RangeError{Value: decimal(op.Value), Held: held}}, nil
	}
	res := Result{Applied: status == 1}
	if op.Config.Style != service.StyleGrant {
		return res, nil
	}
	if len(arr) < 6 {
		return Result{}, fmt.Errorf("unexpected grant reply %v", v)
	}
	if pending, _ := arr[5].(string); pending != "" {
		notices, err := ParseNotices(pending)
		if err != nil {
			return Result{}, err
		}
		res.Notices = notices
	}
	// used is a string from HINCRBYFLOAT, an integer from HINCRBY, and ""
	// for a duplicate.
	if used, _ := arr[1].(string); used != "" || isInt(arr[1]) {
		st, err := grantState(arr)
		if err != nil {
			return Result{}, err
		}
		res.Grant = &st
	}
	return res, nil
}

func isInt(v any) bool {
	_, ok := v.(int64)
	return ok
}

func grantState(arr []any) (GrantState, error) {
	used, err := strconv.ParseFloat(fmt.Sprint(arr[1]), 64)
	if err != nil {
		return GrantState{}, fmt.Errorf("used %v: %w", arr[1], err)
	}
	limit, err := strconv.ParseFloat(fmt.Sprint(arr[2]), 64)
	if err != nil {
		return GrantState{}, fmt.Errorf("limit %v: %w", arr[2], err)
	}
	start, _ := arr[3].(int64)
	end, _ := arr[4].(int64)
	return GrantState{Used: used, Limit: limit, Start: msTime(start), End: msTime(end)}, nil
}

func msTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// ParseNotices parses a pending list: "percent|start|end|limit|used"
// entries joined by ';'.
func ParseNotices(q string) ([]Notice, error) {
	var out []Notice
	for _, raw := range strings.Split(q, ";") {
		if raw == "" {
			continue
		}
		f := strings.Split(raw, "|")
		if len(f) != 5 {
			return nil, fmt.Errorf("malformed notice %q", raw)
		}
		var nums [5]float64
		for i, x := range f {
			v, err := strconv.ParseFloat(x, 64)
			if err != nil {
				return nil, fmt.Errorf("malformed notice %q: %w", raw, err)
			}
			nums[i] = v
		}
		out = append(out, Notice{
			Raw: raw, Threshold: nums[0],
			Start: msTime(int64(nums[1])), End: msTime(int64(nums[2])),
			Limit: nums[3], Used: nums[4],
		})
	}
	return out, nil
}

// Confirmation names the published notices of one (uid, metric).
type Confirmation struct {
	UID, Metric string
	Notices     []Notice
}

// ConfirmAll removes the published notices of several (uid, metric)
// pairs from their pending lists in one pipelined round trip.
func (s *Store) ConfirmAll(ctx context.Context, cs []Confirmation) error {
	err := s.confirmAll(ctx, cs)
	if isNoScript(err) {
		if lerr := s.Load(ctx); lerr != nil {
			return lerr
		}
		err = s.confirmAll(ctx, cs)
	}
	return err
}

func (s *Store) confirmAll(ctx context.Context, cs []Confirmation) error {
	pipe := s.rdb.Pipeline()
	var cmds []*redis.Cmd
	for _, c := range cs {
		if len(c.Notices) == 0 {
			continue
		}
		args := make([]any, len(c.Notices))
		for i, n := range c.Notices {
			args[i] = n.Raw
		}
		cmds = append(cmds, s.confirm.EvalSha(ctx, pipe, []string{s.keys.Grant(c.UID, c.Metric)}, args...))
	}
	if len(cmds) == 0 {
		return nil
	}
	_, _ = pipe.Exec(ctx)
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			if isNoScript(err) {
				return err
			}
			return fmt.Errorf("%w: confirm notices: %w", ErrRedis, err)
		}
	}
	return nil
}

// AuthorizeOp asks to admit Amount of a grant.
type AuthorizeOp struct {
	ID, UID, Metric string
	Config          service.MetricConfig
	Limit           float64 // the default grant
	Amount          float64
}

// Decision is the outcome of an AuthorizeOp.
type Decision struct {
	Allowed  bool
	Repeated bool // allowed earlier under the same id; nothing changed now
	Grant    GrantState
	Notices  []Notice
}

// Authorize checks and records in one step.
func (s *Store) Authorize(ctx context.Context, op AuthorizeOp) (Decision, error) {
	d, errs := s.AuthorizeMany(ctx, []AuthorizeOp{op})
	return d[0], errs[0]
}

// AuthorizeMany runs Authorize for each op, in one pipelined round trip;
// errs[i] is op i's own failure. Each op is its own script call, so one
// op's failure leaves the others decided.
func (s *Store) AuthorizeMany(ctx context.Context, ops []AuthorizeOp) ([]Decision, []error) {
	ds, errs := make([]Decision, len(ops)), make([]error, len(ops))
	all := make([]int, len(ops))
	for i := range all {
		all[i] = i
	}
	if forgot := s.authorizeSome(ctx, ops, all, ds, errs); len(forgot) > 0 {
		// Redis forgot the script (a restart, SCRIPT FLUSH): load it
		// again and send those ops once more.
		if err := s.Load(ctx); err != nil {
			for _, i := range forgot {
				errs[i] = err
			}
			return ds, errs
		}
		s.authorizeSome(ctx, ops, forgot, ds, errs)
	}
	return ds, errs
}

// authorizeSome sends ops[idx...] in one pipeline, fills in their
// decisions or errors, and returns the ops Redis had no script for.
func (s *Store) authorizeSome(ctx context.Context, ops []AuthorizeOp, idx []int, ds []Decision, errs []error) (noScript []int) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(idx))
	for j, i := range idx {
		op := ops[i]
		args := []any{s.dedupTTL.Milliseconds(), decimal(op.Amount), s.nowArg(),
			op.Metric, decimal(op.Limit), op.Config.Period, op.Config.Align}
		for _, t := range op.Config.Notify {
			args = append(args, strconv.FormatFloat(t, 'g', -1, 64))
		}
		keyList := []string{s.keys.Dedup(keys.UserTag(op.UID), op.ID), s.keys.Grant(op.UID, op.Metric), s.keys.Grants(op.UID)}
		cmds[j] = s.authorize.EvalSha(ctx, pipe, keyList, args...)
	}
	_, _ = pipe.Exec(ctx)
	for j, i := range idx {
		v, err := cmds[j].Result()
		switch {
		case isNoScript(err):
			noScript = append(noScript, i)
		case isScriptError(err):
			errs[i] = fmt.Errorf("store: authorize %s: %w", ops[i].ID, err)
		case err != nil:
			errs[i] = fmt.Errorf("%w: authorize: %w", ErrRedis, err)
		default:
			ds[i], errs[i] = parseDecision(v)
		}
	}
	return noScript
}

func parseDecision(v any) (Decision, error) {
	arr, ok := v.([]any)
	if !ok || len(arr) < 6 {
		return Decision{}, fmt.Errorf("store: authorize: unexpected reply %v", v)
	}
	status, _ := arr[0].(int64)
	st, err := grantState(arr)
	if err != nil {
		return Decision{}, fmt.Errorf("store: authorize: %w", err)
	}
	d := Decision{Allowed: status != 0, Repeated: status == 2, Grant: st}
	if pending, _ := arr[5].(string); pending != "" && status == 1 {
		if d.Notices, err = ParseNotices(pending); err != nil {
			return Decision{}, fmt.Errorf("store: authorize: %w", err)
		}
	}
	return d, nil
}

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
