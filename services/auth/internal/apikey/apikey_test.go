package apikey

import (
	"errors"
	"strings"
	"testing"
)

func TestNewParseRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		k, err := New()
		if err != nil {
			t.Fatal(err)
		}
		s := k.String()
		if len(s) != 41 {
			t.Fatalf("key %d characters, want 41 (apicrud's shape)", len(s))
		}
		got, err := Parse(s)
		if err != nil || got != k {
			t.Fatalf("Parse(New()) = %+v, %v", got, err)
		}
		if seen[k.ID] {
			t.Fatalf("key id %s made twice in 1000", k.ID)
		}
		seen[k.ID] = true
		if !k.Matches(k.Hash()) || CheckID(k.ID) != nil {
			t.Fatal("a new key does not match its own hash or id")
		}
	}
}

func TestParseRefuses(t *testing.T) {
	good, _ := New()
	s := good.String()
	for name, in := range map[string]string{
		"empty":            "",
		"short":            s[:40],
		"long":             s + "x",
		"no dot":           strings.Replace(s, ".", "x", 1),
		"dot moved":        s[:7] + "." + s[7:8] + s[9:],
		"bad id character": "ab+d1234" + s[8:],
		"bad secret char":  s[:20] + "/" + s[21:],
		"space":            s[:40] + " ",
		"two dots":         s[:20] + "." + s[21:],
		"multibyte":        s[:39] + "é",
	} {
		_, err := Parse(in)
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Parse = %v, want ErrMalformed", name, err)
			continue
		}
		if len(in) > 8 && strings.Contains(err.Error(), in[9:]) {
			t.Errorf("%s: the error repeats the secret: %v", name, err)
		}
	}
	for _, id := range []string{"", "abc", "abcdefghi", "abcd efg", "abcd.efg"} {
		if CheckID(id) == nil {
			t.Errorf("CheckID(%q) accepted", id)
		}
	}
}

func TestHashBindsTheID(t *testing.T) {
	a, _ := New()
	b := Key{ID: "zzzzzzzz", Secret: a.Secret}
	if b.Matches(a.Hash()) {
		t.Error("the same secret under another id matches")
	}
	c := Key{ID: a.ID, Secret: a.Secret[:31] + "A"}
	if c.Secret != a.Secret && c.Matches(a.Hash()) {
		t.Error("another secret matches")
	}
	if a.Matches("") || a.Matches(strings.Repeat("0", 64)) {
		t.Error("matches a hash that is not its own")
	}
}

// FuzzParse: whatever comes in, Parse returns a key that prints back as
// the input, or ErrMalformed; never a panic.
func FuzzParse(f *testing.F) {
	k, _ := New()
	f.Add(k.String())
	f.Add("")
	f.Add("abcdefgh.")
	f.Add(strings.Repeat(".", 41))
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse(%q) = %v, not ErrMalformed", s, err)
			}
			return
		}
		if got.String() != s || CheckID(got.ID) != nil {
			t.Fatalf("Parse(%q) = %+v", s, got)
		}
	})
}
