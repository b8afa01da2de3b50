package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/allot/allot/services/auth/internal/apikey"
)

// parseStaticKey reads a static key, "role=key".
func parseStaticKey(s string) (string, apikey.Key, error) {
	role, key, ok := strings.Cut(strings.TrimSpace(s), "=")
	role, key = strings.TrimSpace(role), strings.TrimSpace(key)
	if !ok || role == "" {
		return "", apikey.Key{}, errors.New(`a static key is "role=key"`)
	}
	if !roleName.MatchString(role) {
		return "", apikey.Key{}, fmt.Errorf("role %q: a role name is 1-32 of a-z 0-9 _ -", role)
	}
	k, err := apikey.Parse(key)
	if err != nil {
		return "", apikey.Key{}, err
	}
	return role, k, nil
}

// ensureStaticKeys makes sure every static key exists with its role and
// hash: the services' own keys and the first admin key come from Secrets
// this way. A key id that exists with another secret or role is an error,
// never overwritten.
func ensureStaticKeys(ctx context.Context, be Backend, keys []string, roles map[string]Role, now time.Time) error {
	for _, s := range keys {
		role, k, err := parseStaticKey(s)
		if err != nil {
			return fmt.Errorf("auth: static key: %w", err)
		}
		if _, ok := roles[role]; !ok {
			return fmt.Errorf("auth: static key %s: role %q is not defined", k.ID, role)
		}
		rec, err := be.Get(ctx, k.ID)
		switch {
		case err == nil:
			if !k.Matches(rec.Hash) || rec.Role != role {
				return fmt.Errorf("auth: static key %s exists with another secret or role (%s); revoke it or use another key", k.ID, rec.Role)
			}
			continue
		case !errors.Is(err, ErrNotFound):
			return fmt.Errorf("auth: static key %s: %w", k.ID, err)
		}
		err = be.Create(ctx, Record{ID: k.ID, Hash: k.Hash(), Role: role, UIDs: []string{"*"}, Note: "static key from config", Created: now})
		if err != nil && !errors.Is(err, ErrExists) {
			return fmt.Errorf("auth: static key %s: %w", k.ID, err)
		}
	}
	return nil
}

// NewKey makes a new API key, "<id>.<secret>", for a static key or a
// test; only its hash is ever stored.
func NewKey() (string, error) {
	k, err := apikey.New()
	if err != nil {
		return "", err
	}
	return k.String(), nil
}
