// Package apikey makes, parses and checks allot's API keys, in apicrud's
// shape: 41 characters, an 8-character public key id (48 bits), a dot,
// and a 32-character secret (192 bits), both in the URL-safe base64
// alphabet. Only a hash of the secret is ever stored.
//
// The secret is random and long, so a fast hash is enough (no password
// stretching): guessing 192 bits is out of reach however fast the hash,
// and verifying a key must cost microseconds, since it runs on every
// NATS connect.
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

const (
	// IDLen and SecretLen are the lengths of a key's two parts.
	IDLen     = 8
	SecretLen = 32
	// Len is the length of a whole key: id, dot, secret.
	Len = IDLen + 1 + SecretLen
)

// ErrMalformed marks a string that is not an API key or key id.
var ErrMalformed = errors.New("apikey: malformed key")

// Key is a key as its holder has it.
type Key struct {
	ID     string
	Secret string
}

// String is the key as it is handed out: "<id>.<secret>".
func (k Key) String() string { return k.ID + "." + k.Secret }

// New makes a key from the system's random source.
func New() (Key, error) {
	var b [(IDLen + SecretLen) * 6 / 8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return Key{}, fmt.Errorf("apikey: random: %w", err)
	}
	s := base64.RawURLEncoding.EncodeToString(b[:])
	return Key{ID: s[:IDLen], Secret: s[IDLen:]}, nil
}

// Parse splits a key into its id and secret, refusing anything that is
// not exactly a key. Its errors never repeat the input: a key that is
// almost right is still a secret.
func Parse(s string) (Key, error) {
	if len(s) != Len {
		return Key{}, fmt.Errorf("%w: want %d characters, got %d", ErrMalformed, Len, len(s))
	}
	if s[IDLen] != '.' {
		return Key{}, fmt.Errorf("%w: want a dot after the %d-character key id", ErrMalformed, IDLen)
	}
	k := Key{ID: s[:IDLen], Secret: s[IDLen+1:]}
	if i := strings.IndexFunc(k.ID, notBase64URL); i >= 0 {
		return Key{}, fmt.Errorf("%w: the key id has a character outside A-Z a-z 0-9 - _ at %d", ErrMalformed, i+1)
	}
	if i := strings.IndexFunc(k.Secret, notBase64URL); i >= 0 {
		return Key{}, fmt.Errorf("%w: the secret has a character outside A-Z a-z 0-9 - _ at %d", ErrMalformed, IDLen+2+i)
	}
	return k, nil
}

// CheckID refuses a string that is not a key id (in requests that name
// one: list, revoke, override).
func CheckID(id string) error {
	if len(id) != IDLen || strings.IndexFunc(id, notBase64URL) >= 0 {
		return fmt.Errorf("%w: a key id is %d characters of A-Z a-z 0-9 - _", ErrMalformed, IDLen)
	}
	return nil
}

func notBase64URL(r rune) bool {
	return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_')
}

// Hash is what is stored for a key: a SHA-256 of its id and secret under
// a version tag, in hex. The id is inside, so a hash cannot be moved to
// another key's record.
func (k Key) Hash() string {
	h := sha256.Sum256([]byte("allot-apikey-v1\x00" + k.ID + "\x00" + k.Secret))
	return hex.EncodeToString(h[:])
}

// Matches reports whether k is the key whose stored hash is hash, in
// time that does not depend on where they differ.
func (k Key) Matches(hash string) bool {
	return subtle.ConstantTimeCompare([]byte(k.Hash()), []byte(hash)) == 1
}
