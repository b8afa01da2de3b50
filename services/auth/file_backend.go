package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
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

func readKeysFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keys file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeysFile+1))
	if err != nil {
		return nil, fmt.Errorf("keys file: %w", err)
	}
	if len(data) > maxKeysFile {
		return nil, fmt.Errorf("%s: larger than %d MiB", path, maxKeysFile>>20)
	}
	return data, nil
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

func (b *fileBackend) poll() {
	defer close(b.done)
	t := time.NewTicker(b.every)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.look()
		}
	}
}

// look reloads the file if it changed.
func (b *fileBackend) look() {
	b.looks++
	st, err := os.Stat(b.path)
	if err != nil {
		b.fail(fmt.Errorf("keys file: %w", err))
		return
	}
	stamp := fileStamp{st.ModTime(), st.Size()}
	if stamp.mod.Equal(b.stamp.mod) && stamp.size == b.stamp.size && b.looks%rehashEvery != 0 && b.problem == "" {
		return
	}
	data, err := readKeysFile(b.path)
	if err != nil {
		b.fail(err)
		return
	}
	b.stamp, b.problem = stamp, ""
	sum := sha256.Sum256(data)
	if sum == b.sum {
		return
	}
	b.sum = sum
	recs, err := parseKeysFile(b.path, data)
	if err != nil {
		b.failures.Add(1)
		b.log.Warn("the keys file is bad; keeping the keys last loaded", "path", b.path, "err", err)
		return
	}
	b.replace(byID(recs))
}

// fail logs and counts a stat or read error, once until it changes.
func (b *fileBackend) fail(err error) {
	if err.Error() == b.problem {
		return
	}
	b.problem = err.Error()
	b.failures.Add(1)
	b.log.Warn("cannot read the keys file; keeping the keys last loaded", "path", b.path, "err", err)
}

// replace swaps in keys and tells the watchers every id that changed.
func (b *fileBackend) replace(next map[string]Record) {
	b.mu.Lock()
	changed := diffKeys(b.keys, next)
	b.keys = next
	ws := make([]*watcher, 0, len(b.watchers))
	for w := range b.watchers {
		ws = append(ws, w)
	}
	b.mu.Unlock()
	b.log.Info("keys file reloaded", "path", b.path, "keys", len(next), "changed", len(changed))
	for _, id := range changed {
		for _, w := range ws {
			w.changed(id)
		}
	}
}

// diffKeys returns the ids added, removed or changed from before to
// after, sorted.
func diffKeys(before, after map[string]Record) []string {
	var out []string
	for id, o := range before {
		n, ok := after[id]
		if !ok || !sameRecord(o, n) {
			out = append(out, id)
		}
	}
	for id := range after {
		if _, ok := before[id]; !ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

func sameRecord(a, b Record) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

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

// keysFileError is what is wrong with a keys file, where.
type keysFileError struct {
	File    string
	Line    int
	Entry   int    // index in keys, -1 for the file as a whole
	ID      string // the entry's id, if it has a readable one
	Field   string // the field's path in the entry ("uids[1]"), or ""
	Problem string
}

func (e *keysFileError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Entry >= 0 {
		fmt.Fprintf(&b, "keys[%d]", e.Entry)
		if e.ID != "" {
			fmt.Fprintf(&b, " (id %q)", clip(e.ID))
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Problem)
	return b.String()
}

// parseKeysFile reads a keys file's contents strictly and returns its
// keys sorted by id; name is the file's name for errors.
func parseKeysFile(name string, data []byte) ([]Record, error) {
	fileErr := func(line int, format string, args ...any) error {
		return &keysFileError{File: name, Line: line, Entry: -1, Problem: fmt.Sprintf(format, args...)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fileErr(0, "empty (write keys: [] for a file without keys)")
		}
		return nil, fileErr(0, "not YAML: %v", err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, fileErr(0, "not YAML: %v", err)
		}
		return nil, fileErr(more.Line, "a second YAML document (a keys file is one)")
	}
	if len(doc.Content) == 0 {
		return nil, fileErr(0, "empty (write keys: [] for a file without keys)")
	}
	root := doc.Content[0]
	if a := firstAlias(root); a != nil {
		return nil, fileErr(a.Line, "anchors and aliases are not allowed in a keys file")
	}
	if root.Kind != yaml.MappingNode {
		return nil, fileErr(root.Line, "want a mapping with keys: [...], got %s", kindName(root))
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Value != "keys" {
			return nil, fileErr(k.Line, "unknown field %q (a keys file has only keys)", clip(k.Value))
		}
		if list != nil {
			return nil, fileErr(k.Line, "keys: given twice")
		}
		list = v
	}
	if list == nil {
		return nil, fileErr(root.Line, "keys: missing")
	}
	if isNull(list) {
		return nil, nil
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fileErr(list.Line, "keys: want a list of keys, got %s", kindName(list))
	}
	recs := make([]Record, 0, len(list.Content))
	first := map[string]int{} // id -> entry index
	for i, n := range list.Content {
		r, err := parseKeyEntry(name, i, n)
		if err != nil {
			return nil, err
		}
		if j, dup := first[r.ID]; dup {
			return nil, &keysFileError{File: name, Line: n.Line, Entry: i, ID: r.ID, Field: "id",
				Problem: fmt.Sprintf("the same id as keys[%d] (line %d)", j, list.Content[j].Line)}
		}
		first[r.ID] = i
		recs = append(recs, r)
	}
	sortRecords(recs)
	return recs, nil
}

// firstAlias returns the first node that is an alias or has an anchor.
func firstAlias(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		return n
	}
	for _, c := range n.Content {
		if bad := firstAlias(c); bad != nil {
			return bad
		}
	}
	return nil
}

// parseKeyEntry reads entry i of keys, node n, and checks it.
func parseKeyEntry(name string, i int, n *yaml.Node) (Record, error) {
	var r Record
	lines := map[string]int{}
	bad := func(field string, line int, format string, args ...any) error {
		return &keysFileError{File: name, Line: line, Entry: i, ID: r.ID, Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	if n.Kind != yaml.MappingNode {
		return r, bad("", n.Line, "want a mapping (id, hash, role, ...), got %s", kindName(n))
	}
	// The id first, so every error names it.
	for j := 0; j+1 < len(n.Content); j += 2 {
		if v := n.Content[j+1]; n.Content[j].Value == "id" && v.Kind == yaml.ScalarNode && !isNull(v) {
			r.ID = v.Value
		}
	}
	seen := map[string]bool{}
	for j := 0; j+1 < len(n.Content); j += 2 {
		k, v := n.Content[j], n.Content[j+1]
		field := k.Value
		if seen[field] {
			return r, bad(field, k.Line, "given twice")
		}
		seen[field] = true
		lines[field] = v.Line
		if isNull(v) {
			continue // as if absent
		}
		var err error
		switch field {
		case "id":
			r.ID, err = scalar(v)
		case "hash":
			r.Hash, err = scalar(v)
		case "role":
			r.Role, err = scalar(v)
		case "note":
			r.Note, err = scalar(v)
		case "uids":
			r.UIDs, err = scalars(v, "uids", lines)
		case "created":
			r.Created, err = timeValue(v)
		case "expires":
			r.Expires, err = timeValue(v)
		case "revoked":
			r.Revoked, err = timeValue(v)
		case "adjustments":
			r.Adjustments, err = parseAdjustments(v, lines)
		default:
			return r, bad("", k.Line, "unknown field %q (a key has id, hash, role, uids, note, created, expires, revoked, adjustments)", clip(field))
		}
		if err != nil {
			if fe, ok := errors.AsType[*fieldError](err); ok {
				return r, bad(fe.Field, lines[fe.Field], "%s", fe.Problem)
			}
			return r, bad(field, v.Line, "%v", err)
		}
	}
	if fe := r.check(); fe != nil {
		line, ok := lines[fe.Field]
		if !ok {
			line = n.Line // a missing field: the entry's line
		}
		return r, bad(fe.Field, line, "%s", fe.Problem)
	}
	if len(r.UIDs) == 0 {
		r.UIDs = nil
	}
	if len(r.Adjustments) == 0 {
		r.Adjustments = nil
	}
	return r, nil
}

// parseAdjustments reads an entry's adjustments, noting each field's
// line in lines under its path.
func parseAdjustments(n *yaml.Node, lines map[string]int) ([]Adjustment, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("want a list, got %s", kindName(n))
	}
	out := make([]Adjustment, 0, len(n.Content))
	for i, an := range n.Content {
		path := fmt.Sprintf("adjustments[%d]", i)
		lines[path] = an.Line
		if an.Kind != yaml.MappingNode {
			return nil, badField(path, "want a mapping (allow or deny, created, expires), got %s", kindName(an))
		}
		var a Adjustment
		seen := map[string]bool{}
		for j := 0; j+1 < len(an.Content); j += 2 {
			k, v := an.Content[j], an.Content[j+1]
			fp := path + "." + k.Value
			lines[fp] = v.Line
			if seen[k.Value] {
				return nil, badField(fp, "given twice")
			}
			seen[k.Value] = true
			if isNull(v) {
				continue
			}
			var err error
			switch k.Value {
			case "allow":
				a.Allow, err = scalar(v)
			case "deny":
				a.Deny, err = scalar(v)
			case "created":
				a.Created, err = timeValue(v)
			case "expires":
				a.Expires, err = timeValue(v)
			default:
				lines[fp] = k.Line
				return nil, badField(fp, "unknown field (an adjustment has allow or deny, created, expires)")
			}
			if err != nil {
				return nil, badField(fp, "%v", err)
			}
		}
		for _, f := range []string{"allow", "deny", "expires"} {
			if _, ok := lines[path+"."+f]; !ok {
				lines[path+"."+f] = an.Line
			}
		}
		out = append(out, a)
	}
	return out, nil
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// scalar is a plain value as written: a string, or a number or boolean
// taken as its text.
func scalar(n *yaml.Node) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("want a value, got %s", kindName(n))
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
		return n.Value, nil
	}
	return "", fmt.Errorf("want a plain value, got one tagged %s", n.ShortTag())
}

// scalars reads a list of plain values, noting each one's line in lines
// under "<path>[i]".
func scalars(n *yaml.Node, path string, lines map[string]int) ([]string, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("want a list, got %s", kindName(n))
	}
	out := make([]string, 0, len(n.Content))
	for i, c := range n.Content {
		fp := fmt.Sprintf("%s[%d]", path, i)
		lines[fp] = c.Line
		s, err := scalar(c)
		if err != nil {
			return nil, badField(fp, "%v", err)
		}
		out = append(out, s)
	}
	return out, nil
}

// timeValue reads a time: RFC 3339, or a date (midnight UTC), in UTC.
func timeValue(n *yaml.Node) (time.Time, error) {
	s, err := scalar(n)
	if err != nil {
		return time.Time{}, err
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time (RFC 3339, like 2025-01-02T15:04:05Z, or a date, like 2025-01-02)", clip(s))
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("the value %q", clip(n.Value))
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}
