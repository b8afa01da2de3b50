// Package crypt seals registry entries with AES-256-GCM under keys derived
// from configured secrets, and opens them with any of those keys.
//
// Each secret, a random key or a passphrase, goes through HKDF-SHA256
// (RFC 5869, no salt) three times with different info strings: a 32-byte
// AES-256 key, a 32-byte HMAC key for nonces, and a 4-byte key id. A
// sealed entry is
//
//	0x01 | key id (4) | nonce (12) | AES-256-GCM(plaintext, aad) with its 16-byte tag
//
// The nonce is HMAC-SHA256(nonce key, aad || plaintext) cut to 12 bytes
// (a synthetic IV): the same plaintext sealed under the same key gives the
// same bytes, so the registry's script sees whether a heartbeat changed
// anything by comparing ciphertexts, while different plaintexts get
// different nonces. What this reveals is only whether two entries under
// one key are equal. The aad is the entry's "<name>:<id>", so an entry
// moved to another instance's slot does not open.
//
// HKDF does not stretch a weak passphrase: use random secrets.
package crypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
)

// Version is the first byte of every sealed entry.
const Version byte = 0x01

const (
	idLen     = 4
	nonceLen  = 12
	headerLen = 1 + idLen + nonceLen
)

// Errors of Open; both mean the entry is skipped, never fatal.
var (
	// ErrUnknownKey: the entry was sealed by a key not configured here
	// (another cluster sharing the Redis, or a key rotated out).
	ErrUnknownKey = errors.New("crypt: sealed by an unknown key")
	// ErrCorrupt: not a sealed entry, or its authentication failed.
	ErrCorrupt = errors.New("crypt: corrupt or forged entry")
)

type key struct {
	id    [idLen]byte
	aead  cipher.AEAD
	nonce []byte // HMAC key of the synthetic nonce
}

// Sealer seals with the first key and opens with any. It is safe for
// concurrent use.
type Sealer struct {
	keys []key
}

// New derives the keys of secrets; the first seals. At least one is
// required.
func New(secrets ...string) (*Sealer, error) {
	if len(secrets) == 0 {
		return nil, errors.New("crypt: no key")
	}
	s := &Sealer{}
	for i, sec := range secrets {
		if sec == "" {
			return nil, fmt.Errorf("crypt: key %d is empty", i)
		}
		k, err := derive(sec)
		if err != nil {
			return nil, fmt.Errorf("crypt: key %d: %w", i, err)
		}
		s.keys = append(s.keys, k)
	}
	return s, nil
}

func derive(secret string) (key, error) {
	var k key
	enc, err := hkdf.Key(sha256.New, []byte(secret), nil, "allot registry aes-256-gcm v1", 32)
	if err != nil {
		return k, err
	}
	if k.nonce, err = hkdf.Key(sha256.New, []byte(secret), nil, "allot registry nonce v1", 32); err != nil {
		return k, err
	}
	id, err := hkdf.Key(sha256.New, []byte(secret), nil, "allot registry key id v1", idLen)
	if err != nil {
		return k, err
	}
	copy(k.id[:], id)
	block, err := aes.NewCipher(enc)
	if err != nil {
		return k, err
	}
	if k.aead, err = cipher.NewGCM(block); err != nil {
		return k, err
	}
	return k, nil
}

// KeyID returns the id of the sealing key, in hex; it names nothing
// secret.
func (s *Sealer) KeyID() string { return fmt.Sprintf("%x", s.keys[0].id) }

// Seal encrypts plaintext for the entry named aad.
func (s *Sealer) Seal(plaintext, aad []byte) []byte {
	k := s.keys[0]
	mac := hmac.New(sha256.New, k.nonce)
	mac.Write(aad)
	mac.Write([]byte{0})
	mac.Write(plaintext)
	sum := mac.Sum(nil)
	out := make([]byte, headerLen, headerLen+len(plaintext)+k.aead.Overhead())
	out[0] = Version
	copy(out[1:], k.id[:])
	copy(out[1+idLen:], sum[:nonceLen])
	return k.aead.Seal(out, out[1+idLen:headerLen], plaintext, aad)
}

// Open decrypts an entry sealed by Seal under any configured key.
func (s *Sealer) Open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < headerLen+16 || sealed[0] != Version {
		return nil, ErrCorrupt
	}
	for _, k := range s.keys {
		if subtle.ConstantTimeCompare(k.id[:], sealed[1:1+idLen]) != 1 {
			continue
		}
		pt, err := k.aead.Open(nil, sealed[1+idLen:headerLen], sealed[headerLen:], aad)
		if err != nil {
			return nil, ErrCorrupt
		}
		return pt, nil
	}
	return nil, ErrUnknownKey
}
