package meter

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/usage"
	"github.com/redis/go-redis/v9"
)

// RebuildDiff is one value where the meter's state (Held) and the rebuilt
// state differ; "" is a value that is not there.
type RebuildDiff struct {
	Tag    string // the uid, "global", or "i.<source>"
	Kind   string // grant, counter or gauge
	Metric string
	// Field is, for a grant: used, start, end, notified (the thresholds
	// crossed this period) or pending (notices not yet published); for a
	// counter or gauge, the label set ("" for none).
	Field   string
	Held    string
	Rebuilt string
}

// stateKey is a key of meter state, split: {tag}:kind:rest.
type stateKey struct {
	tag, kind, rest string
}

// parseStateKey splits key under k's prefix; ok is false for a key that
// is not of the form {tag}:kind:rest.
func parseStateKey(k keys.Keys, key string) (stateKey, bool) {
	rest, ok := strings.CutPrefix(key, k.Prefix()+"{")
	if !ok {
		return stateKey{}, false
	}
	tag, rest, ok := strings.Cut(rest, "}:")
	if !ok {
		return stateKey{}, false
	}
	kind, rest, _ := strings.Cut(rest, ":") // {tag}:seqs has no rest
	if kind == "" {
		return stateKey{}, false
	}
	return stateKey{tag, kind, rest}, true
}

// scopePattern is the SCAN pattern of every key of the rebuild's scope
// under k: one uid's, or every tagged key.
func (r *rebuilder) scopePattern(k keys.Keys) string {
	if r.opts.UID != "" {
		return k.Prefix() + "{" + keys.UserTag(r.opts.UID) + "}:*"
	}
	return k.Prefix() + "{*}:*"
}

// scanKeys calls fn with every key matching pattern (on a Cluster, on
// every master).
func scanKeys(ctx context.Context, rdb redis.UniversalClient, pattern string, fn func(string) error) error {
	scan := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			if err := fn(iter.Val()); err != nil {
				return err
			}
		}
		return iter.Err()
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return scan(ctx, node)
		})
	}
	return scan(ctx, rdb)
}

// deleteUnder deletes every key matching pattern.
func deleteUnder(ctx context.Context, rdb redis.UniversalClient, pattern string) error {
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		pipe := rdb.Pipeline()
		for _, k := range batch {
			pipe.Unlink(ctx, k)
		}
		_, err := pipe.Exec(ctx)
		batch = batch[:0]
		return err
	}
	err := scanKeys(ctx, rdb, pattern, func(key string) error {
		batch = append(batch, key)
		if len(batch) >= 1000 {
			return flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}

// isState tells the keys a rebuild replaces: grant state, counters and
// gauges, dedup records (of events and of authorize ids, which share
// them: SETs "ids", and the "e" keys of older versions; the ZSETs "seqs"
// of stream-position records). Overrides (grants), rate-limit windows
// and everything else stay. A rebuild of one uid replays into a scratch
// space and swaps it in (swap); on a single Redis it replays into
// stream-position records of its own, leaving the shared ones (which
// still say what the live consumer must not apply again).
func isState(sk stateKey) bool {
	switch sk.kind {
	case "g", "c", "e", "ids", "seqs":
		return true
	}
	return false
}

// globEscape escapes the characters a SCAN MATCH pattern treats as glob.
func globEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`*?[]\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// clear deletes the meter state from the live key space before a whole
// rebuild, and the instance index, which the replay builds again. It
// returns how many keys it deleted.
func (r *rebuilder) clear(ctx context.Context) (int, error) {
	var doomed []string
	err := scanKeys(ctx, r.deps.Redis, r.scopePattern(r.live), func(key string) error {
		if sk, ok := parseStateKey(r.live, key); ok && isState(sk) {
			doomed = append(doomed, key)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("meter: rebuild: redis: scan: %w", err)
	}
	doomed = append(doomed, r.live.Instances())
	total := len(doomed)
	for len(doomed) > 0 {
		n := min(len(doomed), 1000)
		pipe := r.deps.Redis.Pipeline()
		for _, k := range doomed[:n] {
			pipe.Unlink(ctx, k)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, fmt.Errorf("meter: rebuild: redis: delete: %w", err)
		}
		doomed = doomed[n:]
	}
	return total, nil
}

// swap puts a one-uid rebuild's scratch state (r.target) in place of the
// uid's live state with one rebuild_swap.lua call, and returns how many
// live keys it replaced. Grants, counters, gauges and stream-position
// records move over the live ones; the scratch dedup records join the
// live ones (which hold what was applied live, and authorize ids): the
// state then holds every replayed event, and each is recorded. On a
// single Redis the dedup SETs are shared by every uid: the uid's
// scratch ones (they hold only its members) join them the same way.
func (r *rebuilder) swap(ctx context.Context) (int, error) {
	var del, src, dst, usrc, udst []string
	err := scanKeys(ctx, r.deps.Redis, r.scopePattern(r.live), func(key string) error {
		if sk, ok := parseStateKey(r.live, key); ok && isState(sk) && sk.kind != "ids" {
			del = append(del, key)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("meter: rebuild: redis: scan: %w", err)
	}
	liveName := func(key string) string { return r.live.Prefix() + strings.TrimPrefix(key, r.target.Prefix()) }
	err = scanKeys(ctx, r.deps.Redis, r.scopePattern(r.target), func(key string) error {
		sk, ok := parseStateKey(r.target, key)
		switch {
		case !ok || !isState(sk):
		case sk.kind == "ids":
			usrc, udst = append(usrc, key), append(udst, liveName(key))
		default:
			src, dst = append(src, key), append(dst, liveName(key))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("meter: rebuild: redis: scan: %w", err)
	}
	if _, cluster := r.deps.Redis.(*redis.ClusterClient); !cluster {
		err = scanKeys(ctx, r.deps.Redis, r.target.Prefix()+"{"+keys.DedupTag+"}:ids:*", func(key string) error {
			usrc, udst = append(usrc, key), append(udst, liveName(key))
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("meter: rebuild: redis: scan: %w", err)
		}
	}
	if len(del)+len(src)+len(usrc) == 0 {
		return 0, nil
	}
	ks := slices.Concat(del, src, dst, usrc, udst)
	if err := r.swapScript.Run(ctx, r.deps.Redis, ks, len(del), len(src), len(usrc)).Err(); err != nil {
		return 0, fmt.Errorf("meter: rebuild: redis: put the rebuilt state in place: %w", err)
	}
	return len(del), nil
}

// copyOverrides copies the grant overrides of the scope into the scratch
// space of a dry run: the stream does not hold them, and thresholds are
// percentages of the limit.
func (r *rebuilder) copyOverrides(ctx context.Context) error {
	var found []stateKey
	err := scanKeys(ctx, r.deps.Redis, r.scopePattern(r.live), func(key string) error {
		if rest, ok := strings.CutPrefix(key, r.live.Prefix()+"{"); ok && strings.HasSuffix(rest, "}:grants") {
			found = append(found, stateKey{tag: strings.TrimSuffix(rest, "}:grants")})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("meter: rebuild: redis: scan: %w", err)
	}
	for _, sk := range found {
		vals, err := r.deps.Redis.HGetAll(ctx, r.live.Grants(sk.tag)).Result()
		if err != nil {
			return fmt.Errorf("meter: rebuild: redis: read grants of %s: %w", sk.tag, err)
		}
		if len(vals) == 0 {
			continue
		}
		if err := r.deps.Redis.HSet(ctx, r.target.Grants(sk.tag), vals).Err(); err != nil {
			return fmt.Errorf("meter: rebuild: redis: copy grants of %s: %w", sk.tag, err)
		}
	}
	return nil
}

// readState reads every grant, counter and gauge hash of the scope under
// k, by key without its prefix.
func (r *rebuilder) readState(ctx context.Context, k keys.Keys) (map[string]map[string]string, error) {
	var found []string
	err := scanKeys(ctx, r.deps.Redis, r.scopePattern(k), func(key string) error {
		if sk, ok := parseStateKey(k, key); ok && (sk.kind == "g" || sk.kind == "c") {
			found = append(found, key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("meter: rebuild: redis: scan: %w", err)
	}
	out := make(map[string]map[string]string, len(found))
	for len(found) > 0 {
		n := min(len(found), 500)
		pipe := r.deps.Redis.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, n)
		for i, key := range found[:n] {
			cmds[i] = pipe.HGetAll(ctx, key)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("meter: rebuild: redis: read state: %w", err)
		}
		for i, key := range found[:n] {
			if v := cmds[i].Val(); len(v) > 0 {
				out[strings.TrimPrefix(key, k.Prefix())] = v
			}
		}
		found = found[n:]
	}
	return out, nil
}

// diff compares the meter's state with the rebuilt one. Grant state of a
// period that has ended on both sides (or on the one side that has it)
// is left out: nothing reads it, and Redis drops it an hour later.
func (r *rebuilder) diff(ctx context.Context) ([]RebuildDiff, error) {
	held, err := r.readState(ctx, r.live)
	if err != nil {
		return nil, err
	}
	rebuilt, err := r.readState(ctx, r.target)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for k := range held {
		names[k] = true
	}
	for k := range rebuilt {
		names[k] = true
	}
	sorted := make([]string, 0, len(names))
	for k := range names {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	nowMs := r.now.UnixMilli()
	ended := func(h map[string]string) bool {
		if h == nil {
			return true
		}
		e, err := strconv.ParseInt(h["e"], 10, 64)
		return err == nil && e > 0 && e <= nowMs
	}
	var out []RebuildDiff
	for _, name := range sorted {
		sk, _ := parseStateKey(keys.New(""), name)
		h, b := held[name], rebuilt[name]
		if sk.kind == "g" {
			if ended(h) && ended(b) {
				continue
			}
			for _, f := range []struct{ field, name string }{{"u", "used"}, {"s", "start"}, {"e", "end"}, {"n", "notified"}, {"q", "pending"}} {
				hv, bv := grantField(h, f.field), grantField(b, f.field)
				if hv != bv {
					out = append(out, RebuildDiff{Tag: sk.tag, Kind: usage.StyleGrant, Metric: sk.rest, Field: f.name, Held: hv, Rebuilt: bv})
				}
			}
			continue
		}
		kind := usage.StyleCounter
		if mc, ok := r.cfg.Usage.Metric(sk.rest); ok {
			kind = mc.Style
		}
		fields := map[string]bool{}
		for f := range h {
			fields[f] = true
		}
		for f := range b {
			fields[f] = true
		}
		fs := make([]string, 0, len(fields))
		for f := range fields {
			fs = append(fs, f)
		}
		sort.Strings(fs)
		for _, f := range fs {
			if h[f] != b[f] {
				out = append(out, RebuildDiff{Tag: sk.tag, Kind: kind, Metric: sk.rest, Field: f, Held: h[f], Rebuilt: b[f]})
			}
		}
	}
	return out, nil
}

// grantField reads field f of a grant hash as a diff shows it: times as
// RFC 3339, "" for what is not there (an empty pending list or an unset
// used reads as absent, as the scripts treat them).
func grantField(h map[string]string, f string) string {
	if h == nil {
		return ""
	}
	v := h[f]
	switch f {
	case "s", "e":
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms == 0 {
			return v
		}
		return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
	case "n":
		if strings.Trim(v, "0") == "" {
			return ""
		}
	}
	return v
}
