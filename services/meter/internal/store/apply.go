package store

import (
	"context"
	"fmt"
	"slices"
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
	// Partition is the usage stream partition the event is stored in
	// (streams.partitions; 0 when not partitioned): with StreamDedup its
	// stream-position records and ack floor are the partition's own.
	Partition int
	// Follows says the op before this one of the same partition in the
	// chunk is the message right before it in the partition (delivered
	// first, one after the other; or read one after the other by a
	// rebuild): with StreamDedup and partitions the two are recorded as
	// one run although their stream sequences are apart.
	Follows bool
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
	Applied bool // false: a duplicate, nothing changed
	// Grant is a grant's state after the chunk (when its last event did
	// not fail, and the store was opened with GrantStates or the grant
	// holds notices), and Notices the notices it holds to publish (also
	// when every event was a duplicate, so notices lost in a crash are
	// published again): both on the last event of each grant in a chunk.
	Grant   *GrantState
	Notices []Notice
	Crossed []Notice // the notices this event crossed, when applied
	Err     error    // this op failed inside Redis (not a connection failure)
}

// Tag returns the hash tag of the state an op changes, which its dedup
// record shares on a Cluster.
func Tag(op Op) string {
	switch op.Config.Scope {
	case usage.ScopeGlobal:
		return keys.GlobalTag
	case usage.ScopeInstance:
		return keys.InstanceTag(op.Source)
	}
	return keys.UserTag(op.UID)
}

// Apply applies ops in one round trip: on a single Redis one
// apply_chunk.lua call for the chunk; on a Cluster one call per hash tag,
// pipelined. The error is non-nil only when the round trip itself failed
// (Redis down, a timeout): then nothing can be said of any op, and the
// caller retries them all, which the dedup records make safe.
func (s *Store) Apply(ctx context.Context, ops []Op) ([]Result, error) {
	return s.ApplyCovering(ctx, ops, 0)
}

// ApplyCovering is Apply for a chunk whose events up to stream sequence
// covered are acked without an op (refused before the script): the same
// call raises the epoch marker over them too (RaiseEpoch's job, without
// its round trip).
func (s *Store) ApplyCovering(ctx context.Context, ops []Op, covered uint64) ([]Result, error) {
	return s.ApplyPrepared(ctx, s.PrepareApply(ops, covered))
}

// Chunk is a chunk of ops with its script calls built, by PrepareApply,
// to apply later with ApplyPrepared: the building, which needs no Redis,
// can then run while the chunk before is applied.
type Chunk struct {
	ops     []Op
	covered uint64
	parts   [][]int
	calls   []chunkCall
}

// chunkCall is one apply_chunk.lua call of a chunk.
type chunkCall struct {
	keys   []string
	args   []any
	groups []chunkGroup
}

// PrepareApply builds the script calls that apply ops, as
// ApplyCovering(ctx, ops, covered) would.
func (s *Store) PrepareApply(ops []Op, covered uint64) *Chunk {
	c := &Chunk{ops: ops, covered: covered}
	if len(ops) == 0 {
		return c
	}
	c.parts = [][]int{make([]int, len(ops))}
	for i := range ops {
		c.parts[0][i] = i
	}
	if s.cluster {
		c.parts = byTag(ops)
	}
	if s.stream && s.partitions > 0 {
		c.parts = byPartition(ops, c.parts)
	}
	c.calls = s.chunkCalls(ops, c.parts, covered)
	return c
}

// ApplyPrepared applies a chunk PrepareApply built: Apply's round trip.
func (s *Store) ApplyPrepared(ctx context.Context, c *Chunk) ([]Result, error) {
	ops, covered := c.ops, c.covered
	if len(ops) == 0 {
		return nil, nil
	}
	results, err := s.applyCalls(ctx, ops, c.parts, c.calls)
	if err != nil && isNoScript(err) {
		if lerr := s.Load(ctx); lerr != nil {
			return nil, lerr
		}
		results, err = s.applyCalls(ctx, ops, c.parts, c.calls)
	}
	if err == nil || !isScriptError(err) {
		return results, err
	}
	// A call failed as a whole (it should not: a key of the wrong type
	// fails only its own events). What it applied is recorded; send the
	// events one by one, which the dedup records make safe and which
	// tells the failing event apart.
	results = make([]Result, len(ops))
	for i := range ops {
		part := [][]int{{i}}
		res, err := s.applyCalls(ctx, ops, part, s.chunkCalls(ops, part, covered))
		switch {
		case err == nil:
			results[i] = res[i]
		case isScriptError(err):
			results[i].Err = fmt.Errorf("store: apply event %s: %w", ops[i].ID, err)
		default:
			return nil, err
		}
	}
	return results, nil
}

// byTag splits ops by hash tag, each part in stream order.
func byTag(ops []Op) [][]int {
	var parts [][]int
	index := map[string]int{}
	for i, op := range ops {
		tag := Tag(op)
		p, ok := index[tag]
		if !ok {
			p = len(parts)
			index[tag] = p
			parts = append(parts, nil)
		}
		parts[p] = append(parts[p], i)
	}
	return parts
}

// byPartition splits each part by the ops' partition: a call records
// stream positions in one partition's records.
func byPartition(ops []Op, parts [][]int) [][]int {
	var out [][]int
	for _, part := range parts {
		index := map[int]int{}
		first := len(out)
		for _, i := range part {
			p, ok := index[ops[i].Partition]
			if !ok {
				p = len(out) - first
				index[ops[i].Partition] = p
				out = append(out, nil)
			}
			out[first+p] = append(out[first+p], i)
		}
	}
	return out
}

// Dedup bounds: an id is remembered from its time t until at least t +
// the dedup TTL. It is recorded in the SET of bucket t/TTL and looked for
// in the buckets from (t-TTL)/TTL to (t+skew)/TTL: the bucket before,
// its own, and the next one near its end, should the clocks that stamped
// two records of one id (the stream's, Redis's, a meter's) disagree by
// up to skew.
const maxSkew = time.Minute

func (s *Store) skew() int64 {
	return min(maxSkew, s.dedupTTL/8).Milliseconds()
}

// DedupRecord returns the SET and the member that record op's id once it
// is applied.
func (s *Store) DedupRecord(op Op) (set, member string) {
	return s.keys.DedupRecord(Tag(op), op.ID, floorDiv(s.opTime(op), s.dedupTTL.Milliseconds()), s.cluster)
}

// dedupSet is the SET of bucket b for state under tag: one for every tag
// on a single Redis (one SMISMEMBER checks a whole chunk), the tag's own
// on a Cluster (a script touches one slot).
func (s *Store) dedupSet(tag string, b int64) string {
	set, _ := s.keys.DedupRecord(tag, "", b, s.cluster)
	return set
}

func (s *Store) dedupMember(tag, id string) string {
	_, member := s.keys.DedupRecord(tag, id, 0, s.cluster)
	return member
}

// opTime is op's time in ms, as its dedup buckets are chosen: the
// stream's, else the store's clock.
func (s *Store) opTime(op Op) int64 {
	if at := s.opNow(op); at > 0 {
		return at
	}
	return time.Now().UnixMilli()
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// window returns the buckets op's id is looked for in and recorded in,
// and how long its record must last.
func (s *Store) window(t int64) (lo, hi, b, ttl int64) {
	w, skew := s.dedupTTL.Milliseconds(), s.skew()
	b = floorDiv(t, w)
	return floorDiv(t-w, w), floorDiv(t+skew, w), b, (b+2)*w + 2*skew - t
}

type chunkGroup struct {
	key, over string
	kind      any // the style of a counter or gauge, a grant's configuration (from 1)
	last      int // the index in ops of the group's last event
}

// chunkCalls builds the apply_chunk.lua call of each part of ops.
func (s *Store) chunkCalls(ops []Op, parts [][]int, covered uint64) []chunkCall {
	calls := make([]chunkCall, len(parts))
	var prev []int
	if s.stream && s.partitions > 0 {
		prev = prevInPartition(ops)
	}
	for p, part := range parts {
		c := &calls[p]
		c.keys, c.args, c.groups = s.chunkArgs(ops, part, covered, prev)
	}
	return calls
}

// prevInPartition is, for each op, the index of the op before it of the
// same partition (-1: none).
func prevInPartition(ops []Op) []int {
	prev := make([]int, len(ops))
	last := map[int]int{}
	for i, op := range ops {
		j, ok := last[op.Partition]
		if !ok {
			j = -1
		}
		prev[i], last[op.Partition] = j, i
	}
	return prev
}

// applyCalls makes each part's call, pipelined; each part's events share
// a slot on a Cluster.
func (s *Store) applyCalls(ctx context.Context, ops []Op, parts [][]int, calls []chunkCall) ([]Result, error) {
	pipes := s.newPipes()
	cmds := make([]*redis.Cmd, len(parts))
	var sources []any
	for p, part := range parts {
		if pipe := pipes.pipe(ctx, calls[p].keys[0]); pipe != nil {
			cmds[p] = s.applyChunk.EvalSha(ctx, pipe, calls[p].keys, calls[p].args...)
		}
		for _, i := range part {
			if ops[i].Config.Scope == usage.ScopeInstance {
				sources = append(sources, ops[i].Source)
			}
		}
	}
	if len(sources) > 0 {
		// The index /metrics reads; idempotent, so outside the scripts.
		// (Asked for only then: with WaitReplicas on a Cluster, a master
		// asked for a pipeline is waited for.)
		if pipe := pipes.pipe(ctx, s.keys.Instances()); pipe != nil {
			pipe.SAdd(ctx, s.keys.Instances(), sources...)
		}
	}
	if err := pipes.exec(ctx); err != nil {
		for _, cmd := range cmds {
			if cmd != nil && isNoScript(cmd.Err()) {
				return nil, cmd.Err() // load the scripts, then try again
			}
		}
		return nil, err
	}
	results := make([]Result, len(ops))
	for p, cmd := range cmds {
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
		if err := parseChunkReply(v, ops, parts[p], calls[p].groups, results); err != nil {
			return nil, err
		}
	}
	s.noteApplied(ops, parts)
	return results, nil
}

// noteApplied records, on a Cluster with Guard, the highest sequence of
// each part applied in its slot: the slot's marker is at least that now,
// and found below it later, the slot's master went back in time
// (AppliedSlots).
func (s *Store) noteApplied(ops []Op, parts [][]int) {
	if s.applied == nil {
		return
	}
	for _, part := range parts {
		var seq uint64
		for _, i := range part {
			seq = max(seq, ops[i].Seq)
		}
		a := &s.applied[keys.Slot(Tag(ops[part[0]]))]
		for old := a.Load(); seq > old && !a.CompareAndSwap(old, seq); old = a.Load() {
		}
	}
}

// chunkArgs builds the keys and arguments of one apply_chunk.lua call
// for ops[part...] (see the script for their layout) and its groups: the
// distinct states the events change, in order of first use.
func (s *Store) chunkArgs(ops []Op, part []int, covered uint64, prev []int) ([]string, []any, []chunkGroup) {
	// The chunk's dedup SETs: every bucket from the lowest any event looks
	// in to the highest, so an event's are a run of consecutive indexes.
	type window struct{ lo, hi, b, ttl int64 }
	wins := make([]window, len(part))
	for j, i := range part {
		w := &wins[j]
		w.lo, w.hi, w.b, w.ttl = s.window(s.opTime(ops[i]))
	}
	first, last := wins[0].lo, wins[0].hi
	for _, w := range wins {
		first, last = min(first, w.lo), max(last, w.hi)
	}
	setTag := Tag(ops[part[0]]) // a Cluster's calls are one tag each
	setKeys := make([]string, 0, last-first+1)
	ttls := make([]int64, last-first+1)
	for b := first; b <= last; b++ {
		setKeys = append(setKeys, s.dedupSet(setTag, b))
	}
	index := func(b int64) int { return int(b-first) + 1 } // the scripts count from 1

	var groups []chunkGroup
	groupOf := map[string]int{}
	// A grant's configuration is sent once per chunk, however many uids'
	// grants of the metric it holds: found by its metric, limit, period
	// and align, then its thresholds compared (they differ only in tests).
	type grantKey struct {
		metric        string
		limit         float64
		period, align string
	}
	var configs [][]any
	var thresholds [][]float64
	configOf := map[grantKey][]int{}
	type windowArgs struct{ lo, hi, add int }
	var windows []windowArgs
	windowOf := map[windowArgs]int{}
	evArgs := make([]any, 0, 1+6*len(part))
	evArgs = append(evArgs, len(part))
	var seq uint64
	for j, i := range part {
		op, w := ops[i], wins[j]
		tag := Tag(op)
		var key, over string
		var x any
		if op.Config.Style == usage.StyleGrant {
			key, over, x = s.keys.Grant(op.UID, op.Metric), s.keys.Grants(op.UID), s.opNow(op)
		} else {
			key = s.keys.Values(tag, op.Metric)
			over, x = key, op.Field
		}
		g, ok := groupOf[key]
		if !ok {
			g = len(groups)
			groupOf[key] = g
			var kind any = op.Config.Style
			if op.Config.Style == usage.StyleGrant {
				k := grantKey{op.Metric, op.Limit, op.Config.Period, op.Config.Align}
				c := 0
				for _, i := range configOf[k] {
					if slices.Equal(thresholds[i-1], op.Config.Notify) {
						c = i
						break
					}
				}
				if c == 0 {
					configs = append(configs, grantArgs(op))
					thresholds = append(thresholds, op.Config.Notify)
					c = len(configs)
					configOf[k] = append(configOf[k], c)
				}
				kind = c
			}
			groups = append(groups, chunkGroup{key: key, over: over, kind: kind})
		}
		groups[g].last = i
		ttls[w.b-first] = max(ttls[w.b-first], w.ttl)
		wa := windowArgs{index(w.lo), index(w.hi), index(w.b)}
		wi, ok := windowOf[wa]
		if !ok {
			windows = append(windows, wa)
			wi = len(windows)
			windowOf[wa] = wi
		}
		seqArg := int64(op.Seq)
		if op.Follows && prev != nil && j > 0 && part[j-1] == prev[i] {
			seqArg = -seqArg // the script joins it to the run of the op before
		}
		evArgs = append(evArgs, g+1, wi, s.dedupMember(tag, op.ID), decimal(op.Value), x, seqArg)
		seq = max(seq, op.Seq)
	}
	keyList := make([]string, 0, len(setKeys)+2*len(groups)+1)
	keyList = append(keyList, setKeys...)
	args := make([]any, 0, 4+len(setKeys)+8*len(configs)+len(groups)+3*len(windows)+len(evArgs)+1)
	args = append(args, len(setKeys))
	for _, ttl := range ttls {
		args = append(args, ttl)
	}
	args = append(args, len(configs))
	for _, c := range configs {
		args = append(args, len(c))
		args = append(args, c...)
	}
	args = append(args, len(groups))
	for _, g := range groups {
		keyList = append(keyList, g.key, g.over)
		args = append(args, g.kind)
	}
	args = append(args, len(windows))
	for _, w := range windows {
		args = append(args, w.lo, w.hi, w.add)
	}
	args = append(args, evArgs...)
	flags := 0
	if s.grantStates {
		flags++
	}
	if s.oneByOne {
		flags += 2
	}
	args = append(args, flags)
	if s.stream {
		p := ops[part[0]].Partition
		keyList = append(keyList, s.seqsKey(setTag, p))
		args = append(args, 1, s.ackFloor(p), 2*s.dedupTTL.Milliseconds())
	} else {
		args = append(args, 0)
	}
	switch {
	case s.guard && s.cluster:
		// The marker of the call's own slot; the events refused before
		// the script changed no state in it.
		keyList = append(keyList, s.slotEpochs[keys.Slot(setTag)])
		args = append(args, seq)
	case s.guard:
		keyList = append(keyList, s.keys.MeterEpoch())
		args = append(args, max(seq, covered))
	}
	return keyList, args, groups
}

// grantArgs are the arguments of a grant's configuration: its metric,
// default limit, period, align and thresholds.
func grantArgs(op Op) []any {
	args := []any{op.Metric, decimal(op.Limit), op.Config.Period, op.Config.Align}
	for _, t := range op.Config.Notify {
		args = append(args, strconv.FormatFloat(t, 'g', -1, 64))
	}
	return args
}

// parseChunkReply fills in the results of ops[part...] from one
// apply_chunk.lua reply: each event's status and the notices it crossed;
// each grant's state after the chunk and its pending notices on the
// group's last event.
func parseChunkReply(v any, ops []Op, part []int, groups []chunkGroup, results []Result) error {
	arr, ok := v.([]any)
	if !ok || len(arr) != 2 {
		return fmt.Errorf("store: apply_chunk: unexpected reply %v", v)
	}
	evs, _ := arr[0].([]any)
	states, _ := arr[1].([]any)
	if len(evs) != len(part) || len(states) != len(groups) {
		return fmt.Errorf("store: apply_chunk: %d replies for %d events, %d for %d groups", len(evs), len(part), len(states), len(groups))
	}
	for j, r := range evs {
		i := part[j]
		res, err := parseEventReply(r, ops[i])
		if err != nil {
			res = Result{Err: fmt.Errorf("store: apply event %s: %w", ops[i].ID, err)}
		}
		results[i] = res
	}
	for g, st := range states {
		sa, ok := st.([]any)
		if !ok {
			continue // not a grant, or a grant whose state failed to load
		}
		if len(sa) != 5 {
			return fmt.Errorf("store: apply_chunk: unexpected grant state %v", st)
		}
		state, err := grantState(append([]any{nil}, sa[:4]...))
		if err != nil {
			return fmt.Errorf("store: apply_chunk: %w", err)
		}
		res := &results[groups[g].last]
		if res.Err == nil {
			res.Grant = &state
		}
		if pending, _ := sa[4].(string); pending != "" {
			if res.Notices, err = ParseNotices(pending); err != nil {
				return fmt.Errorf("store: apply_chunk: %w", err)
			}
		}
	}
	return nil
}

// parseEventReply reads one event's status: 1, {1, crossed}, 0,
// {-1, error} or {-2, held} (a *RangeError).
func parseEventReply(v any, op Op) (Result, error) {
	if status, ok := v.(int64); ok && (status == 0 || status == 1) {
		return Result{Applied: status == 1}, nil
	}
	arr, ok := v.([]any)
	if !ok || len(arr) != 2 {
		return Result{}, fmt.Errorf("unexpected script reply %v", v)
	}
	status, _ := arr[0].(int64)
	switch status {
	case 1:
		crossed, _ := arr[1].(string)
		ns, err := ParseNotices(crossed)
		if err != nil {
			return Result{}, err
		}
		return Result{Applied: true, Crossed: ns}, nil
	case -2:
		held, _ := arr[1].(string)
		return Result{Err: &RangeError{Value: decimal(op.Value), Held: held}}, nil
	case -1:
		return Result{}, fmt.Errorf("%v", arr[1])
	}
	return Result{}, fmt.Errorf("unexpected script reply %v", v)
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
