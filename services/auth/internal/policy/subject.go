package policy

import (
	"fmt"
	"strings"
)

// A subject pattern is a NATS subject whose tokens may be "*" (any one
// token) or, last, ">" (one or more tokens). The algebra below is what
// compiling a role needs: matching, intersecting and containing patterns,
// with nats-server's meaning.

// checkPattern reports why p is not a valid pattern.
func checkPattern(p string) error {
	if p == "" {
		return fmt.Errorf("subject: empty")
	}
	if strings.ContainsAny(p, " \t\r\n") {
		return fmt.Errorf("subject %q: contains whitespace", p)
	}
	toks := strings.Split(p, ".")
	for i, t := range toks {
		switch {
		case t == "":
			return fmt.Errorf("subject %q: empty token", p)
		case t == ">" && i != len(toks)-1:
			return fmt.Errorf("subject %q: > must be the last token", p)
		case t != "*" && t != ">" && strings.ContainsAny(t, "*>"):
			return fmt.Errorf("subject %q: a wildcard must be a whole token", p)
		}
	}
	return nil
}

// matches reports whether the literal subject s matches pattern p.
func matches(p, s string) bool {
	pt, st := strings.Split(p, "."), strings.Split(s, ".")
	for i, t := range pt {
		if t == ">" {
			return len(st) > i
		}
		if i >= len(st) || (t != "*" && t != st[i]) {
			return false
		}
	}
	return len(pt) == len(st)
}

// intersect returns the pattern matching exactly the subjects both a and
// b match, or false when they share none. Token by token, a literal
// meets a literal or "*", "*" meets anything, and ">" takes whatever the
// other has left (at least one token).
func intersect(a, b string) (string, bool) {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	var out []string
	for i := 0; ; i++ {
		switch {
		case i == len(at) && i == len(bt):
			return strings.Join(out, "."), true
		case i < len(at) && at[i] == ">":
			if i == len(bt) {
				return "", false
			}
			return strings.Join(append(out, bt[i:]...), "."), true
		case i < len(bt) && bt[i] == ">":
			if i == len(at) {
				return "", false
			}
			return strings.Join(append(out, at[i:]...), "."), true
		case i == len(at) || i == len(bt):
			return "", false
		case at[i] == "*":
			out = append(out, bt[i])
		case bt[i] == "*" || at[i] == bt[i]:
			out = append(out, at[i])
		default:
			return "", false
		}
	}
}

// contains reports whether every subject b matches is matched by a.
func contains(a, b string) bool {
	got, ok := intersect(a, b)
	return ok && got == b
}
