package main

import (
	"strings"
	"testing"

	"github.com/allot/allot/services/auth"
	"github.com/nats-io/nkeys"
)

// allot keys new makes a key offline, and its static line is what the auth
// service takes as a static key of that role.
func TestKeysNew(t *testing.T) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	seen := map[string]bool{}
	for _, role := range []string{"service", "admin", "service"} {
		r := runCLI(t, nil, "", "keys", "new", "-role", role)
		if r.code != 0 {
			t.Fatalf("allot keys new -role %s: exit %d: %s", role, r.code, r.stderr)
		}
		var key, static string
		for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			if k, ok := strings.CutPrefix(line, "key: "); ok {
				key = k
			} else if s, ok := strings.CutPrefix(line, "static: "); ok {
				static = s
			} else {
				t.Errorf("unexpected line %q", line)
			}
		}
		if static != role+"="+key {
			t.Errorf("static line %q, want %s=%s", static, role, key)
		}
		if seen[key] {
			t.Errorf("key %s made twice", key)
		}
		seen[key] = true
		if strings.Contains(r.stderr, key) {
			t.Errorf("the key is printed on stderr too: %s", r.stderr)
		}
		env := map[string]string{"ALLOT_AUTH_ISSUER_SEED": string(seed), "ALLOT_AUTH_SYS_PASSWORD": "p", "ALLOT_AUTH_STATIC_KEYS": static}
		cfg, err := auth.LoadConfig("", func(k string) string { return env[k] })
		if err != nil {
			t.Fatalf("the auth service refuses the static line: %v", err)
		}
		if len(cfg.StaticKeys) != 1 || cfg.StaticKeys[0].Reveal() != static {
			t.Errorf("auth.static_keys: %v", cfg.StaticKeys)
		}
	}
	r := runCLI(t, nil, "", "keys", "new", "-role", "robot")
	if r.code != 0 || !strings.Contains(r.stderr, "robot is no shipped role, so auth.roles must define it") {
		t.Errorf("allot keys new -role robot: exit %d, stderr %q; want a note that auth.roles must define it", r.code, r.stderr)
	}
}

func TestKeysNewBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"keys", "new"}, "-role is required"},
		{[]string{"keys", "new", "-role", "Admin"}, `-role "Admin": a role name is 1-32 of a-z 0-9 _ -`},
		{[]string{"keys", "new", "-role", "admin=x"}, `-role "admin=x"`},
		{[]string{"keys", "new", "-role", "admin", "extra"}, `unexpected argument "extra"`},
		{[]string{"keys", "new", "-uids", "u-1"}, "flag provided but not defined: -uids"},
		{[]string{"keys", "frob"}, `unknown subcommand "frob": create, list, revoke, override, add, issuer or new`},
	} {
		r := runCLI(t, nil, "", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("allot %v: exit %d, stdout %q, stderr %q; want exit 2 mentioning %q and no key", tc.args, r.code, r.stdout, r.stderr, tc.want)
		}
	}
}
