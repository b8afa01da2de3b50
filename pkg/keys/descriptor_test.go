package keys

import (
	"slices"
	"strings"
	"testing"
)

func TestDescriptorID(t *testing.T) {
	k := New("allot:")
	id := DescriptorID("edge", "remote_address", "10.0.0.1", "path", "/a,b=c{d}:%")
	if want := "edge,remote_address=10.0.0.1,path=%2Fa%2Cb%3Dc%7Bd%7D%3A%25"; id != want {
		t.Fatalf("id = %q, want %q", id, want)
	}
	even, odd := k.RateLimitDescriptor(id)
	if want := "allot:{d." + id + "}:rld:0"; even != want {
		t.Errorf("even = %q, want %q", even, want)
	}
	if !strings.HasSuffix(odd, "}:rld:1") {
		t.Errorf("odd = %q", odd)
	}
	if tag, ok := k.TagOf(k.RateLimitDescriptorOverrides(id)); !ok || tag != DescriptorTag(id) {
		t.Errorf("overrides tag = %q, %v", tag, ok)
	}
	// Separators inside values are escaped, so these differ.
	a := DescriptorID("d", "k", "v,k2=v2")
	b := DescriptorID("d", "k", "v", "k2", "v2")
	if a == b {
		t.Fatalf("collision: %q", a)
	}
	if DescriptorID("d", "k") != DescriptorID("d", "k", "") {
		t.Error("an odd count should read the last key with an empty value")
	}
}

func TestParseDescriptorIDRefuses(t *testing.T) {
	for _, bad := range []string{"a,b", "a%2", "a%zz", "a%41", "a%2f", "a b", "d,k=v=w", "d,%"} {
		if _, _, ok := ParseDescriptorID(bad); ok {
			t.Errorf("ParseDescriptorID(%q) ok", bad)
		}
	}
}

// FuzzDescriptorID checks that the id of a descriptor names it alone (it
// parses back to the same domain and entries, so two descriptors never
// share an id) and holds nothing that would break its hash tag.
func FuzzDescriptorID(f *testing.F) {
	f.Add("allot", "uid", "u-1", "", "")
	f.Add("d", "k", "v,k2=v2", "k2", "v2")
	f.Add("%", "{", "}", ":", "=")
	f.Fuzz(func(t *testing.T, domain, k1, v1, k2, v2 string) {
		id := DescriptorID(domain, k1, v1, k2, v2)
		if strings.ContainsAny(id, "{}: ") {
			t.Fatalf("id %q holds a tag or key separator", id)
		}
		d, entries, ok := ParseDescriptorID(id)
		if !ok || d != domain || !slices.Equal(entries, []string{k1, v1, k2, v2}) {
			t.Fatalf("ParseDescriptorID(%q) = %q %q %v", id, d, entries, ok)
		}
		// One entry fewer is another descriptor.
		if DescriptorID(domain, k1, v1) == id {
			t.Fatalf("%q names two descriptors", id)
		}
	})
}
