package store

import (
	"context"
	"fmt"
	"strconv"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/usage"
	"github.com/redis/go-redis/v9"
)

// AuthorizeOp asks to admit Amount of a grant.
type AuthorizeOp struct {
	ID, UID, Metric string
	Config          usage.MetricConfig
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
	pipes := s.newPipes()
	cmds := make([]*redis.Cmd, len(idx))
	for j, i := range idx {
		op := ops[i]
		tag := keys.UserTag(op.UID)
		lo, hi, b, ttl := s.window(s.opTime(Op{}))
		args := []any{ttl, decimal(op.Amount), s.nowArg(),
			op.Metric, decimal(op.Limit), op.Config.Period, op.Config.Align,
			s.dedupMember(tag, op.ID), b - lo + 1}
		for _, t := range op.Config.Notify {
			args = append(args, strconv.FormatFloat(t, 'g', -1, 64))
		}
		keyList := []string{s.keys.Grant(op.UID, op.Metric), s.keys.Grants(op.UID)}
		for k := lo; k <= hi; k++ {
			keyList = append(keyList, s.dedupSet(tag, k))
		}
		if pipe := pipes.pipe(ctx, keyList[0]); pipe != nil {
			cmds[j] = s.authorize.EvalSha(ctx, pipe, keyList, args...)
		}
	}
	// A WAIT that came short fails every op of the round trip: each
	// may be lost with its master (the client retries under its id).
	werr := pipes.exec(ctx)
	for j, i := range idx {
		if cmds[j] == nil {
			errs[i] = werr
			continue
		}
		v, err := cmds[j].Result()
		switch {
		case isNoScript(err):
			noScript = append(noScript, i)
		case isScriptError(err):
			errs[i] = fmt.Errorf("store: authorize %s: %w", ops[i].ID, err)
		case err != nil:
			errs[i] = fmt.Errorf("%w: authorize: %w", ErrRedis, err)
		case werr != nil:
			errs[i] = werr
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
