package auth

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/services/auth/internal/apikey"
	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"
)

var (
	//go:embed create_key.lua
	createKeyLua string
	//go:embed revoke_key.lua
	revokeKeyLua string
	//go:embed adjust_key.lua
	adjustKeyLua string
	//go:embed touch_key.lua
	touchKeyLua string
)

// touchEvery is how often Touch writes one key's last use at most.
const touchEvery = time.Second

// listChunk is how many keys one List pipeline reads.
const listChunk = 256

// redisClient is what the redis backend needs of a go-redis client.
type redisClient interface {
	redis.Scripter
	Pipeline() redis.Pipeliner
	SMembers(ctx context.Context, key string) *redis.StringSliceCmd
}

// redisBackend keeps API keys in Redis: the "redis" backend, allot's
// default. It takes no options (auth.backend.options must be empty); it
// uses the service's Redis client and key prefix.
//
// Layout (pkg/keys; every key under the hash tag {auth}, so the scripts
// and pipelines run on Redis Cluster):
//
//	<prefix>{auth}:key:<id>  HASH  record: the immutable part as JSON (times in ms);
//	                               revoked: ms; last_used: ms
//	<prefix>{auth}:adj:<id>  HASH  "allow:<pattern>" or "deny:<pattern>" -> the adjustment
//	                               as JSON (created_ms, expires_ms)
//	<prefix>{auth}:keys      SET   every key id
//
// Times are stored to the millisecond. Create, Revoke, Adjust and Touch
// are one Lua script each, checking the key exists and writing in one
// step; Get and List read in one round trip (a pipeline per 256 keys for
// List). An adjustment replaces the key's earlier one of the same kind
// and pattern (a new expiry, sooner or later), and Adjust removes the
// key's expired ones; Get and List leave expired ones out of what they
// return, measured on the backend's clock.
//
// Watch never calls back: every change goes through the auth service's
// endpoints, which tell every replica of the service themselves.
type redisBackend struct {
	rdb  redisClient
	keys keys.Keys
	now  func() time.Time

	create, revoke, adjust, touch *redis.Script

	mu      sync.Mutex
	touched map[string]time.Time // when Touch last wrote each key
	swept   time.Time            // when touched was last swept
}

// newRedisBackend is the "redis" BackendFactory.
func newRedisBackend(options yaml.Node, deps BackendDeps) (Backend, error) {
	var opts struct{}
	if err := decodeOptions(options, &opts); err != nil {
		return nil, fmt.Errorf("%w (the redis backend takes none)", err)
	}
	if deps.Redis == nil {
		return nil, errors.New("the redis backend needs a Redis client")
	}
	return &redisBackend{
		rdb:     deps.Redis,
		keys:    keys.New(deps.KeyPrefix),
		now:     time.Now,
		create:  redis.NewScript(createKeyLua),
		revoke:  redis.NewScript(revokeKeyLua),
		adjust:  redis.NewScript(adjustKeyLua),
		touch:   redis.NewScript(touchKeyLua),
		touched: map[string]time.Time{},
	}, nil
}

// storedRecord is the immutable part of a Record as Redis holds it (a
// field added to Record needs its place here, or in the key's HASH).
type storedRecord struct {
	ID        string   `json:"id"`
	Hash      string   `json:"hash"`
	Role      string   `json:"role"`
	UIDs      []string `json:"uids,omitempty"`
	Note      string   `json:"note,omitempty"`
	CreatedMS int64    `json:"created_ms,omitempty"`
	ExpiresMS int64    `json:"expires_ms,omitempty"`
}

// storedAdjustment is an Adjustment as Redis holds it; adjust_key.lua
// reads expires_ms.
type storedAdjustment struct {
	Allow     string `json:"allow,omitempty"`
	Deny      string `json:"deny,omitempty"`
	CreatedMS int64  `json:"created_ms,omitempty"`
	ExpiresMS int64  `json:"expires_ms"`
}

// ms is t in Unix milliseconds, 0 for the zero time.
func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// fromMS is the inverse of ms, in UTC.
func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

// adjustmentField is the field of a in the key's adjustments HASH: one
// per kind and pattern.
func adjustmentField(a Adjustment) string {
	if a.Deny != "" {
		return "deny:" + a.Deny
	}
	return "allow:" + a.Allow
}

func encodeAdjustment(a Adjustment) (string, error) {
	b, err := json.Marshal(storedAdjustment{Allow: a.Allow, Deny: a.Deny, CreatedMS: ms(a.Created), ExpiresMS: ms(a.Expires)})
	return string(b), err
}

// checkID refuses an id that cannot name a key, as not found.
func checkID(id string) error {
	if err := apikey.CheckID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return nil
}

// Get returns the key with id, without its expired adjustments.
func (b *redisBackend) Get(ctx context.Context, id string) (Record, error) {
	if err := checkID(id); err != nil {
		return Record{}, err
	}
	pipe := b.rdb.Pipeline()
	rec := pipe.HGetAll(ctx, b.keys.AuthKey(id))
	adj := pipe.HGetAll(ctx, b.keys.AuthAdjustments(id))
	if _, err := pipe.Exec(ctx); err != nil {
		return Record{}, fmt.Errorf("auth: redis backend: get %s: %w: %w", id, ErrUnavailable, err)
	}
	if len(rec.Val()) == 0 {
		return Record{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return decodeRecord(id, rec.Val(), adj.Val(), b.now())
}

// List returns every key, sorted by id, without expired adjustments.
func (b *redisBackend) List(ctx context.Context) ([]Record, error) {
	ids, err := b.rdb.SMembers(ctx, b.keys.AuthKeys()).Result()
	if err != nil {
		return nil, fmt.Errorf("auth: redis backend: list: %w: %w", ErrUnavailable, err)
	}
	slices.Sort(ids)
	now := b.now()
	out := make([]Record, 0, len(ids))
	for chunk := range slices.Chunk(ids, listChunk) {
		pipe := b.rdb.Pipeline()
		recs := make([]*redis.MapStringStringCmd, len(chunk))
		adjs := make([]*redis.MapStringStringCmd, len(chunk))
		for i, id := range chunk {
			recs[i] = pipe.HGetAll(ctx, b.keys.AuthKey(id))
			adjs[i] = pipe.HGetAll(ctx, b.keys.AuthAdjustments(id))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("auth: redis backend: list: %w: %w", ErrUnavailable, err)
		}
		for i, id := range chunk {
			if len(recs[i].Val()) == 0 {
				continue // not written by create_key.lua: nothing to list
			}
			r, err := decodeRecord(id, recs[i].Val(), adjs[i].Val(), now)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// decodeRecord makes a Record of a key's two HASHes, leaving out the
// adjustments expired at now. Anything that does not decode is an error:
// dropping an override unread would widen the key.
func decodeRecord(id string, rec, adj map[string]string, now time.Time) (Record, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("auth: redis backend: key %s is corrupt: %s", id, fmt.Sprintf(format, args...))
	}
	var s storedRecord
	if err := json.Unmarshal([]byte(rec["record"]), &s); err != nil {
		return Record{}, bad("record: %v", err)
	}
	if s.ID != id {
		return Record{}, bad("record: holds id %q", s.ID)
	}
	r := Record{ID: s.ID, Hash: s.Hash, Role: s.Role, UIDs: s.UIDs, Note: s.Note,
		Created: fromMS(s.CreatedMS), Expires: fromMS(s.ExpiresMS)}
	for _, f := range []struct {
		name string
		dst  *time.Time
	}{{"revoked", &r.Revoked}, {"last_used", &r.LastUsed}} {
		v, ok := rec[f.name]
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return Record{}, bad("%s: %q is not a time in ms", f.name, v)
		}
		*f.dst = fromMS(n)
	}
	for field, v := range adj {
		var sa storedAdjustment
		if err := json.Unmarshal([]byte(v), &sa); err != nil {
			return Record{}, bad("adjustment %q: %v", field, err)
		}
		a := Adjustment{Allow: sa.Allow, Deny: sa.Deny, Created: fromMS(sa.CreatedMS), Expires: fromMS(sa.ExpiresMS)}
		if err := a.check(); err != nil {
			return Record{}, bad("adjustment %q: %v", field, err)
		}
		if adjustmentField(a) != field {
			return Record{}, bad("adjustment %q: holds %q", field, adjustmentField(a))
		}
		if now.Before(a.Expires) {
			r.Adjustments = append(r.Adjustments, a)
		}
	}
	slices.SortFunc(r.Adjustments, compareAdjustments)
	return r, nil
}

// compareAdjustments orders adjustments as they were made, then by field.
func compareAdjustments(a, b Adjustment) int {
	if c := a.Created.Compare(b.Created); c != 0 {
		return c
	}
	return strings.Compare(adjustmentField(a), adjustmentField(b))
}

// Create stores r (its times to the millisecond); ErrExists if its id is
// taken, ErrBadRecord naming the field if r is not well formed.
func (b *redisBackend) Create(ctx context.Context, r Record) error {
	if err := checkRecord(r); err != nil {
		return err
	}
	rec, err := json.Marshal(storedRecord{ID: r.ID, Hash: r.Hash, Role: r.Role, UIDs: r.UIDs, Note: r.Note,
		CreatedMS: ms(r.Created), ExpiresMS: ms(r.Expires)})
	if err != nil {
		return fmt.Errorf("auth: redis backend: create %s: %w: %w", r.ID, ErrUnavailable, err)
	}
	args := []any{r.ID, string(rec), ms(r.Revoked), ms(r.LastUsed)}
	for _, a := range r.Adjustments {
		v, err := encodeAdjustment(a)
		if err != nil {
			return fmt.Errorf("auth: redis backend: create %s: %w: %w", r.ID, ErrUnavailable, err)
		}
		args = append(args, adjustmentField(a), v)
	}
	n, err := b.create.Run(ctx, b.rdb, []string{b.keys.AuthKey(r.ID), b.keys.AuthAdjustments(r.ID), b.keys.AuthKeys()}, args...).Int()
	if err != nil {
		return fmt.Errorf("auth: redis backend: create %s: %w: %w", r.ID, ErrUnavailable, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrExists, r.ID)
	}
	return nil
}

// Revoke marks the key revoked at at; a key revoked before keeps its
// first revocation time.
func (b *redisBackend) Revoke(ctx context.Context, id string, at time.Time) error {
	if err := checkID(id); err != nil {
		return err
	}
	if at.IsZero() {
		return fmt.Errorf("%w: revoked: missing", ErrBadRecord)
	}
	n, err := b.revoke.Run(ctx, b.rdb, []string{b.keys.AuthKey(id)}, ms(at)).Int()
	if err != nil {
		return fmt.Errorf("auth: redis backend: revoke %s: %w: %w", id, ErrUnavailable, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return nil
}

// Adjust adds a to the key, replacing an adjustment of the same kind and
// pattern, and removes the key's adjustments expired at a.Created (the
// time the caller passes; the backend's clock if a.Created is zero).
func (b *redisBackend) Adjust(ctx context.Context, id string, a Adjustment) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := checkAdjustment(a); err != nil {
		return err
	}
	now := a.Created
	if now.IsZero() {
		now = b.now()
	}
	v, err := encodeAdjustment(a)
	if err != nil {
		return fmt.Errorf("auth: redis backend: adjust %s: %w: %w", id, ErrUnavailable, err)
	}
	n, err := b.adjust.Run(ctx, b.rdb, []string{b.keys.AuthKey(id), b.keys.AuthAdjustments(id)}, ms(now), adjustmentField(a), v).Int()
	if err != nil {
		return fmt.Errorf("auth: redis backend: adjust %s: %w: %w", id, ErrUnavailable, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return nil
}

// Touch records that the key connected at at, writing at most once per
// key per second (by at) from this process: it runs on every connect.
// An id with no key is left alone.
func (b *redisBackend) Touch(ctx context.Context, id string, at time.Time) error {
	if err := checkID(id); err != nil {
		return err
	}
	b.mu.Lock()
	if last, ok := b.touched[id]; ok && at.Before(last.Add(touchEvery)) {
		// Within a second of the last write, or before it (which
		// touch_key.lua would not take anyway).
		b.mu.Unlock()
		return nil
	}
	if d := at.Sub(b.swept); d < 0 || d >= touchEvery {
		// Forget keys not touched for a while, once a second, so the map
		// holds only the keys connecting now.
		for k, t := range b.touched {
			if at.Sub(t) >= touchEvery {
				delete(b.touched, k)
			}
		}
		b.swept = at
	}
	b.touched[id] = at
	b.mu.Unlock()
	if err := b.touch.Run(ctx, b.rdb, []string{b.keys.AuthKey(id)}, ms(at)).Err(); err != nil {
		b.mu.Lock()
		if b.touched[id].Equal(at) {
			delete(b.touched, id) // let the next connect try again
		}
		b.mu.Unlock()
		return fmt.Errorf("auth: redis backend: touch %s: %w: %w", id, ErrUnavailable, err)
	}
	return nil
}

// Watch does nothing: the keys change only through the auth service's
// endpoints, which publish each change to every replica.
func (b *redisBackend) Watch(context.Context, func(id string)) {}

// Close does nothing: the Redis client is the service's.
func (b *redisBackend) Close() error { return nil }
