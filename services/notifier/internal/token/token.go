// Package token signs and checks the notifier's confirmation tokens.
//
// A token is base64url(payload) "." base64url(HMAC-SHA256(key, payload)).
// The payload is version 1, the signing key's id (4 bytes), the expiry
// (Unix seconds, 8 bytes), a 16-byte random nonce, then the uid and the
// email address, each after its length (2 bytes). Keys are derived from
// the configured secrets, so a secret is rotated by signing with the new
// one while the old one still verifies. The package says whether a token
// is genuine and unexpired; whether it was already used is the caller's
// to record (the nonce names it).
package token

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

const (
	version   = 1
	keyIDLen  = 4
	nonceLen  = 16
	macLen    = sha256.Size
	headerLen = 1 + keyIDLen + 8 + nonceLen
	// MaxFieldLen is the longest uid or email a token carries.
	MaxFieldLen = 1024
)

// Errors of Check. ErrExpired comes with the claims, which are genuine.
var (
	ErrInvalid = errors.New("token: not a token signed with a configured secret")
	ErrExpired = errors.New("token: expired")
)

// Claims are what a token says.
type Claims struct {
	UID     string
	Email   string
	Expires time.Time // to the second
	Nonce   string    // hex; unique per token
}

type key struct {
	id  [keyIDLen]byte
	mac []byte
}

// Signer signs with its first key and checks with every one. It is safe
// for concurrent use.
type Signer struct {
	keys []key
	rand func([]byte) (int, error)
}

// New returns a Signer for the secrets, the first of which signs.
func New(secrets ...string) (*Signer, error) {
	if len(secrets) == 0 {
		return nil, errors.New("token: no secret")
	}
	s := &Signer{rand: rand.Read}
	seen := map[[keyIDLen]byte]bool{}
	for i, secret := range secrets {
		if secret == "" {
			return nil, fmt.Errorf("token: secret %d is empty", i)
		}
		k := key{mac: derive(secret, "allot confirmation token mac v1")}
		copy(k.id[:], derive(secret, "allot confirmation token key id v1"))
		if seen[k.id] {
			return nil, fmt.Errorf("token: secret %d is given twice", i)
		}
		seen[k.id] = true
		s.keys = append(s.keys, k)
	}
	return s, nil
}

func derive(secret, label string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(label))
	return m.Sum(nil)
}

// KeyID names the signing key in logs (hex), never the secret.
func (s *Signer) KeyID() string { return hex.EncodeToString(s.keys[0].id[:]) }

// Sign returns a token for uid and email that expires at expires.
func (s *Signer) Sign(uid, email string, expires time.Time) (string, Claims, error) {
	if uid == "" || email == "" || len(uid) > MaxFieldLen || len(email) > MaxFieldLen {
		return "", Claims{}, errors.New("token: uid and email must be 1 to 1024 bytes")
	}
	k := s.keys[0]
	p := make([]byte, headerLen, headerLen+4+len(uid)+len(email))
	p[0] = version
	copy(p[1:], k.id[:])
	binary.BigEndian.PutUint64(p[1+keyIDLen:], uint64(expires.Unix()))
	nonce := p[1+keyIDLen+8 : headerLen]
	if _, err := s.rand(nonce); err != nil {
		return "", Claims{}, fmt.Errorf("token: nonce: %w", err)
	}
	p = binary.BigEndian.AppendUint16(p, uint16(len(uid)))
	p = append(p, uid...)
	p = binary.BigEndian.AppendUint16(p, uint16(len(email)))
	p = append(p, email...)
	m := hmac.New(sha256.New, k.mac)
	m.Write(p)
	enc := base64.RawURLEncoding
	tok := enc.EncodeToString(p) + "." + enc.EncodeToString(m.Sum(nil))
	return tok, Claims{UID: uid, Email: email, Expires: time.Unix(expires.Unix(), 0).UTC(), Nonce: hex.EncodeToString(nonce)}, nil
}

// Check returns the claims of a genuine token. A token whose signature
// no configured key makes, or that is malformed, is ErrInvalid with no
// claims; a genuine one past its expiry at now is ErrExpired with its
// claims.
func (s *Signer) Check(tok string, now time.Time) (Claims, error) {
	payloadText, macText, ok := strings.Cut(tok, ".")
	if !ok || len(payloadText) > 4*MaxFieldLen || strings.Contains(macText, ".") {
		return Claims{}, ErrInvalid
	}
	enc := base64.RawURLEncoding
	p, err1 := enc.DecodeString(payloadText)
	mac, err2 := enc.DecodeString(macText)
	if err1 != nil || err2 != nil || len(mac) != macLen || len(p) < headerLen+4 || p[0] != version {
		return Claims{}, ErrInvalid
	}
	var k *key
	for i := range s.keys {
		if bytes.Equal(s.keys[i].id[:], p[1:1+keyIDLen]) {
			k = &s.keys[i]
			break
		}
	}
	if k == nil {
		return Claims{}, ErrInvalid
	}
	m := hmac.New(sha256.New, k.mac)
	m.Write(p)
	if !hmac.Equal(m.Sum(nil), mac) {
		return Claims{}, ErrInvalid
	}
	// Signed by us: the layout is ours, but check it anyway.
	rest := p[headerLen:]
	uid, rest, ok1 := field(rest)
	email, rest, ok2 := field(rest)
	if !ok1 || !ok2 || len(rest) != 0 {
		return Claims{}, ErrInvalid
	}
	exp := int64(binary.BigEndian.Uint64(p[1+keyIDLen:]))
	c := Claims{UID: uid, Email: email, Expires: time.Unix(exp, 0).UTC(), Nonce: hex.EncodeToString(p[1+keyIDLen+8 : headerLen])}
	if !now.Before(c.Expires) {
		return c, ErrExpired
	}
	return c, nil
}

func field(b []byte) (string, []byte, bool) {
	if len(b) < 2 {
		return "", nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if n == 0 || len(b) < 2+n {
		return "", nil, false
	}
	return string(b[2 : 2+n]), b[2+n:], true
}
