package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/services/auth/internal/policy"
	"github.com/nats-io/jwt/v2"
)

// decider is the service's Decider: the key's format, its record, the
// secret against the hash, the validators, and the role compiled with the
// key's uids and adjustments into the permissions of the connection.
type decider struct {
	backend Backend
	roles   map[string]Role
	chain   chain
	now     func() time.Time
	log     *slog.Logger
	perms   permCache
}

// permCache keeps compiled permissions by what they are compiled from
// (the role, the key's uids, the adjustments in force): compiling is a
// pure function of those and a tenth of a decision's time, and keys of
// one role and uids connect again and again. The roles do not change
// while the service runs.
type permCache struct {
	mu sync.Mutex
	m  map[string]policy.Permissions
}

// maxPermCache bounds the cache; a full cache starts over.
const maxPermCache = 4096

func (c *permCache) compile(roleName string, role Role, uids []string, adj policy.Adjustments) (policy.Permissions, error) {
	key := roleName + "\x00" + strings.Join(uids, ",") + "\x00" + strings.Join(adj.Deny, ",") + "\x00" + strings.Join(adj.Allow, ",")
	c.mu.Lock()
	p, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return p, nil
	}
	p, err := policy.CompileAdjusted(role.Grant, uids, adj)
	if err != nil {
		return p, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxPermCache {
		c.m = map[string]policy.Permissions{}
	}
	c.m[key] = p
	c.mu.Unlock()
	return p, nil
}

// Decide implements Decider.
func (d *decider) Decide(ctx context.Context, req *jwt.AuthorizationRequest) (Grant, error) {
	c := &Conn{Request: req, Now: d.now()}
	if err := d.chain.fns[0](c); err != nil { // key_format: nothing is known before it
		return Grant{}, err
	}
	rec, err := d.backend.Get(ctx, c.Key.ID)
	switch {
	case errors.Is(err, ErrNotFound):
		return Grant{}, Refuse("unknown_key", "no key %s", c.Key.ID)
	case err != nil:
		return Grant{}, fmt.Errorf("auth: read key %s: %w", c.Key.ID, err)
	}
	if !c.Key.Matches(rec.Hash) {
		return Grant{}, Refuse("bad_secret", "key %s: the secret does not match", c.Key.ID)
	}
	role, ok := d.roles[rec.Role]
	if !ok {
		return Grant{}, Refuse("unknown_role", "key %s has role %q, which the config does not define", rec.ID, rec.Role)
	}
	c.Record, c.Role = rec, role
	for i := 1; i < len(d.chain.fns); i++ {
		if slices.Contains(role.Skip, d.chain.names[i]) {
			continue
		}
		if err := d.chain.fns[i](c); err != nil {
			return Grant{}, err
		}
	}
	g, err := grantWith(rec, role, c.Now, func(adj policy.Adjustments) (policy.Permissions, error) {
		return d.perms.compile(rec.Role, role, rec.UIDs, adj)
	})
	if err != nil {
		return Grant{}, Refuse("inexpressible", "key %s: %v", rec.ID, err)
	}
	if err := d.backend.Touch(ctx, rec.ID, c.Now); err != nil {
		d.log.Debug("last use not recorded", "key", rec.ID, "err", err)
	}
	return g, nil
}

// grantOf compiles what the key rec of role may do at now: the role with
// its uids, its overrides and additions in force, its own inbox, until the
// earliest of the key's end, an adjustment's end and the role's window.
func grantOf(rec Record, role Role, now time.Time) (Grant, error) {
	return grantWith(rec, role, now, func(adj policy.Adjustments) (policy.Permissions, error) {
		return policy.CompileAdjusted(role.Grant, rec.UIDs, adj)
	})
}

// grantWith is grantOf with the compiling handed in (the decider's is
// cached).
func grantWith(rec Record, role Role, now time.Time, compile func(policy.Adjustments) (policy.Permissions, error)) (Grant, error) {
	var adj policy.Adjustments
	var ends []time.Time
	for _, a := range rec.Active(now) {
		if a.Deny != "" {
			adj.Deny = append(adj.Deny, a.Deny)
		}
		if a.Allow != "" {
			adj.Allow = append(adj.Allow, a.Allow)
		}
		ends = append(ends, a.Expires)
	}
	p, err := compile(adj)
	if err != nil {
		return Grant{}, err
	}
	if len(p.Sub.Allow) == 0 {
		p.Sub.Deny = nil // "deny everything" stands for an empty allow list, which the inbox now fills
	}
	var jp jwt.Permissions
	jp.Pub.Allow.Add(p.Pub.Allow...)
	jp.Pub.Deny.Add(p.Pub.Deny...)
	jp.Sub.Allow.Add(p.Sub.Allow...)
	jp.Sub.Deny.Add(p.Sub.Deny...)
	// Replies come to the key's own inbox, never to a shared _INBOX.>
	// another key could read.
	jp.Sub.Allow.Add(events.KeyInboxPrefix(rec.ID) + ".>")
	if p.Respond {
		jp.Resp = &jwt.ResponsePermission{MaxMsgs: 1}
	}
	return Grant{
		Name:        rec.ID,
		Permissions: jp,
		NotBefore:   p.Window.From,
		Expires:     p.Expires(append(ends, rec.Expires)...),
	}, nil
}
