package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/usage"
	"github.com/redis/go-redis/v9"
)

// Op is one usage event to apply.
type Op struct {
	ID     string
	UID    string
	Source string
	Metric string
	Config usage.MetricConfig // normalized
	Limit  float64            // the default grant, for grants
	Value  float64
	Field  string // the label set, for counters and gauges
	// At is the time the event's grant period is judged by: the time the
	// stream stored it, so that applying the stream again (a rebuild)
	// rolls the same periods. Zero takes the store's clock (Redis TIME).
	At time.Time
	// Seq is the event's usage stream sequence (0: none), which a guarded
	// store records in the epoch marker.
	Seq uint64
}

// GrantState is a grant as a script left it.
type GrantState struct {
	Used  float64
	Limit float64
	Start time.Time
	End   time.Time // zero: indefinite
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
	case usage.ScopeGlobal:
		return keys.GlobalTag
	case usage.ScopeInstance:
		return keys.InstanceTag(op.Source)
	}
	return keys.UserTag(op.UID)
}

func (s *Store) applyArgs(op Op) (keyList []string, args []any) {
	tag := Tag(op)
	dedup := s.keys.Dedup(tag, op.ID)
	ttl := s.dedupTTL.Milliseconds()
	value := decimal(op.Value)
	if op.Config.Style != usage.StyleGrant {
		state := s.keys.Values(tag, op.Metric)
		return []string{dedup, state, state}, []any{ttl, op.Config.Style, value, 0, op.Field}
	}
	args = []any{ttl, op.Config.Style, value, s.opNow(op), op.Metric,
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
	if !s.perEvent && (len(ops) > 1 || s.guard) {
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
	keyList := make([]string, 0, 3*len(ops)+1)
	args := make([]any, 1, 2+10*len(ops))
	args[0] = len(ops)
	var sources []any
	var seq uint64
	for _, op := range ops {
		k, a := s.applyArgs(op)
		keyList = append(keyList, k...)
		args = append(args, len(a))
		args = append(args, a...)
		if op.Config.Scope == usage.ScopeInstance {
			sources = append(sources, op.Source)
		}
		seq = max(seq, op.Seq)
	}
	if s.guard {
		keyList = append(keyList, s.keys.MeterEpoch())
		args = append(args, seq)
	}
	pipe := s.rdb.Pipeline()
	cmd := s.applyMany.EvalSha(ctx, pipe, keyList, args...)
	if len(sources) > 0 {
		pipe.SAdd(ctx, s.keys.Instances(), sources...)
	}
	_, _ = pipe.Exec(ctx)
	v, err := cmd.Result()
	if err != nil {
		if strings.HasPrefix(err.Error(), "LOST") {
			return nil, fmt.Errorf("%w: %w", ErrRedis, ErrLost)
		}
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
		if op.Config.Scope == usage.ScopeInstance {
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
	if op.Config.Style != usage.StyleGrant {
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
