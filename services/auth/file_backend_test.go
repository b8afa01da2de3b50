package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

// fileOpts makes the file backend's options node.
func fileOpts(t *testing.T, text string) yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Content) == 0 {
		return yaml.Node{}
	}
	return *doc.Content[0]
}

// syncBuffer is a log destination the poller and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func openFile(t *testing.T, path string, reload time.Duration, log *syncBuffer) *fileBackend {
	t.Helper()
	deps := BackendDeps{}
	if log != nil {
		deps.Log = slog.New(slog.NewTextHandler(log, nil))
	}
	opts := fmt.Sprintf("{path: %q}", path)
	if reload > 0 {
		opts = fmt.Sprintf("{path: %q, reload: %s}", path, reload)
	}
	be, err := DefaultBackends().Open("file", fileOpts(t, opts), deps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	return be.(*fileBackend)
}

func date(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v.UTC()
}

func TestFileBackendLoads(t *testing.T) {
	b := openFile(t, "testdata/keys/good.yaml", 0, nil)
	// The file's dates are fixed, so the backend's clock is too.
	b.now = func() time.Time { return date(t, "2025-05-10T00:00:00Z") }
	want := []Record{
		{ID: "00000001", Hash: testHash("c"), Role: "reader", UIDs: []string{"*"},
			Revoked: date(t, "2025-03-01T00:00:00Z")},
		{ID: "Ab3dEf9h", Hash: testHash("b"), Role: "admin"},
		{ID: "Zz-_0009", Hash: testHash("a"), Role: "app", UIDs: []string{"u-1", "u-2"}, Note: "the billing app",
			Created: date(t, "2025-01-02T15:04:05Z"), Expires: date(t, "2026-01-01T00:00:00Z"),
			Adjustments: []Adjustment{
				{Deny: "ratelimit.reset.*", Created: date(t, "2025-05-01T00:00:00Z"), Expires: date(t, "2025-07-01T00:00:00Z")},
				{Allow: "meter.grants.u-7", Expires: date(t, "2025-05-15T10:00:00.5Z")},
			}},
	}
	got, err := b.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("list (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want[2], mustGet(t, b, "Zz-_0009")); diff != "" {
		t.Errorf("get (-want +got):\n%s", diff)
	}
	// Past the addition's end, it is left out.
	b.now = func() time.Time { return date(t, "2025-06-01T00:00:00Z") }
	if got := mustGet(t, b, "Zz-_0009").Adjustments; len(got) != 1 || got[0].Deny == "" {
		t.Errorf("adjustments on June 1st: %+v, want the override alone", got)
	}
	// What Get returns is the caller's to change.
	r := mustGet(t, b, "Zz-_0009")
	r.UIDs[0] = "changed"
	if mustGet(t, b, "Zz-_0009").UIDs[0] != "u-1" {
		t.Error("changing a returned record changed the backend's")
	}
	for _, id := range []string{"Zz000000", "bad", ""} {
		if _, err := b.Get(t.Context(), id); !errors.Is(err, ErrNotFound) {
			t.Errorf("get %q: %v, want ErrNotFound", id, err)
		}
	}
}

func TestFileBackendEmptyLists(t *testing.T) {
	for _, f := range []string{"no_keys.yaml", "keys_null.yaml"} {
		b := openFile(t, "testdata/keys/"+f, 0, nil)
		got, err := b.List(t.Context())
		if err != nil || len(got) != 0 {
			t.Errorf("%s: %v, %v; want no keys", f, got, err)
		}
	}
}

// Every bad field of a keys file is an error naming the file, the line,
// the entry and the field; the backend does not start on one.
func TestFileBackendStrict(t *testing.T) {
	for _, tc := range []struct {
		file  string
		line  int
		entry int // -1: the file as a whole
		id    string
		field string
		want  string
	}{
		{"unknown_field.yaml", 5, 0, "Ab3dEf9h", "", `unknown field "secret"`},
		{"last_used.yaml", 5, 0, "Ab3dEf9h", "", `unknown field "last_used"`},
		{"bad_id.yaml", 5, 1, "Ab3d.Ef9", "id", "is not a key id"},
		{"missing_id.yaml", 2, 0, "", "id", "missing"},
		{"id_a_list.yaml", 2, 0, "", "id", "want a value, got a list"},
		{"short_hash.yaml", 3, 0, "Ab3dEf9h", "hash", "got 63 characters"},
		{"upper_hash.yaml", 3, 0, "Ab3dEf9h", "hash", "64 lowercase hex"},
		{"missing_hash.yaml", 2, 0, "Ab3dEf9h", "hash", "missing"},
		{"missing_role.yaml", 2, 0, "Ab3dEf9h", "role", "missing"},
		{"null_role.yaml", 4, 0, "Ab3dEf9h", "role", "missing"},
		{"duplicate_id.yaml", 8, 2, "Ab3dEf9h", "id", "the same id as keys[0] (line 2)"},
		{"duplicate_field.yaml", 5, 0, "Ab3dEf9h", "role", "given twice"},
		{"bad_uid.yaml", 7, 0, "Ab3dEf9h", "uids[1]", `"u.>" is neither a uid`},
		{"uids_not_list.yaml", 5, 0, "Ab3dEf9h", "uids", "want a list"},
		{"bad_time.yaml", 5, 0, "Ab3dEf9h", "created", `"yesterday" is not a time`},
		{"expires_before_created.yaml", 6, 0, "Ab3dEf9h", "expires", "is not after created"},
		{"adjustment_unknown_field.yaml", 8, 0, "Ab3dEf9h", "adjustments[0].ttl", "unknown field"},
		{"adjustment_both.yaml", 6, 0, "Ab3dEf9h", "adjustments[0].deny", "not both"},
		{"adjustment_without_expiry.yaml", 6, 0, "Ab3dEf9h", "adjustments[0].expires", "missing"},
		{"adjustment_bad_pattern.yaml", 7, 0, "Ab3dEf9h", "adjustments[1].allow", "> must be the last token"},
		{"entry_not_mapping.yaml", 2, 0, "", "", "want a mapping"},
		{"keys_not_list.yaml", 1, -1, "", "", "keys: want a list of keys, got a mapping"},
		{"unknown_top_field.yaml", 1, -1, "", "", `unknown field "users"`},
		{"unknown_second_field.yaml", 2, -1, "", "", `unknown field "users"`},
		{"a_list.yaml", 1, -1, "", "", "want a mapping with keys"},
		{"empty.yaml", 0, -1, "", "", "empty"},
		{"two_documents.yaml", 2, -1, "", "", "a second YAML document"},
		{"not_yaml.yaml", 0, -1, "", "", "not YAML"},
		{"alias.yaml", 2, -1, "", "", "anchors and aliases"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", "keys", tc.file)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = parseKeysFile(path, data)
			ke, ok := errors.AsType[*keysFileError](err)
			if !ok {
				t.Fatalf("parse: %v, want a keysFileError", err)
			}
			got := keysFileError{File: ke.File, Line: ke.Line, Entry: ke.Entry, ID: ke.ID, Field: ke.Field}
			want := keysFileError{File: path, Line: tc.line, Entry: tc.entry, ID: tc.id, Field: tc.field}
			if diff := cmp.Diff(want, got); diff != "" || !strings.Contains(ke.Problem, tc.want) {
				t.Errorf("%v\nwhere (-want +got):\n%s\nproblem %q, want it to say %q", err, diff, ke.Problem, tc.want)
			}
			if !strings.HasPrefix(err.Error(), path) {
				t.Errorf("%q does not start with the file's name", err)
			}
			if strings.Contains(err.Error(), "shouldneverbeinthisfile") {
				t.Errorf("%q repeats the value of an unknown field", err)
			}
			// The backend refuses to start on it, with the same error.
			_, err = DefaultBackends().Open("file", fileOpts(t, fmt.Sprintf("{path: %q}", path)), BackendDeps{})
			if err == nil || !strings.Contains(err.Error(), ke.Error()) {
				t.Errorf("open: %v, want %v", err, ke)
			}
		})
	}
}

func TestFileBackendOptions(t *testing.T) {
	for _, tc := range []struct {
		options, want string
	}{
		{"", "path: missing"},
		{"{reload: 1s}", "path: missing"},
		{`{path: testdata/keys/good.yaml, mode: rw}`, "field mode not found"},
		{`{path: testdata/keys/good.yaml, reload: fast}`, "fast"},
		{`{path: testdata/keys/good.yaml, reload: 5}`, "reload"},
		{`{path: testdata/keys/good.yaml, reload: -1s}`, "reload: -1s is negative"},
		{`{path: testdata/keys/nothing-here.yaml}`, "nothing-here.yaml: no such file"},
		{`{path: testdata/keys}`, "testdata/keys"},
	} {
		_, err := DefaultBackends().Open("file", fileOpts(t, tc.options), BackendDeps{})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "auth: backend file: ") {
			t.Errorf("options %q: %v, want an error saying %q", tc.options, err, tc.want)
		}
	}
	b := openFile(t, "testdata/keys/good.yaml", 0, nil)
	if b.every != defaultReload {
		t.Errorf("reload %s, want the default %s", b.every, defaultReload)
	}
}

func TestFileBackendReadOnly(t *testing.T) {
	b := openFile(t, "testdata/keys/good.yaml", 0, nil)
	ctx := t.Context()
	now := time.Now()
	for name, err := range map[string]error{
		"create": b.Create(ctx, testRecord("Xx000000", now)),
		"revoke": b.Revoke(ctx, "Ab3dEf9h", now),
		"adjust": b.Adjust(ctx, "Ab3dEf9h", Adjustment{Deny: "a", Expires: now.Add(time.Hour)}),
	} {
		if !errors.Is(err, ErrReadOnly) || !strings.Contains(err.Error(), "good.yaml") {
			t.Errorf("%s: %v, want ErrReadOnly naming the file", name, err)
		}
	}
	if err := b.Touch(ctx, "Ab3dEf9h", now); err != nil {
		t.Errorf("touch: %v", err)
	}
	if r := mustGet(t, b, "Ab3dEf9h"); !r.Revoked.IsZero() || !r.LastUsed.IsZero() {
		t.Errorf("after writes: %+v", r)
	}
}

// keysYAML writes a keys file of the given entries (id -> role), in id
// order, with times relative to now.
func keysYAML(now time.Time, roles map[string]string) string {
	var b strings.Builder
	b.WriteString("keys:\n")
	ids := make([]string, 0, len(roles))
	for id := range roles {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		fmt.Fprintf(&b, "  - id: %s\n    hash: %s\n    role: %s\n    created: %s\n    expires: %s\n",
			id, testHash(id), roles[id], now.Format(time.RFC3339), now.Add(24*time.Hour).Format(time.RFC3339))
	}
	return b.String()
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Written whole and renamed into place, as a deploy would.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// watchIDs collects what Watch reports.
type watchIDs struct {
	ch chan string
}

func watch(t *testing.T, b Backend) *watchIDs {
	w := &watchIDs{ch: make(chan string, 100)}
	b.Watch(t.Context(), func(id string) { w.ch <- id })
	return w
}

// next returns the ids reported within wait of each other, the first
// within timeout, sorted; nil if none came.
func (w *watchIDs) next(timeout time.Duration) []string {
	var got []string
	select {
	case id := <-w.ch:
		got = append(got, id)
	case <-time.After(timeout):
		return nil
	}
	for {
		select {
		case id := <-w.ch:
			got = append(got, id)
		case <-time.After(100 * time.Millisecond):
			slices.Sort(got)
			return got
		}
	}
}

func roles(t *testing.T, b Backend) map[string]string {
	t.Helper()
	rs, err := b.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range rs {
		out[r.ID] = r.Role
	}
	return out
}

func TestFileBackendReloads(t *testing.T) {
	now := time.Now().UTC()
	path := filepath.Join(t.TempDir(), "keys.yaml")
	first := map[string]string{"Aaaaaaaa": "app", "Bbbbbbbb": "app", "Cccccccc": "reader"}
	writeFile(t, path, keysYAML(now, first))
	log := &syncBuffer{}
	b := openFile(t, path, 20*time.Millisecond, log)
	w := watch(t, b)
	if diff := cmp.Diff(first, roles(t, b)); diff != "" {
		t.Fatalf("loaded (-want +got):\n%s", diff)
	}

	// B changes, C goes, D comes: exactly those are reported.
	second := map[string]string{"Aaaaaaaa": "app", "Bbbbbbbb": "admin", "Dddddddd": "app"}
	writeFile(t, path, keysYAML(now, second))
	if diff := cmp.Diff([]string{"Bbbbbbbb", "Cccccccc", "Dddddddd"}, w.next(2*time.Second)); diff != "" {
		t.Errorf("changed ids (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(second, roles(t, b)); diff != "" {
		t.Errorf("reloaded (-want +got):\n%s", diff)
	}

	// A bad edit keeps the last good keys, is logged and counted once
	// however many times the poller looks at it.
	writeFile(t, path, keysYAML(now, map[string]string{"Aaaaaaaa": ""}))
	time.Sleep(300 * time.Millisecond) // 15 looks
	if got := w.next(0); got != nil {
		t.Errorf("a bad edit reported %v", got)
	}
	if diff := cmp.Diff(second, roles(t, b)); diff != "" {
		t.Errorf("after a bad edit (-want +got):\n%s", diff)
	}
	if n := b.ReloadFailures(); n != 1 {
		t.Errorf("%d reload failures counted, want 1", n)
	}
	if n := strings.Count(log.String(), "the keys file is bad"); n != 1 || !strings.Contains(log.String(), "role: missing") {
		t.Errorf("logged %d times, want once naming the field:\n%s", n, log)
	}
	// Another bad edit is another failure.
	writeFile(t, path, "keys: [\n")
	time.Sleep(200 * time.Millisecond)
	if n := b.ReloadFailures(); n != 2 {
		t.Errorf("%d reload failures counted, want 2", n)
	}

	// Fixed: the changes since the last good keys are reported.
	third := map[string]string{"Aaaaaaaa": "reader", "Bbbbbbbb": "admin", "Dddddddd": "app"}
	writeFile(t, path, keysYAML(now, third))
	if diff := cmp.Diff([]string{"Aaaaaaaa"}, w.next(2*time.Second)); diff != "" {
		t.Errorf("changed ids (-want +got):\n%s", diff)
	}

	// The file gone: the keys stay, it is logged and counted once.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := b.ReloadFailures(); n != 3 {
		t.Errorf("%d reload failures counted, want 3", n)
	}
	if n := strings.Count(log.String(), "cannot read the keys file"); n != 1 {
		t.Errorf("a missing file logged %d times, want once:\n%s", n, log)
	}
	if diff := cmp.Diff(third, roles(t, b)); diff != "" {
		t.Errorf("with the file gone (-want +got):\n%s", diff)
	}
	// Back as it was: nothing changed, nothing reported.
	writeFile(t, path, keysYAML(now, third))
	if got := w.next(300 * time.Millisecond); got != nil {
		t.Errorf("the same file again reported %v", got)
	}
	if n := b.ReloadFailures(); n != 3 {
		t.Errorf("%d reload failures counted, want still 3", n)
	}
}

// An edit that keeps the size and the modification time is still seen,
// by the content hash.
func TestFileBackendReloadsSameSizeAndTime(t *testing.T) {
	now := time.Now().UTC()
	path := filepath.Join(t.TempDir(), "keys.yaml")
	writeFile(t, path, keysYAML(now, map[string]string{"Aaaaaaaa": "app"}))
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	b := openFile(t, path, 20*time.Millisecond, nil)
	w := watch(t, b)
	time.Sleep(50 * time.Millisecond)
	if err := os.WriteFile(path, []byte(keysYAML(now, map[string]string{"Aaaaaaaa": "ppa"})), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"Aaaaaaaa"}, w.next(2*time.Second)); diff != "" {
		t.Errorf("changed ids (-want +got):\n%s", diff)
	}
	if got := mustGet(t, b, "Aaaaaaaa").Role; got != "ppa" {
		t.Errorf("role %q after the edit", got)
	}
}

// With the default reload (1s), a change is seen within about a second.
func TestFileBackendReloadsWithinASecond(t *testing.T) {
	now := time.Now().UTC()
	path := filepath.Join(t.TempDir(), "keys.yaml")
	writeFile(t, path, keysYAML(now, map[string]string{"Aaaaaaaa": "app"}))
	b := openFile(t, path, 0, nil)
	w := watch(t, b)
	start := time.Now()
	writeFile(t, path, keysYAML(now, map[string]string{"Aaaaaaaa": "app", "Bbbbbbbb": "app"}))
	got := w.next(1500 * time.Millisecond)
	took := time.Since(start) - 100*time.Millisecond // next waits that long for more
	if diff := cmp.Diff([]string{"Bbbbbbbb"}, got); diff != "" {
		t.Fatalf("changed ids (-want +got):\n%s", diff)
	}
	t.Logf("seen after %s", took.Round(time.Millisecond))
}

// A watch stops with its context; Close stops the poller.
func TestFileBackendWatchEnds(t *testing.T) {
	now := time.Now().UTC()
	path := filepath.Join(t.TempDir(), "keys.yaml")
	writeFile(t, path, keysYAML(now, map[string]string{"Aaaaaaaa": "app"}))
	b := openFile(t, path, 20*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(t.Context())
	ended := make(chan string, 10)
	b.Watch(ctx, func(id string) { ended <- id })
	kept := watch(t, b)
	cancel()
	writeFile(t, path, keysYAML(now, map[string]string{"Aaaaaaaa": "admin"}))
	if got := kept.next(2 * time.Second); len(got) != 1 {
		t.Fatalf("the live watch got %v", got)
	}
	select {
	case id := <-ended:
		t.Errorf("a watch whose context ended got %s", id)
	default:
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, keysYAML(now, map[string]string{"Aaaaaaaa": "reader"}))
	if got := kept.next(200 * time.Millisecond); got != nil {
		t.Errorf("after Close, reported %v", got)
	}
	if err := b.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
}

func TestOpenUnknownBackend(t *testing.T) {
	_, err := DefaultBackends().Open("memory", yaml.Node{}, BackendDeps{})
	if err == nil || !strings.Contains(err.Error(), `"memory"`) || !strings.Contains(err.Error(), "known: file, redis") {
		t.Errorf("open memory: %v, want an error listing file and redis", err)
	}
}
