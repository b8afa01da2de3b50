package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/services/auth/internal/policy"

	"github.com/nats-io/nkeys"
)

func seed(t *testing.T) string {
	t.Helper()
	kp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	s, _ := kp.Seed()
	return string(s)
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := LoadConfig("", env(map[string]string{"ALLOT_AUTH_ISSUER_SEED": seed(t), "ALLOT_AUTH_SYS_PASSWORD": "pw"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"app", "reader", "operator", "admin", "service"} {
		if _, ok := cfg.Roles[r]; !ok {
			t.Errorf("shipped role %s missing", r)
		}
	}
	if cfg.Backend.Name != "redis" || cfg.Validators[0] != "key_format" || cfg.KeyTTL <= 0 {
		t.Errorf("defaults: %+v", cfg)
	}
}

// Batch subjects: a key for every uid reaches the ~all scope, a key bound
// to uids only its own uids' scopes, in what nats-server enforces.
func TestShippedRolesScopeBatches(t *testing.T) {
	cfg, err := LoadConfig("", env(map[string]string{"ALLOT_AUTH_ISSUER_SEED": seed(t), "ALLOT_AUTH_SYS_PASSWORD": "pw"}))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, role := range []string{"app", "reader", "operator"} {
		bound, err := policy.Compile(cfg.Roles[role].Grant, []string{"u-1"})
		if err != nil {
			t.Fatal(err)
		}
		every, err := policy.Compile(cfg.Roles[role].Grant, []string{"*"})
		if err != nil {
			t.Fatal(err)
		}
		for _, subj := range []string{"meter.credit_many", "ratelimit.check_many"} {
			if !pub(bound, subj+".u-1", now) || pub(bound, subj+".u-2", now) || pub(bound, subj+"."+events.ScopeAll, now) {
				t.Errorf("%s bound to u-1: %s scopes wrong", role, subj)
			}
			if !pub(every, subj+"."+events.ScopeAll, now) || !pub(every, subj+".u-2", now) {
				t.Errorf("%s for every uid: %s.%s refused", role, subj, events.ScopeAll)
			}
		}
		if role == "app" && !pub(bound, "meter.authorize_many.u-1", now) {
			t.Error("app: authorize_many refused")
		}
	}
}

// pub says whether p lets a connection publish to s at now.
func pub(p policy.Permissions, s string, now time.Time) bool {
	return p.Allows(policy.Op{Kind: policy.Pub, Subject: s, Time: now})
}

// A file's roles add to the shipped ones or replace one by name.
func TestLoadConfigRoles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "allot.yaml")
	text := "meter: {}\nauth:\n  roles:\n    reader:\n      grant: {request: \"meter.credit.{uid}\"}\n    auditor:\n      grant: {subscribe: registry.changed.*}\n      networks: [10.0.0.0/8]\n      client_name: ^audit-\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path, env(map[string]string{"ALLOT_AUTH_ISSUER_SEED": seed(t), "ALLOT_AUTH_SYS_PASSWORD": "pw"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Roles["reader"].Grant.Request != "meter.credit.{uid}" || cfg.Roles["auditor"].networks == nil || cfg.Roles["auditor"].name == nil {
		t.Errorf("roles: %+v", cfg.Roles)
	}
	if _, ok := cfg.Roles["admin"]; !ok {
		t.Error("a file's roles dropped the shipped ones")
	}
}

func TestLoadConfigRefuses(t *testing.T) {
	good := map[string]string{"ALLOT_AUTH_ISSUER_SEED": seed(t), "ALLOT_AUTH_SYS_PASSWORD": "pw"}
	user, _ := nkeys.CreateUser()
	userSeed, _ := user.Seed()
	for _, tc := range []struct {
		name string
		file string
		env  map[string]string
		want string
	}{
		{"no seed", "", map[string]string{"ALLOT_AUTH_SYS_PASSWORD": "pw"}, "issuer_seed: is required"},
		{"not a seed", "", map[string]string{"ALLOT_AUTH_ISSUER_SEED": "SAnope", "ALLOT_AUTH_SYS_PASSWORD": "pw"}, "issuer_seed: is not an nkey seed"},
		{"a user seed", "", map[string]string{"ALLOT_AUTH_ISSUER_SEED": string(userSeed), "ALLOT_AUTH_SYS_PASSWORD": "pw"}, "must be an account seed"},
		{"no sys password", "", map[string]string{"ALLOT_AUTH_ISSUER_SEED": good["ALLOT_AUTH_ISSUER_SEED"]}, "sys_user"},
		{"unknown field", "auth:\n  rolez: {}\n", good, "auth.rolez: unknown field"},
		{"bad grant", "auth:\n  roles:\n    x:\n      grant: {publish: a..b}\n", good, "roles.x.grant"},
		{"inexpressible grant", "auth:\n  roles:\n    x:\n      grant: {any_of: [{publish: a}, {valid: {until: 2030-01-01T00:00:00Z}}]}\n", good, "roles.x.grant"},
		{"bad role name", "auth:\n  roles:\n    Bad Name:\n      grant: {publish: a}\n", good, "a role name is"},
		{"skip key_format", "auth:\n  roles:\n    x:\n      grant: {publish: a}\n      skip_validators: [key_format]\n", good, "key_format cannot be skipped"},
		{"skip unknown", "auth:\n  roles:\n    x:\n      grant: {publish: a}\n      skip_validators: [bogus]\n", good, `unknown validator "bogus"`},
		{"bad network", "auth:\n  roles:\n    x:\n      grant: {publish: a}\n      networks: [10.0.0.0/33]\n", good, "networks[0]"},
		{"bad client name", "auth:\n  roles:\n    x:\n      grant: {publish: a}\n      client_name: \"(\"\n", good, "client_name"},
		{"validators out of order", "auth:\n  validators: [expiry, key_format]\n", good, "must start with key_format"},
		{"unknown validator", "auth:\n  validators: [key_format, magic]\n", good, `unknown validator "magic"`},
		{"bad static key", "", map[string]string{"ALLOT_AUTH_ISSUER_SEED": good["ALLOT_AUTH_ISSUER_SEED"], "ALLOT_AUTH_SYS_PASSWORD": "pw", "ALLOT_AUTH_STATIC_KEYS": "admin=not-a-key"}, "static_keys[0]"},
		{"ttl", "auth:\n  key_ttl: 0s\n", good, "key_ttl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.file != "" {
				path = filepath.Join(t.TempDir(), "allot.yaml")
				if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := LoadConfig(path, env(tc.env))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadConfig = %v, want an error mentioning %q", err, tc.want)
			}
			if err != nil && tc.env["ALLOT_AUTH_ISSUER_SEED"] != "" && strings.Contains(err.Error(), tc.env["ALLOT_AUTH_ISSUER_SEED"]) {
				t.Errorf("the error shows the seed: %v", err)
			}
		})
	}
}
