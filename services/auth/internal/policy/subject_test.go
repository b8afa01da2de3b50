package policy

import (
	"math/rand/v2"
	"strings"
	"testing"
)

func TestCheckPattern(t *testing.T) {
	for p, ok := range map[string]bool{
		"usage.u-1": true, "usage.*": true, "usage.>": true, ">": true, "*": true, "a.*.c.>": true, "$SRV.PING": true,
		"": false, "usage.": false, ".usage": false, "a..b": false, "a.>.b": false, "a.b*": false, "a.>x": false,
		"a b": false, "a.\tb": false, "a.b\n": false,
	} {
		if err := checkPattern(p); (err == nil) != ok {
			t.Errorf("checkPattern(%q) = %v, want ok %v", p, err, ok)
		}
	}
}

func TestIntersect(t *testing.T) {
	for _, tc := range []struct {
		a, b, want string
		ok         bool
	}{
		{"a.b", "a.b", "a.b", true},
		{"a.b", "a.c", "", false},
		{"a.*", "*.b", "a.b", true},
		{"a.>", "*.b.>", "a.b.>", true},
		{"a.>", "a", "", false},
		{">", "a.b.c", "a.b.c", true},
		{"a.*", "a.b.c", "", false},
		{"a.>", "a.*", "a.*", true},
		{"*.*", "a.>", "a.*", true},
		{">", ">", ">", true},
		{"a.*.>", "a.>", "a.*.>", true},
	} {
		got, ok := intersect(tc.a, tc.b)
		if got != tc.want || ok != tc.ok {
			t.Errorf("intersect(%q, %q) = %q, %v; want %q, %v", tc.a, tc.b, got, ok, tc.want, tc.ok)
		}
		if got2, ok2 := intersect(tc.b, tc.a); got2 != got || ok2 != ok {
			t.Errorf("intersect(%q, %q) = %q, %v; not the same both ways", tc.b, tc.a, got2, ok2)
		}
	}
}

// The intersection matches exactly what both match, and contains agrees
// with matching, on random patterns and subjects.
func TestSubjectAlgebraOnRandomPatterns(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for range 20000 {
		a, b, s := randPattern(rng), randPattern(rng), randLiteral(rng)
		x, ok := intersect(a, b)
		both := matches(a, s) && matches(b, s)
		if ok && matches(x, s) != both || !ok && both {
			t.Fatalf("intersect(%q, %q) = %q, %v; subject %q matches a %v, b %v", a, b, x, ok, s, matches(a, s), matches(b, s))
		}
		if contains(a, b) && matches(b, s) && !matches(a, s) {
			t.Fatalf("contains(%q, %q) but %q matches only the second", a, b, s)
		}
	}
}

var tokens = []string{"a", "b", "c", "*"}

func randPattern(rng *rand.Rand) string {
	n := 1 + rng.IntN(4)
	toks := make([]string, n)
	for i := range toks {
		toks[i] = tokens[rng.IntN(len(tokens))]
	}
	if rng.IntN(3) == 0 {
		toks[n-1] = ">"
	}
	return strings.Join(toks, ".")
}

func randLiteral(rng *rand.Rand) string {
	n := 1 + rng.IntN(5)
	toks := make([]string, n)
	for i := range toks {
		toks[i] = tokens[rng.IntN(3)]
	}
	return strings.Join(toks, ".")
}
