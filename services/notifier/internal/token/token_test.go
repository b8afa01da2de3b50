package token

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

var (
	secretA = strings.Repeat("a", 32)
	secretB = strings.Repeat("b", 32)
	now     = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
)

func mustNew(t testing.TB, secrets ...string) *Signer {
	t.Helper()
	s, err := New(secrets...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSignCheck(t *testing.T) {
	s := mustNew(t, secretA)
	tok, claims, err := s.Sign("u-42", "ada@example.com", now.Add(12*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(tok, "+/= ") {
		t.Errorf("token %q is not URL-safe", tok)
	}
	got, err := s.Check(tok, now)
	if err != nil {
		t.Fatal(err)
	}
	if got != claims || got.UID != "u-42" || got.Email != "ada@example.com" || !got.Expires.Equal(now.Add(12*time.Hour)) || len(got.Nonce) != 32 {
		t.Errorf("claims %+v, signed %+v", got, claims)
	}
	// Each token has its own nonce.
	tok2, c2, _ := s.Sign("u-42", "ada@example.com", now.Add(12*time.Hour))
	if tok2 == tok || c2.Nonce == claims.Nonce {
		t.Error("two tokens share a nonce")
	}
	// Expiry: valid until the second before, expired from then on, with
	// the claims.
	if _, err := s.Check(tok, now.Add(12*time.Hour-time.Second)); err != nil {
		t.Errorf("a second before expiry: %v", err)
	}
	c, err := s.Check(tok, now.Add(12*time.Hour))
	if !errors.Is(err, ErrExpired) || c.UID != "u-42" {
		t.Errorf("at expiry: %+v %v", c, err)
	}
}

func TestRotation(t *testing.T) {
	old := mustNew(t, secretA)
	tok, _, _ := old.Sign("u-1", "a@example.com", now.Add(time.Hour))
	rotated := mustNew(t, secretB, secretA)
	if _, err := rotated.Check(tok, now); err != nil {
		t.Errorf("old token under rotated secrets: %v", err)
	}
	newTok, _, _ := rotated.Sign("u-1", "a@example.com", now.Add(time.Hour))
	if _, err := old.Check(newTok, now); !errors.Is(err, ErrInvalid) {
		t.Errorf("new token under the old secret alone: %v", err)
	}
	if rotated.KeyID() == old.KeyID() || rotated.KeyID() != mustNew(t, secretB).KeyID() {
		t.Error("key ids do not follow the signing secret")
	}
	if _, err := New(); err == nil {
		t.Error("New() without secrets succeeded")
	}
	if _, err := New(secretA, secretA); err == nil {
		t.Error("a secret given twice was accepted")
	}
	if _, err := New(""); err == nil {
		t.Error("an empty secret was accepted")
	}
}

func TestCheckRejectsForgeries(t *testing.T) {
	s := mustNew(t, secretA)
	tok, _, _ := s.Sign("u-42", "ada@example.com", now.Add(time.Hour))
	payload, mac, _ := strings.Cut(tok, ".")
	p, _ := base64.RawURLEncoding.DecodeString(payload)
	flip := func(i int) string {
		q := append([]byte(nil), p...)
		q[i] ^= 1
		return base64.RawURLEncoding.EncodeToString(q) + "." + mac
	}
	other := mustNew(t, secretB)
	foreign, _, _ := other.Sign("u-42", "ada@example.com", now.Add(time.Hour))
	for name, bad := range map[string]string{
		"empty":             "",
		"no dot":            payload,
		"two dots":          tok + ".x",
		"bad base64":        "!!!." + mac,
		"short mac":         payload + "." + mac[:10],
		"flipped version":   flip(0),
		"flipped expiry":    flip(8),
		"flipped email":     flip(len(p) - 1),
		"other secret":      foreign,
		"mac of other":      payload + "." + strings.SplitN(foreign, ".", 2)[1],
		"truncated":         tok[:len(tok)-1],
		"huge":              strings.Repeat("A", 10000) + "." + mac,
		"payload too short": base64.RawURLEncoding.EncodeToString(p[:10]) + "." + mac,
	} {
		if c, err := s.Check(bad, now); !errors.Is(err, ErrInvalid) || c != (Claims{}) {
			t.Errorf("%s: %+v %v, want ErrInvalid and no claims", name, c, err)
		}
	}
	if _, _, err := s.Sign("", "a@example.com", now); err == nil {
		t.Error("signed an empty uid")
	}
}

func FuzzCheck(f *testing.F) {
	s := mustNew(f, secretA)
	tok, _, _ := s.Sign("u-42", "ada@example.com", now.Add(time.Hour))
	f.Add(tok)
	f.Add("")
	f.Add("a.b")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := s.Check(in, now)
		switch {
		case err == nil || errors.Is(err, ErrExpired):
			// Only a token we signed gets here: re-signing its claims
			// must give the same uid and email.
			if c.UID == "" || c.Email == "" || len(c.Nonce) != 32 {
				t.Fatalf("claims %+v from %q", c, in)
			}
		case errors.Is(err, ErrInvalid):
			if c != (Claims{}) {
				t.Fatalf("invalid token with claims %+v", c)
			}
		default:
			t.Fatalf("unexpected error %v", err)
		}
	})
}
