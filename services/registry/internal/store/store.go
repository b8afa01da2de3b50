// Package store keeps the registry's entries in Redis: one script
// registers (register.lua), one reads the live entries (find.lua), and
// two serve the reaper (expired.lua, reap.lua). Every key comes from
// pkg/keys and carries the tag {registry}; time is Redis TIME unless a
// test passes its own.
package store

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/redis/go-redis/v9"
)

var (
	//go:embed register.lua
	registerLua string
	//go:embed deregister.lua
	deregisterLua string
	//go:embed find.lua
	findLua string
	//go:embed expired.lua
	expiredLua string
	//go:embed reap.lua
	reapLua string
)

// Redis is what the store needs of a go-redis client.
type Redis interface {
	redis.Scripter
}

// Errors of the store.
var (
	// ErrRedis marks a Redis that did not answer or refused to work;
	// retrying later may succeed.
	ErrRedis = errors.New("store: redis unavailable")
	// ErrConflict: the id is held by another live service name.
	ErrConflict = errors.New("store: id held by another name")
)

// Change says what a registration did.
type Change int

// What a registration did.
const (
	Renewed  Change = 0 // a heartbeat: nothing changed
	Appeared Change = 1
	Changed  Change = 2
)

// Store is the registry's Redis state.
type Store struct {
	rdb     Redis
	keys    keys.Keys
	now     func() time.Time // nil: Redis TIME
	scripts []*redis.Script
	reg     *redis.Script
	dereg   *redis.Script
	find    *redis.Script
	expired *redis.Script
	reap    *redis.Script
}

// Options configures a Store.
type Options struct {
	Keys keys.Keys
	// Now overrides Redis TIME (tests). Nil uses Redis TIME, the clock
	// every replica shares.
	Now func() time.Time
}

// New returns a Store with its scripts loaded.
func New(ctx context.Context, rdb Redis, opts Options) (*Store, error) {
	if rdb == nil {
		return nil, errors.New("store: nil redis client")
	}
	s := &Store{rdb: rdb, keys: opts.Keys, now: opts.Now,
		reg: redis.NewScript(registerLua), dereg: redis.NewScript(deregisterLua), find: redis.NewScript(findLua),
		expired: redis.NewScript(expiredLua), reap: redis.NewScript(reapLua)}
	s.scripts = []*redis.Script{s.reg, s.dereg, s.find, s.expired, s.reap}
	if err := s.Load(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Load loads the scripts into Redis, so calls go out as EVALSHA.
func (s *Store) Load(ctx context.Context) error {
	for _, sc := range s.scripts {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("%w: load scripts: %w", ErrRedis, err)
		}
	}
	return nil
}

// Keys returns the key builder.
func (s *Store) Keys() keys.Keys { return s.keys }

func (s *Store) nowMS() int64 {
	if s.now == nil {
		return 0
	}
	return s.now().UnixMilli()
}

// run calls sc by EVALSHA, loading the scripts again once if Redis forgot
// them (a restart, SCRIPT FLUSH).
func (s *Store) run(ctx context.Context, what string, sc *redis.Script, keys []string, args ...any) (any, error) {
	v, err := sc.EvalSha(ctx, s.rdb, keys, args...).Result()
	if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		if err = s.Load(ctx); err == nil {
			v, err = sc.EvalSha(ctx, s.rdb, keys, args...).Result()
		}
	}
	if err != nil {
		if errors.Is(err, ErrRedis) {
			return nil, err
		}
		var rerr redis.Error
		if errors.As(err, &rerr) && (strings.HasPrefix(err.Error(), "ERR ") || strings.HasPrefix(err.Error(), "WRONGTYPE")) {
			return nil, fmt.Errorf("store: %s: %w", what, err)
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrRedis, what, err)
	}
	return v, nil
}

// Registration is what a registration did.
type Registration struct {
	Change  Change
	Expiry  time.Time
	Created time.Time // when the instance first registered
	Seq     uint64    // the name's sequence after the change (unchanged when renewed)
}

// Register stores name/id's ciphertext for ttl and says what changed,
// when the registration expires and when the instance first registered
// (Redis's clock). A live registration of id under another name is
// ErrConflict, naming it.
func (s *Store) Register(ctx context.Context, name, id string, ciphertext []byte, ttl time.Duration) (Registration, error) {
	k := s.keys
	v, err := s.run(ctx, "register", s.reg,
		[]string{k.RegistryEntry(name, id), k.RegistryExpiry(), k.RegistryIDs(), k.RegistryLast(), k.RegistryCreated(), k.RegistrySeq()},
		name, id, ciphertext, ttl.Milliseconds(), s.nowMS())
	if err != nil {
		return Registration{}, err
	}
	arr, ok := v.([]any)
	if ok && len(arr) == 2 {
		if status, _ := arr[0].(int64); status == -1 {
			owner, _ := arr[1].(string)
			return Registration{}, fmt.Errorf("%w: id %q is registered by %q", ErrConflict, id, owner)
		}
	}
	if !ok || len(arr) != 4 {
		return Registration{}, fmt.Errorf("store: register: unexpected reply %v", v)
	}
	status, _ := arr[0].(int64)
	exp, ok1 := arr[1].(int64)
	created, ok2 := arr[2].(int64)
	seq, ok3 := arr[3].(int64)
	if !ok1 || !ok2 || !ok3 || status < 0 || status > 2 || seq < 0 {
		return Registration{}, fmt.Errorf("store: register: unexpected reply %v", v)
	}
	return Registration{Change: Change(status), Expiry: time.UnixMilli(exp), Created: time.UnixMilli(created), Seq: uint64(seq)}, nil
}

// Deregister removes name/id's registration at once and hands it to the
// reaper, which cleans it up (and announces it again) as for an expiry.
// It returns the name's sequence after the removal, or 0 when there was
// no live registration to remove.
func (s *Store) Deregister(ctx context.Context, name, id string) (uint64, error) {
	k := s.keys
	v, err := s.run(ctx, "deregister", s.dereg,
		[]string{k.RegistryEntry(name, id), k.RegistryExpiry(), k.RegistrySeq()},
		keys.RegistryMember(name, id), s.nowMS(), name)
	if err != nil {
		return 0, err
	}
	n, ok := v.(int64)
	if !ok || n < 0 {
		return 0, fmt.Errorf("store: deregister: unexpected reply %v", v)
	}
	return uint64(n), nil
}

// Entry is one stored instance: its member "<name>:<id>", expiry and
// ciphertext (nil when Redis holds none).
type Entry struct {
	Name, ID   string
	Expiry     time.Time
	Ciphertext []byte
	Created    time.Time // zero when unknown
	Seq        uint64    // Reap: the name's sequence after its removal
}

// Snapshot is every live entry, with Redis's time of the read and each
// name's sequence at that read (absent: 0, never changed).
type Snapshot struct {
	Entries []Entry
	Now     time.Time
	Seqs    map[string]uint64
}

// Live returns every live entry, Redis's time of the read and the
// sequences the entries are the state of.
func (s *Store) Live(ctx context.Context) (Snapshot, error) {
	k := s.keys
	v, err := s.run(ctx, "find", s.find, []string{k.RegistryExpiry(), k.RegistryLast(), k.RegistryCreated(), k.RegistrySeq()}, s.nowMS())
	if err != nil {
		return Snapshot{}, err
	}
	arr, ok := v.([]any)
	if !ok || len(arr) < 2 {
		return Snapshot{}, fmt.Errorf("store: find: unexpected reply")
	}
	flat, ok := arr[1].([]any)
	if !ok || len(flat)%2 != 0 {
		return Snapshot{}, fmt.Errorf("store: find: unexpected sequences %v", arr[1])
	}
	seqs := make(map[string]uint64, len(flat)/2)
	for i := 0; i < len(flat); i += 2 {
		name, _ := flat[i].(string)
		text, _ := flat[i+1].(string)
		n, err := strconv.ParseUint(text, 10, 64)
		if err != nil {
			return Snapshot{}, fmt.Errorf("store: find: sequence %q of %q", text, name)
		}
		seqs[name] = n
	}
	rest := append([]any{arr[0]}, arr[2:]...)
	es, now, err := entries("find", rest)
	return Snapshot{Entries: es, Now: now, Seqs: seqs}, err
}

// Expired returns up to limit entries whose registration has run out,
// oldest first, and Redis's time of the read.
func (s *Store) Expired(ctx context.Context, limit int) ([]Entry, time.Time, error) {
	k := s.keys
	v, err := s.run(ctx, "expired", s.expired, []string{k.RegistryExpiry(), k.RegistryLast(), k.RegistryCreated()}, s.nowMS(), limit)
	if err != nil {
		return nil, time.Time{}, err
	}
	return entries("expired", v)
}

// entries decodes {now, member, expiry, ciphertext, created, ...}.
func entries(what string, v any) ([]Entry, time.Time, error) {
	arr, ok := v.([]any)
	if !ok || len(arr) == 0 || (len(arr)-1)%4 != 0 {
		return nil, time.Time{}, fmt.Errorf("store: %s: unexpected reply", what)
	}
	now, ok := arr[0].(int64)
	if !ok {
		return nil, time.Time{}, fmt.Errorf("store: %s: unexpected time %v", what, arr[0])
	}
	out := make([]Entry, 0, (len(arr)-1)/4)
	for i := 1; i+3 < len(arr); i += 4 {
		member, _ := arr[i].(string)
		name, id, ok := keys.ParseRegistryMember(member)
		if !ok {
			continue // not ours: a member every writer of this layout makes has a ':'
		}
		score, _ := arr[i+1].(string)
		ms, err := strconv.ParseFloat(score, 64)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("store: %s: score %q of %s", what, score, member)
		}
		e := Entry{Name: name, ID: id, Expiry: time.UnixMilli(int64(ms))}
		if ct, ok := arr[i+2].(string); ok {
			e.Ciphertext = []byte(ct)
		}
		if c, ok := arr[i+3].(string); ok {
			if ms, err := strconv.ParseInt(c, 10, 64); err == nil {
				e.Created = time.UnixMilli(ms)
			}
		}
		out = append(out, e)
	}
	return out, time.UnixMilli(now), nil
}

// Reap removes the given expired entries whose key is really gone and
// returns those it removed.
func (s *Store) Reap(ctx context.Context, expired []Entry) ([]Entry, error) {
	if len(expired) == 0 {
		return nil, nil
	}
	k := s.keys
	ks := []string{k.RegistryExpiry(), k.RegistryLast(), k.RegistryIDs(), k.RegistryCreated(), k.RegistrySeq()}
	args := []any{s.nowMS()}
	byMember := make(map[string]Entry, len(expired))
	for _, e := range expired {
		m := keys.RegistryMember(e.Name, e.ID)
		ks = append(ks, k.RegistryEntry(e.Name, e.ID))
		args = append(args, m)
		byMember[m] = e
	}
	v, err := s.run(ctx, "reap", s.reap, ks, args...)
	if err != nil {
		return nil, err
	}
	arr, ok := v.([]any)
	if !ok || len(arr)%2 != 0 {
		return nil, fmt.Errorf("store: reap: unexpected reply %v", v)
	}
	out := make([]Entry, 0, len(arr)/2)
	for i := 0; i < len(arr); i += 2 {
		m, _ := arr[i].(string)
		seq, _ := arr[i+1].(int64)
		if e, ok := byMember[m]; ok {
			e.Seq = uint64(seq)
			out = append(out, e)
		}
	}
	return out, nil
}
