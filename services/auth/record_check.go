package auth

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/services/auth/internal/apikey"
)

// ErrBadRecord marks a key record or adjustment that no backend stores:
// the error names the field and says what is wrong with it.
var ErrBadRecord = errors.New("auth: bad key record")

// maxNote bounds a key's note, in bytes.
const maxNote = 1024

// checkRecord reports the first field of r that is not well formed,
// wrapping ErrBadRecord. Whether the role exists is for the caller, who
// knows the roles.
func checkRecord(r Record) error {
	if err := r.check(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	return nil
}

// fieldError says what is wrong with one field, by its path in a record
// ("hash", "uids[2]", "adjustments[0].expires").
type fieldError struct {
	Field, Problem string
}

func (e *fieldError) Error() string { return e.Field + ": " + e.Problem }

func badField(field, format string, args ...any) *fieldError {
	return &fieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

func (r Record) check() *fieldError {
	if r.ID == "" {
		return badField("id", "missing")
	}
	if apikey.CheckID(r.ID) != nil {
		return badField("id", "%q is not a key id (%d characters of A-Z a-z 0-9 - _)", clip(r.ID), apikey.IDLen)
	}
	if p := checkHash(r.Hash); p != "" {
		return badField("hash", "%s", p)
	}
	if r.Role == "" {
		return badField("role", "missing")
	}
	if len(r.Role) > 128 || strings.ContainsFunc(r.Role, notPrintable) {
		return badField("role", "%q is not a role name (at most 128 characters, no spaces or control characters)", clip(r.Role))
	}
	for i, u := range r.UIDs {
		if u != "*" && !events.IsToken(u) {
			return badField(fmt.Sprintf("uids[%d]", i), "%q is neither a uid (1 to %d characters of A-Z a-z 0-9 _ -) nor *", clip(u), events.MaxTokenLen)
		}
	}
	if len(r.Note) > maxNote || !utf8.ValidString(r.Note) {
		return badField("note", "want at most %d bytes of UTF-8, got %d bytes", maxNote, len(r.Note))
	}
	if !r.Expires.IsZero() && !r.Created.IsZero() && !r.Expires.After(r.Created) {
		return badField("expires", "%s is not after created %s", r.Expires.Format(timeLayout), r.Created.Format(timeLayout))
	}
	for i, a := range r.Adjustments {
		if fe := a.check(); fe != nil {
			return badField(fmt.Sprintf("adjustments[%d].%s", i, fe.Field), "%s", fe.Problem)
		}
	}
	return nil
}

// checkAdjustment reports what is wrong with a, wrapping ErrBadRecord.
func checkAdjustment(a Adjustment) error {
	if err := a.check(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	return nil
}

func (a Adjustment) check() *fieldError {
	switch {
	case a.Allow == "" && a.Deny == "":
		return badField("allow", "missing (an adjustment has allow or deny)")
	case a.Allow != "" && a.Deny != "":
		return badField("deny", "an adjustment has allow or deny, not both")
	}
	field, p := "allow", a.Allow
	if a.Deny != "" {
		field, p = "deny", a.Deny
	}
	if err := checkSubjectPattern(p); err != nil {
		return badField(field, "%v", err)
	}
	if a.Expires.IsZero() {
		return badField("expires", "missing (adjustments expire)")
	}
	if !a.Created.IsZero() && !a.Expires.After(a.Created) {
		return badField("expires", "%s is not after created %s", a.Expires.Format(timeLayout), a.Created.Format(timeLayout))
	}
	return nil
}

// checkHash says why h is not apikey.Key.Hash's shape, 64 lowercase
// hex characters (a hash in another case would never match), or "".
func checkHash(h string) string {
	if h == "" {
		return "missing"
	}
	if len(h) != 64 {
		return fmt.Sprintf("want 64 lowercase hex characters, got %d characters", len(h))
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Sprintf("want 64 lowercase hex characters, got %q at %d", rune(c), i+1)
		}
	}
	return ""
}

// checkSubjectPattern refuses what nats-server would not take as a
// subject pattern: tokens split by dots, none empty, "*" and ">" only as
// whole tokens, ">" only last. (internal/policy holds the same rule for
// roles.)
func checkSubjectPattern(p string) error {
	if p == "" {
		return errors.New("empty subject")
	}
	if strings.ContainsFunc(p, notPrintable) {
		return fmt.Errorf("subject %q has whitespace or a control character", clip(p))
	}
	toks := strings.Split(p, ".")
	for i, t := range toks {
		switch {
		case t == "":
			return fmt.Errorf("subject %q has an empty token", clip(p))
		case t == ">" && i != len(toks)-1:
			return fmt.Errorf("subject %q: > must be the last token", clip(p))
		case t != "*" && t != ">" && strings.ContainsAny(t, "*>"):
			return fmt.Errorf("subject %q: a wildcard must be a whole token", clip(p))
		}
	}
	return nil
}

// notPrintable is true of spaces, control characters and broken UTF-8.
func notPrintable(r rune) bool {
	return r <= ' ' || r == 0x7f || r == utf8.RuneError || unicode.IsSpace(r) || unicode.IsControl(r)
}

// clip shortens a value quoted in an error.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

// timeLayout is how errors and the file backend write times.
const timeLayout = "2006-01-02T15:04:05.999999999Z07:00"
