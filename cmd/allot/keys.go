package main

import (
	"context"
	"flag"
	"fmt"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/services/auth"
	"github.com/nats-io/nkeys"
)

func keysCommand() command {
	return command{
		name:    "keys",
		summary: "create, list, revoke, override or add to API keys",
		usage: `Usage: allot keys create -role NAME [-uids UID]... [-ttl 720h] [-note TEXT]
       allot keys list
       allot keys revoke ID
       allot keys override ID -deny SUBJECT -ttl 1h
       allot keys add ID -allow SUBJECT -ttl 15m
       allot keys issuer
       allot keys new -role NAME

An API key (an 8-character id, a dot, a 32-character secret) is what a
client connects to NATS with when NATS runs allot's auth: the key as the
token (nats --token KEY, events.KeyOptions in Go), or the id as user and
the secret as password. The key's role says what it may publish and
subscribe to, for its uids (-uids: a uid, or * for every uid); nats-server
enforces it on every message. These commands call the auth service
(auth.keys.*) and need an admin key (-key, ALLOT_KEY or -key-file).

  create    prints the new key once; only a hash of it is stored
  list      every key: id, role, uids, created, expires, last used, revoked
  revoke    ends a key; its open connections are closed within a second
  override  takes SUBJECT (publishing and subscribing) away for -ttl
  add       lets the key publish (and request) SUBJECT for -ttl
  issuer    makes an issuer key pair for a new deployment, offline: the
            seed is the auth service's auth.issuer_seed, the public key
            goes in nats-server's auth_callout block
  new       makes a key offline, stored nowhere, and prints it with its
            static key line (role=key): for auth.static_keys, such as the
            services' key and the first admin key of a new deployment

Examples:
  allot keys create -role app -uids u-1 -uids u-2 -note "photo app"
  allot keys override AbCd1234 -deny 'ratelimit.reset.*' -ttl 1h
  allot keys revoke AbCd1234
  allot keys new -role admin`,
		run: runKeys,
	}
}

func runKeys(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
			fs.Usage()
			return flag.ErrHelp
		}
		return usagef("name a subcommand: create, list, revoke, override, add, issuer or new")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "issuer":
		return keysIssuer(env, fs, args)
	case "new":
		return keysNew(env, fs, args)
	}
	var ef endpointFlags
	ef.register(fs, env)
	var uids listFlags
	var role, ttl, note, deny, allow *string
	switch sub {
	case "create":
		role = fs.String("role", "", "the key's role (app, reader, operator, admin, service, or one of the config's)")
		fs.Var(&uids, "uids", "a uid the key may act for, or * for every uid (repeatable)")
		ttl = fs.String("ttl", "", "how long the key lasts, e.g. 720h (default: the service's auth.key_ttl)")
		note = fs.String("note", "", "what the key is for")
	case "override":
		deny = fs.String("deny", "", "the subject to take away, e.g. 'ratelimit.reset.*'")
		ttl = fs.String("ttl", "", "for how long, e.g. 1h")
	case "add":
		allow = fs.String("allow", "", "the subject to allow publishing (and requesting) to, e.g. meter.grants.u-7")
		ttl = fs.String("ttl", "", "for how long, e.g. 15m")
	case "list", "revoke":
	default:
		return usagef("unknown subcommand %q: create, list, revoke, override, add, issuer or new", sub)
	}
	rest, err := parseFlags(fs, args, sub == "revoke" || sub == "override" || sub == "add")
	if err != nil {
		return err
	}
	id := ""
	if sub == "revoke" || sub == "override" || sub == "add" {
		if len(rest) != 1 {
			return usagef("%s takes one key id", sub)
		}
		id = rest[0]
	}
	subject := func(events.Subjects) string { return events.KeysPrefix + "." + sub }
	switch sub {
	case "create":
		if *role == "" {
			return usagef("-role is required")
		}
		req := events.KeyCreateRequest{Role: *role, UIDs: uids, TTL: *ttl, Note: *note}
		reply, err := call(ctx, env, &ef, req, "auth service", subject, func(ctx context.Context, c *events.Client) (events.KeyCreated, error) {
			return c.CreateKey(ctx, req)
		})
		if err != nil {
			return err
		}
		if ef.json {
			return printJSON(env.stdout, reply)
		}
		fmt.Fprintf(env.stdout, "key: %s\n", reply.Key)
		fmt.Fprintf(env.stderr, "key %s (role %s, uids %s) expires %s; it is shown this once, only its hash is stored\n",
			reply.ID, reply.Role, joinOr(reply.UIDs, "none"), timestamp(reply.Expires))
		return nil
	case "list":
		reply, err := call(ctx, env, &ef, events.KeyListRequest{}, "auth service", subject, func(ctx context.Context, c *events.Client) (events.KeyList, error) {
			return c.ListKeys(ctx)
		})
		if err != nil {
			return err
		}
		if ef.json {
			return printJSON(env.stdout, reply)
		}
		return printKeys(env, reply.Keys)
	case "revoke":
		req := events.KeyRevokeRequest{ID: id}
		reply, err := call(ctx, env, &ef, req, "auth service", subject, func(ctx context.Context, c *events.Client) (events.KeyDone, error) {
			return c.RevokeKey(ctx, id)
		})
		if err != nil {
			return err
		}
		if ef.json {
			return printJSON(env.stdout, reply)
		}
		fmt.Fprintf(env.stdout, "revoked key %s at %s; its connections are being closed\n", id, timestamp(reply.Key.Revoked))
		return nil
	}
	req := events.KeyAdjustRequest{ID: id, TTL: *ttl}
	if deny != nil {
		req.Deny = *deny
	} else {
		req.Allow = *allow
	}
	reply, err := call(ctx, env, &ef, req, "auth service", subject, func(ctx context.Context, c *events.Client) (events.KeyDone, error) {
		return c.AdjustKey(ctx, req)
	})
	if err != nil {
		return err
	}
	if ef.json {
		return printJSON(env.stdout, reply)
	}
	what, subj := "denied", req.Deny
	if req.Allow != "" {
		what, subj = "allowed", req.Allow
	}
	d, _ := time.ParseDuration(req.TTL)
	fmt.Fprintf(env.stdout, "key %s: %s %s for %s; its connections get the new permissions now\n", id, what, subj, d)
	return nil
}

func printKeys(env *cliEnv, keys []events.KeyInfo) error {
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROLE\tUIDS\tCREATED\tEXPIRES\tLAST_USED\tSTATE\tNOTE")
	for _, k := range keys {
		state := "active"
		if !k.Revoked.IsZero() {
			state = "revoked " + timestamp(k.Revoked)
		} else if !k.Expires.IsZero() && time.Now().After(k.Expires) {
			state = "expired"
		}
		for _, a := range k.Adjustments {
			if time.Now().Before(a.Expires) {
				if a.Deny != "" {
					state += fmt.Sprintf(", -%s until %s", a.Deny, timestamp(a.Expires))
				} else {
					state += fmt.Sprintf(", +%s until %s", a.Allow, timestamp(a.Expires))
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Role, joinOr(k.UIDs, "-"), timestamp(k.Created), timeOrDash(k.Expires), timeOrDash(k.LastUsed), state, k.Note)
	}
	return tw.Flush()
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return timestamp(t)
}

func joinOr(list []string, none string) string {
	if len(list) == 0 {
		return none
	}
	return strings.Join(list, ",")
}

// keysIssuer makes an issuer account key pair, offline.
func keysIssuer(env *cliEnv, fs *flag.FlagSet, args []string) error {
	if _, err := parseFlags(fs, args, false); err != nil {
		return err
	}
	kp, err := nkeys.CreateAccount()
	if err != nil {
		return err
	}
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	fmt.Fprintf(env.stdout, "seed: %s\npublic: %s\n", seed, pub)
	fmt.Fprintln(env.stderr, "the seed is the auth service's auth.issuer_seed (ALLOT_AUTH_ISSUER_SEED; keep it in a Secret); the public key is the issuer of nats-server's auth_callout block")
	return nil
}

// roleName is what the auth service takes as a role's name.
var roleName = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)

// keysNew makes an API key offline and prints it with its static key
// line: a new deployment's keys exist before any auth service runs to
// create them (auth.static_keys), and a Secret holds them.
func keysNew(env *cliEnv, fs *flag.FlagSet, args []string) error {
	role := fs.String("role", "", "the key's role, for its static key line (app, reader, operator, admin, service, or one of auth.roles)")
	if _, err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if *role == "" {
		return usagef("-role is required")
	}
	if !roleName.MatchString(*role) {
		return usagef("-role %q: a role name is 1-32 of a-z 0-9 _ -", *role)
	}
	key, err := auth.NewKey()
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "key: %s\nstatic: %s=%s\n", key, *role, key)
	note := ""
	if cfg, err := auth.DefaultConfig(); err == nil {
		if _, shipped := cfg.Roles[*role]; !shipped {
			note = fmt.Sprintf("; %s is no shipped role, so auth.roles must define it", *role)
		}
	}
	fmt.Fprintf(env.stderr, "the key exists nowhere until the auth service has it as a static key (auth.static_keys, ALLOT_AUTH_STATIC_KEYS: the static line), which it makes sure of at start with role %s%s; keep it in a Secret\n", *role, note)
	return nil
}
