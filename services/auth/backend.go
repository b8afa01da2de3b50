package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"
)

// Record is an API key as a backend holds it: never the secret, only its
// hash (apikey.Key.Hash).
type Record struct {
	ID      string    `json:"id" yaml:"id"`
	Hash    string    `json:"hash" yaml:"hash"`
	Role    string    `json:"role" yaml:"role"`
	UIDs    []string  `json:"uids,omitempty" yaml:"uids,omitempty"`
	Note    string    `json:"note,omitempty" yaml:"note,omitempty"`
	Created time.Time `json:"created" yaml:"created"`
	// Expires ends the key (zero: never).
	Expires time.Time `json:"expires,omitzero" yaml:"expires,omitempty"`
	// Revoked, when set, is when the key was revoked.
	Revoked time.Time `json:"revoked,omitzero" yaml:"revoked,omitempty"`
	// LastUsed is when the key last connected, as far as the backend
	// keeps it (the file backend does not).
	LastUsed time.Time `json:"last_used,omitzero" yaml:"-"`
	// Adjustments are the key's overrides and additions, expired ones
	// included until the backend drops them.
	Adjustments []Adjustment `json:"adjustments,omitempty" yaml:"adjustments,omitempty"`
}

// Adjustment takes a subject away from one key (Deny: an override, in
// flask-allows' words) or grants it one more (Allow: an addition), until
// Expires. Exactly one of Allow and Deny is set; it is a subject pattern
// that applies to publishing (requests included) and subscribing.
type Adjustment struct {
	Allow   string    `json:"allow,omitempty" yaml:"allow,omitempty"`
	Deny    string    `json:"deny,omitempty" yaml:"deny,omitempty"`
	Created time.Time `json:"created" yaml:"created"`
	Expires time.Time `json:"expires" yaml:"expires"`
}

// Active returns the adjustments of r in force at now.
func (r Record) Active(now time.Time) []Adjustment {
	var out []Adjustment
	for _, a := range r.Adjustments {
		if now.Before(a.Expires) {
			out = append(out, a)
		}
	}
	return out
}

// Errors a Backend returns.
var (
	ErrNotFound = errors.New("auth: no such key")
	ErrExists   = errors.New("auth: the key id exists")
	ErrReadOnly = errors.New("auth: the key backend is read-only")
	// ErrUnavailable marks a backend that did not answer (Redis down).
	ErrUnavailable = errors.New("auth: the key backend is unavailable")
)

// Backend stores API keys. allot ships "redis" (the default) and "file"
// (a read-only YAML of hashed keys, for GitOps); Backends lists them by
// name, and a third is one file: a BackendFactory under a new name.
type Backend interface {
	// Get returns the key with id, or ErrNotFound.
	Get(ctx context.Context, id string) (Record, error)
	// List returns every key, sorted by id.
	List(ctx context.Context) ([]Record, error)
	// Create stores a new key; ErrExists if its id is taken.
	Create(ctx context.Context, r Record) error
	// Revoke marks the key revoked at at; ErrNotFound if there is none.
	Revoke(ctx context.Context, id string, at time.Time) error
	// Adjust adds an override or addition to the key.
	Adjust(ctx context.Context, id string, a Adjustment) error
	// Touch records that the key connected at at (best effort).
	Touch(ctx context.Context, id string, at time.Time) error
	// Watch calls changed with the id of every key that changes (created,
	// revoked, adjusted, edited, removed) from now until ctx ends; it
	// returns at once. A backend whose changes all go through this
	// service's endpoints may never call it.
	Watch(ctx context.Context, changed func(id string))
	// Close releases what the backend holds.
	Close() error
}

// BackendDeps are what a backend may use.
type BackendDeps struct {
	Redis     redis.UniversalClient
	KeyPrefix string
	Log       *slog.Logger
}

// BackendFactory makes a backend from its options (the YAML under
// auth.backend.options), refusing unknown or bad ones.
type BackendFactory func(options yaml.Node, deps BackendDeps) (Backend, error)

// Backends are the key backends by name, as config names them.
type Backends map[string]BackendFactory

// DefaultBackends returns the backends allot ships.
func DefaultBackends() Backends {
	return Backends{"redis": newRedisBackend, "file": newFileBackend}
}

// Open makes the backend called name, or says which names there are.
func (b Backends) Open(name string, options yaml.Node, deps BackendDeps) (Backend, error) {
	f, ok := b[name]
	if !ok {
		names := make([]string, 0, len(b))
		for n := range b {
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("auth: backend %q is not one allot knows (known: %s)", name, strings.Join(names, ", "))
	}
	be, err := f(options, deps)
	if err != nil {
		return nil, fmt.Errorf("auth: backend %s: %w", name, err)
	}
	return be, nil
}

// decodeOptions decodes a backend's options strictly into dst.
func decodeOptions(options yaml.Node, dst any) error {
	if options.Kind == 0 {
		return nil
	}
	b, err := yaml.Marshal(&options)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(dst); err != nil {
		return fmt.Errorf("options: %w", err)
	}
	return nil
}

// sortRecords sorts records by id.
func sortRecords(rs []Record) {
	slices.SortFunc(rs, func(a, b Record) int { return strings.Compare(a.ID, b.ID) })
}
