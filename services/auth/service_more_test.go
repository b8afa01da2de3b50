package auth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/services/auth/internal/apikey"
	"github.com/allot/allot/services/auth/internal/policy"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"
)

// stackWith starts a stack whose config tune changes first.
func stackWith(t *testing.T, tune func(*Config)) *stack {
	t.Helper()
	s, sc, issuer := calloutServer(t)
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return startStackOn(t, s, sc, issuer, rdb, "allot:", tune)
}

// Validators by name, per role: a role's networks and client name are
// checked, and a role may skip a check.
func TestServiceValidatorsPerRole(t *testing.T) {
	grant := policy.Requirement{Publish: "usage.{uid}"}
	keys := map[string]apikey.Key{}
	st := stackWith(t, func(c *Config) {
		c.Roles["office"] = Role{Grant: grant, Networks: []string{"10.0.0.0/8"}}
		c.Roles["lab"] = Role{Grant: grant, ClientName: "^lab-"}
		c.Roles["lax"] = Role{Grant: grant, Networks: []string{"10.0.0.0/8"}, Skip: []string{"source_network"}}
		for _, role := range []string{"office", "lab", "lax"} {
			k, _ := apikey.New()
			keys[role] = k
			c.StaticKeys = append(c.StaticKeys, secretOf(role+"="+k.String()))
		}
		if err := c.Check(); err != nil {
			t.Fatal(err)
		}
	})
	for _, tc := range []struct {
		role, name string
		refused    string // the reason, or "" for allowed
	}{
		{"office", "", "source_network"},
		{"lab", "lab-7", ""},
		{"lab", "other", "client_name"},
		{"lab", "", "client_name"},
		{"lax", "", ""},
	} {
		_, _, _, err := st.connect(t, keys[tc.role].String(), nats.Name(tc.name))
		switch {
		case tc.refused == "" && err != nil:
			t.Errorf("%s as %q: %v, want allowed", tc.role, tc.name, err)
		case tc.refused != "" && !errors.Is(err, nats.ErrAuthorization):
			t.Errorf("%s as %q: %v, want refused for %s", tc.role, tc.name, err, tc.refused)
		}
	}
	if st.decisions("refused", "source_network") != 1 || st.decisions("refused", "client_name") != 2 {
		t.Errorf("refusals counted: source_network %v, client_name %v", st.decisions("refused", "source_network"), st.decisions("refused", "client_name"))
	}
}

// With the auth service down, a new connection is refused (the callout
// times out) while one already made keeps working.
func TestServiceDownClosesTheDoorOnly(t *testing.T) {
	st := stackWith(t, func(*Config) {})
	nc, errs, closed, err := st.connect(t, st.adminKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.svc.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := st.connect(t, st.adminKey, nats.Timeout(5*time.Second)); err == nil {
		t.Error("a new connection got in with the auth service down")
	}
	if err := nc.Publish("usage.u-1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Errorf("the open connection stopped working: %v", err)
	}
	select {
	case <-closed:
		t.Error("the open connection was closed")
	case err := <-errs:
		t.Errorf("the open connection got %v", err)
	case <-time.After(200 * time.Millisecond):
	}
}

// The file backend: a key edited in the file to revoked loses its open
// connection within a second or so of the change, through the same kick
// as an endpoint's revocation; a bad edit keeps the last good keys and is
// counted.
func TestServiceFileBackendReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.yaml")
	k, _ := apikey.New()
	created := time.Now().UTC().Truncate(time.Second)
	write := func(revoked string) {
		t.Helper()
		text := fmt.Sprintf("keys:\n  - id: %s\n    hash: %s\n    role: app\n    uids: [u-1]\n    created: %s\n%s", k.ID, k.Hash(), created.Format(time.RFC3339), revoked)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil { // as a ConfigMap update does
			t.Fatal(err)
		}
	}
	write("")
	st := stackWith(t, func(c *Config) {
		var opts yaml.Node
		if err := yaml.Unmarshal([]byte(fmt.Sprintf("{path: %q, reload: 100ms}", path)), &opts); err != nil {
			t.Fatal(err)
		}
		c.Backend = BackendConfig{Name: "file", Options: *opts.Content[0]}
		c.StaticKeys = nil // a read-only backend takes none
	})
	_, _, closed, err := st.connect(t, k.String())
	if err != nil {
		t.Fatalf("a key of the file: %v", err)
	}
	// A bad edit: the key keeps working, and the failure is counted.
	if err := os.WriteFile(path, []byte("keys: [ {id: nope} ]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(st.svc.metrics.reloadFailures) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the bad edit was not counted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, _, _, err := st.connect(t, k.String()); err != nil {
		t.Errorf("after a bad edit the last good keys must hold: %v", err)
	}
	write("    revoked: " + time.Now().UTC().Format(time.RFC3339) + "\n")
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the key revoked in the file kept its connection")
	}
	if _, _, _, err := st.connect(t, k.String()); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("a key revoked in the file connects: %v", err)
	}
	if n := st.decisions("refused", "revoked"); n != 1 {
		t.Errorf("revoked refusals counted: %v, want 1", n)
	}
}

func secretOf(s string) service.Secret { return service.Secret(s) }
