package auth

import (
	"errors"
	"strings"
	"testing"

	"github.com/allot/allot/pkg/testenv"
	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"
)

func TestRedisBackendMiniredis(t *testing.T) {
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	n := 0
	runBackendSuite(t, func(t *testing.T) *backendEnv {
		n++
		return newBackendEnv(t, rdb, "allot-"+strings.Repeat("x", n)+":")
	})
}

func TestRedisBackendOptions(t *testing.T) {
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	deps := BackendDeps{Redis: rdb, KeyPrefix: "allot:"}
	for _, tc := range []struct {
		name, options, want string
	}{
		{"none", "", ""},
		{"empty", "{}", ""},
		{"unknown", "{path: x}", "field path not found"},
		{"not a mapping", "[1]", "cannot unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var doc yaml.Node
			if err := yaml.Unmarshal([]byte(tc.options), &doc); err != nil {
				t.Fatal(err)
			}
			var opts yaml.Node
			if len(doc.Content) > 0 {
				opts = *doc.Content[0]
			}
			_, err := DefaultBackends().Open("redis", opts, deps)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("open with %q: %v, want %q", tc.options, err, tc.want)
			}
		})
	}
	if _, err := DefaultBackends().Open("redis", yaml.Node{}, BackendDeps{}); err == nil || !strings.Contains(err.Error(), "Redis client") {
		t.Errorf("open without Redis: %v", err)
	}
}

// A record or adjustment that does not decode fails Get rather than
// being skipped: an override read as absent would widen the key.
func TestRedisBackendCorruptRecords(t *testing.T) {
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	for _, tc := range []struct {
		name  string
		spoil func(e *backendEnv, id string)
		want  string
	}{
		{"record not JSON", func(e *backendEnv, id string) { mr.HSet(e.k.AuthKey(id), "record", "{") }, "record"},
		{"record of another id", func(e *backendEnv, id string) {
			mr.HSet(e.k.AuthKey(id), "record", `{"id":"Zz000000"}`)
		}, "holds id"},
		{"revoked not a number", func(e *backendEnv, id string) { mr.HSet(e.k.AuthKey(id), "revoked", "soon") }, "revoked"},
		{"adjustment not JSON", func(e *backendEnv, id string) { mr.HSet(e.k.AuthAdjustments(id), "deny:a", "[") }, "deny:a"},
		{"adjustment under another field", func(e *backendEnv, id string) {
			mr.HSet(e.k.AuthAdjustments(id), "allow:a", `{"deny":"a","expires_ms":1}`)
		}, "holds"},
		{"adjustment without expiry", func(e *backendEnv, id string) {
			mr.HSet(e.k.AuthAdjustments(id), "deny:a", `{"deny":"a"}`)
		}, "expires"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newBackendEnv(t, rdb, "allot-"+strings.ReplaceAll(tc.name, " ", "-")+":")
			r := testRecord("Ab3dEf9h", e.t0)
			mustCreate(t, e.b, r)
			tc.spoil(e, r.ID)
			_, err := e.b.Get(t.Context(), r.ID)
			if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("get: %v, want an error naming %q", err, tc.want)
			}
			if _, err := e.b.List(t.Context()); err == nil {
				t.Error("list of a corrupt key: no error")
			}
		})
	}
}

// The scripts run again after Redis forgets them (a restart, SCRIPT FLUSH).
func TestRedisBackendAfterScriptFlush(t *testing.T) {
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	e := newBackendEnv(t, rdb, "allot:")
	mustCreate(t, e.b, testRecord("Ab3dEf9h", e.t0))
	if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.b.Revoke(t.Context(), "Ab3dEf9h", e.t0); err != nil {
		t.Fatal(err)
	}
}

func TestRedisBackendDown(t *testing.T) {
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	e := newBackendEnv(t, rdb, "allot:")
	mr.Close()
	if _, err := e.b.Get(t.Context(), "Ab3dEf9h"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("get with Redis down: %v, want an error that is not ErrNotFound", err)
	}
	if err := e.b.Touch(t.Context(), "Ab3dEf9h", e.t0); err == nil {
		t.Error("touch with Redis down: no error")
	}
}
