package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.yaml.in/yaml/v3"
)

// fileOptions are the file backend's options (auth.backend.options).
type fileOptions struct {
	// Path is the keys file; relative to the working directory.
	Path string `yaml:"path"`
	// Reload is how often the file is looked at (default 1s).
	Reload time.Duration `yaml:"reload"`
}

const (
	// defaultReload is how often the file backend looks at its file.
	defaultReload = time.Second
	// rehashEvery: every this many looks, the file is read and hashed
	// even if its size and modification time are unchanged (an edit
	// within the file system's time resolution).
	rehashEvery = 10
	// maxKeysFile bounds the keys file, in bytes.
	maxKeysFile = 32 << 20
)

// fileBackend serves API keys from a read-only YAML file of hashed keys,
// for GitOps: the "file" backend. Options:
//
//	path: the file (required)
//	reload: how often to look at it for changes (a Go duration, default 1s)
//
// The file:
//
//	keys:
//	  - id: Ab3dEf9h                 # required: the key id (8 characters of A-Z a-z 0-9 - _)
//	    hash: 9f86d08...             # required: apikey.Key.Hash of the key, 64 lowercase hex
//	    role: app                    # required
//	    uids: [u-1, u-2]             # uid tokens, or "*"
//	    note: the billing app
//	    created: 2025-01-02T15:04:05Z  # times: RFC 3339, or a date (midnight UTC)
//	    expires: 2026-01-01
//	    revoked: 2025-06-01T00:00:00Z
//	    adjustments:
//	      - {deny: ratelimit.reset.*, expires: 2025-07-01T00:00:00Z}
//	      - {allow: meter.grants.u-7, created: ..., expires: ...}
//
// It is checked strictly: an unknown field, a malformed id or hash, a
// missing role, a duplicate id is an error naming the file, the line, the
// entry and the field. A bad file at start-up is an error. The file is
// polled every reload (its size and modification time, and its content
// hash every tenth look, or when those change); a good new file replaces
// the keys, and Watch reports every id added, removed or changed; a bad
// one is logged once per distinct content and counted (ReloadFailures),
// and the last good keys stay. Get and List leave expired adjustments out.
// Writes return ErrReadOnly; Touch does nothing.
type fileBackend struct {
	path  string
	every time.Duration
	log   *slog.Logger
	now   func() time.Time

	mu       sync.RWMutex
	keys     map[string]Record
	watchers map[*watcher]struct{}

	failures atomic.Uint64

	// The poller's own state.
	stamp   fileStamp
	sum     [32]byte // the last content parsed, good or bad
	looks   int
	problem string // the last stat or read error logged

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

type fileStamp struct {
	mod  time.Time
	size int64
}

type watcher struct{ changed func(id string) }

// ReloadFailureCounter is implemented by a backend that reloads its keys
// from outside and can fail to: the number of failed reloads, for a
// metric.
type ReloadFailureCounter interface {
	ReloadFailures() uint64
}

// newFileBackend is the "file" BackendFactory.
func newFileBackend(options yaml.Node, deps BackendDeps) (Backend, error) {
	var opts fileOptions
	if err := decodeOptions(options, &opts); err != nil {
		return nil, fmt.Errorf("%w (the file backend takes path and reload)", err)
	}
	if opts.Path == "" {
		return nil, errors.New("options: path: missing (the file backend needs path: <keys file>)")
	}
	if opts.Reload < 0 {
		return nil, fmt.Errorf("options: reload: %s is negative", opts.Reload)
	}
	if opts.Reload == 0 {
		opts.Reload = defaultReload
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &fileBackend{path: opts.Path, every: opts.Reload, log: log, now: time.Now,
		watchers: map[*watcher]struct{}{}, stop: make(chan struct{}), done: make(chan struct{})}
	st, err := os.Stat(b.path)
	if err != nil {
		return nil, fmt.Errorf("keys file: %w", err)
	}
	data, err := readKeysFile(b.path)
	if err != nil {
		return nil, err
	}
	recs, err := parseKeysFile(b.path, data)
	if err != nil {
		return nil, err
	}
	b.stamp = fileStamp{st.ModTime(), st.Size()}
	b.sum = sha256.Sum256(data)
	b.keys = byID(recs)
	go b.poll()
	return b, nil
}

func byID(recs []Record) map[string]Record {
	m := make(map[string]Record, len(recs))
	for _, r := range recs {
		m[r.ID] = r
	}
	return m
}

// ReloadFailures is how many reloads failed: a file that was bad,
// unreadable or missing, counted once per distinct content or error.
func (b *fileBackend) ReloadFailures() uint64 { return b.failures.Load() }

// view is r as Get returns it: its own slices, expired adjustments left
// out.
func view(r Record, now time.Time) Record {
	r.UIDs = slices.Clone(r.UIDs)
	r.Adjustments = r.Active(now)
	return r
}

// Get returns the key with id.
func (b *fileBackend) Get(_ context.Context, id string) (Record, error) {
	b.mu.RLock()
	r, ok := b.keys[id]
	b.mu.RUnlock()
	if !ok {
		return Record{}, fmt.Errorf("%w: %s", ErrNotFound, clip(id))
	}
	return view(r, b.now()), nil
}

// List returns every key, sorted by id.
func (b *fileBackend) List(context.Context) ([]Record, error) {
	now := b.now()
	b.mu.RLock()
	out := make([]Record, 0, len(b.keys))
	for _, r := range b.keys {
		out = append(out, view(r, now))
	}
	b.mu.RUnlock()
	sortRecords(out)
	return out, nil
}

func (b *fileBackend) readOnly() error {
	return fmt.Errorf("%w: keys come from %s; edit it to change them", ErrReadOnly, b.path)
}

// Create returns ErrReadOnly.
func (b *fileBackend) Create(context.Context, Record) error { return b.readOnly() }

// Revoke returns ErrReadOnly.
func (b *fileBackend) Revoke(context.Context, string, time.Time) error { return b.readOnly() }

// Adjust returns ErrReadOnly.
func (b *fileBackend) Adjust(context.Context, string, Adjustment) error { return b.readOnly() }

// Touch does nothing: the file backend keeps no last use.
func (b *fileBackend) Touch(context.Context, string, time.Time) error { return nil }

// Watch calls changed, from the poller, with every id a reload adds,
// removes or changes, until ctx ends. changed must not block for long:
// the next reload waits for it.
func (b *fileBackend) Watch(ctx context.Context, changed func(id string)) {
	w := &watcher{changed: changed}
	b.mu.Lock()
	b.watchers[w] = struct{}{}
	b.mu.Unlock()
	context.AfterFunc(ctx, func() {
		b.mu.Lock()
		delete(b.watchers, w)
		b.mu.Unlock()
	})
}

// Close stops the poller.
func (b *fileBackend) Close() error {
	b.closeOnce.Do(func() {
		close(b.stop)
		<-b.done
	})
	return nil
}
