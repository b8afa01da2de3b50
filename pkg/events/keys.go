package events

import (
	"context"
	"strings"
	"time"
)

// The auth service's key endpoints, under the subject prefix KeysPrefix:
// create, list, revoke, override and add. Only a key whose role may
// publish to them (admin) reaches them: nats-server enforces it.
const KeysPrefix = "auth.keys"

// Key request limits.
const (
	// MaxKeyUIDs is the most uid patterns one key may carry.
	MaxKeyUIDs = 64
	// MaxKeyNote is the longest note of a key, in bytes.
	MaxKeyNote = 256
)

// KeyCreateRequest asks for a new API key (auth.keys.create).
type KeyCreateRequest struct {
	Role string `json:"role"`
	// UIDs are the uids the key may act for: each a uid, or "*" for all.
	UIDs []string `json:"uids,omitempty"`
	// TTL is how long the key lasts, as a Go duration ("720h"); empty
	// takes the service's auth.key_ttl.
	TTL  string `json:"ttl,omitempty"`
	Note string `json:"note,omitempty"`
}

// Validate checks a key creation request.
func (r KeyCreateRequest) Validate() error {
	if err := ValidateToken("role", r.Role); err != nil {
		return err
	}
	if len(r.UIDs) > MaxKeyUIDs {
		return invalid("uids", "at most %d (got %d)", MaxKeyUIDs, len(r.UIDs))
	}
	for _, u := range r.UIDs {
		if u != "*" && !IsToken(u) {
			return invalid("uids", "each is a uid (1-128 of A-Z a-z 0-9 _ -) or * for every uid; NATS permissions match whole subject tokens, so a partial pattern such as %q cannot be enforced", u)
		}
	}
	if r.TTL != "" {
		if err := validTTL("ttl", r.TTL); err != nil {
			return err
		}
	}
	if len(r.Note) > MaxKeyNote {
		return invalid("note", "at most %d bytes (got %d)", MaxKeyNote, len(r.Note))
	}
	return nil
}

func validTTL(field, s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return invalid(field, "must be a duration such as 720h or 15m (got %q)", s)
	}
	if d <= 0 {
		return invalid(field, "must be > 0 (got %s)", s)
	}
	return nil
}

// KeyInfo is what the service tells of a key: never its secret.
type KeyInfo struct {
	ID          string          `json:"id"`
	Role        string          `json:"role"`
	UIDs        []string        `json:"uids,omitempty"`
	Note        string          `json:"note,omitempty"`
	Created     time.Time       `json:"created"`
	Expires     time.Time       `json:"expires,omitzero"`
	Revoked     time.Time       `json:"revoked,omitzero"`
	LastUsed    time.Time       `json:"last_used,omitzero"`
	Adjustments []KeyAdjustment `json:"adjustments,omitempty"`
}

// KeyAdjustment is an override (Deny) or an addition (Allow) of a key.
type KeyAdjustment struct {
	Allow   string    `json:"allow,omitempty"`
	Deny    string    `json:"deny,omitempty"`
	Expires time.Time `json:"expires"`
}

// KeyCreated answers a creation: the key, shown this once, and its info.
type KeyCreated struct {
	Key string `json:"key"`
	KeyInfo
}

// KeyListRequest asks for every key (auth.keys.list).
type KeyListRequest struct{}

// Validate accepts the empty request.
func (KeyListRequest) Validate() error { return nil }

// KeyList answers a list.
type KeyList struct {
	Keys []KeyInfo `json:"keys"`
}

// KeyRevokeRequest revokes a key (auth.keys.revoke).
type KeyRevokeRequest struct {
	ID string `json:"id"`
}

// Validate checks a revocation.
func (r KeyRevokeRequest) Validate() error { return validKeyID("id", r.ID) }

// KeyAdjustRequest overrides (auth.keys.override, Deny) or adds to
// (auth.keys.add, Allow) a key's grant for TTL.
type KeyAdjustRequest struct {
	ID    string `json:"id"`
	Allow string `json:"allow,omitempty"`
	Deny  string `json:"deny,omitempty"`
	TTL   string `json:"ttl"`
}

// Validate checks an adjustment: a key id, exactly one subject, a ttl.
func (r KeyAdjustRequest) Validate() error {
	if err := validKeyID("id", r.ID); err != nil {
		return err
	}
	switch {
	case r.Allow != "" && r.Deny != "":
		return invalid("allow", "give allow or deny, not both")
	case r.Allow == "" && r.Deny == "":
		return invalid("deny", "give the subject to deny (override) or allow (add)")
	}
	field, subj := "deny", r.Deny
	if r.Allow != "" {
		field, subj = "allow", r.Allow
	}
	if err := validSubjectPattern(field, subj); err != nil {
		return err
	}
	return validTTL("ttl", r.TTL)
}

// KeyDone answers a revocation or an adjustment.
type KeyDone struct {
	OK  bool    `json:"ok"`
	Key KeyInfo `json:"key"`
}

func validKeyID(field, id string) error {
	if len(id) != KeyIDLen || strings.IndexFunc(id, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) >= 0 {
		return invalid(field, "a key id is %d characters of A-Z a-z 0-9 - _ (got %q)", KeyIDLen, id)
	}
	return nil
}

// validSubjectPattern checks a NATS subject that may hold wildcards.
func validSubjectPattern(field, s string) error {
	if s == "" || len(s) > 256 || strings.ContainsAny(s, " \t\r\n") {
		return invalid(field, "must be a NATS subject of at most 256 characters without spaces (got %q)", s)
	}
	toks := strings.Split(s, ".")
	for i, t := range toks {
		switch {
		case t == "":
			return invalid(field, "%q has an empty token", s)
		case t == ">" && i != len(toks)-1:
			return invalid(field, "%q: > must be the last token", s)
		case t != "*" && t != ">" && strings.ContainsAny(t, "*>"):
			return invalid(field, "%q: a wildcard must be a whole token", s)
		}
	}
	return nil
}

// ValidateKeyID checks that id is an API key id.
func ValidateKeyID(id string) error { return validKeyID("id", id) }

// CreateKey asks the auth service for a new API key; the reply holds the
// key, which is never shown again.
func (c *Client) CreateKey(ctx context.Context, req KeyCreateRequest) (KeyCreated, error) {
	var reply KeyCreated
	if err := req.Validate(); err != nil {
		return reply, err
	}
	err := c.request(ctx, KeysPrefix+".create", req, &reply)
	return reply, err
}

// ListKeys lists every API key, never a secret.
func (c *Client) ListKeys(ctx context.Context) (KeyList, error) {
	var reply KeyList
	err := c.request(ctx, KeysPrefix+".list", KeyListRequest{}, &reply)
	return reply, err
}

// RevokeKey revokes an API key; its connections are closed within a
// second.
func (c *Client) RevokeKey(ctx context.Context, id string) (KeyDone, error) {
	var reply KeyDone
	req := KeyRevokeRequest{ID: id}
	if err := req.Validate(); err != nil {
		return reply, err
	}
	err := c.request(ctx, KeysPrefix+".revoke", req, &reply)
	return reply, err
}

// AdjustKey overrides (req.Deny) or adds to (req.Allow) a key's grant for
// req.TTL; its connections get the new permissions within a second.
func (c *Client) AdjustKey(ctx context.Context, req KeyAdjustRequest) (KeyDone, error) {
	var reply KeyDone
	if err := req.Validate(); err != nil {
		return reply, err
	}
	endpoint := ".override"
	if req.Allow != "" {
		endpoint = ".add"
	}
	err := c.request(ctx, KeysPrefix+endpoint, req, &reply)
	return reply, err
}
