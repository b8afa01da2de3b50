package crypt

import (
	"bytes"
	"errors"
	"testing"
)

func TestSealOpen(t *testing.T) {
	old, err := New("old-secret-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := New("new-secret-0123456789", "old-secret-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := New("someone-elses-secret")
	if err != nil {
		t.Fatal(err)
	}
	pt, aad := []byte(`{"name":"media"}`), []byte("media:pod-1")
	byOld := old.Seal(pt, aad)
	byNew := rotated.Seal(pt, aad)
	if !bytes.Equal(byOld, old.Seal(pt, aad)) {
		t.Error("sealing is not deterministic: heartbeats would look like changes")
	}
	if bytes.Equal(byOld, byNew) {
		t.Error("two keys sealed alike")
	}
	if bytes.Equal(old.Seal([]byte(`{"name":"medib"}`), aad)[5:17], byOld[5:17]) {
		t.Error("two plaintexts share a nonce")
	}
	flipped := bytes.Clone(byOld)
	flipped[len(flipped)-1] ^= 1
	for _, tc := range []struct {
		name   string
		s      *Sealer
		sealed []byte
		aad    []byte
		err    error
	}{
		{"same key", old, byOld, aad, nil},
		{"rotation: old entry, old key second", rotated, byOld, aad, nil},
		{"rotation: new entry", rotated, byNew, aad, nil},
		{"new entry, old cluster", old, byNew, aad, ErrUnknownKey},
		{"foreign key", foreign, byOld, aad, ErrUnknownKey},
		{"moved to another instance", old, byOld, []byte("media:pod-2"), ErrCorrupt},
		{"tampered", old, flipped, aad, ErrCorrupt},
		{"not sealed", old, []byte("plain json, from apicrud?"), aad, ErrCorrupt},
		{"empty", old, nil, aad, ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.s.Open(tc.sealed, tc.aad)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if err == nil && !bytes.Equal(got, pt) {
				t.Errorf("opened %q", got)
			}
		})
	}
	if _, err := New(); err == nil {
		t.Error("New with no key succeeded")
	}
	if _, err := New("a", ""); err == nil {
		t.Error("New with an empty key succeeded")
	}
	if old.KeyID() == rotated.KeyID() || rotated.KeyID() == "" {
		t.Errorf("key ids %s %s", old.KeyID(), rotated.KeyID())
	}
}
