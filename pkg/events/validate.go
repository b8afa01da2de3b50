package events

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// Limits of the wire contract.
const (
	// DefaultMaxEventBytes is the largest encoded event accepted by default.
	DefaultMaxEventBytes = 64 << 10
	// MaxTokenLen is the longest <uid> or <name> token.
	MaxTokenLen = 128
	// MaxIDLen is the longest event or request id.
	MaxIDLen = 128
	// MaxSourceLen is the longest event source.
	MaxSourceLen = 256
	// MaxLabels is the most labels one event may carry.
	MaxLabels = 16
	// MaxLabelValueLen is the longest label value, in bytes.
	MaxLabelValueLen = 256
)

// ErrInvalid is matched by every [ValidationError]:
// errors.Is(err, ErrInvalid) tells bad input from a failure that a retry
// could fix.
var ErrInvalid = errors.New("events: invalid")

// ValidationError says which field broke which rule, for example
// "data.value: must be a number from -1e15 to 1e15 (got 1e+308)".
type ValidationError struct {
	Field string // dotted path, e.g. "data.labels.region"; "event" for the whole body
	Rule  string // what the field must be, e.g. "must be a number from 0 to 1e15 (got -1)"
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Rule }

// Is makes every ValidationError match [ErrInvalid].
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Rule: fmt.Sprintf(format, args...)}
}

// IsToken reports whether s is a valid <uid> or <name> token:
// 1 to 128 characters from A-Z, a-z, 0-9, '_' and '-'.
func IsToken(s string) bool {
	if len(s) == 0 || len(s) > MaxTokenLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenByte(s[i]) {
			return false
		}
	}
	return true
}

func isTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// ValidateToken returns a [ValidationError] naming field when s is not a
// valid token.
func ValidateToken(field, s string) error {
	if s == "" {
		return invalid(field, "is required")
	}
	if !IsToken(s) {
		return invalid(field, "must be 1 to %d characters of A-Z a-z 0-9 _ - (got %s)", MaxTokenLen, quoteShort(s))
	}
	return nil
}

// ReservedUID is never a uid, whatever the subject prefixes: with the
// default ones usage.dead starts the dead letters, and an event published
// on usage.dead would otherwise be stored in USAGE and counted for a uid
// "dead". [Subjects.ValidateUID] also refuses the token a configured dead
// prefix puts after the usage prefix.
const ReservedUID = "dead"

// ValidateUID checks a uid with the default subject prefixes: a token,
// and not [ReservedUID]. Code that knows the configured prefixes calls
// [Subjects.ValidateUID].
func ValidateUID(field, uid string) error {
	return DefaultSubjects().ValidateUID(field, uid)
}

// ValidateID checks an event or request id: 1 to 128 printable ASCII
// characters without spaces, so it is safe as a Nats-Msg-Id header and
// inside a Redis key.
func ValidateID(field, id string) error {
	if id == "" {
		return invalid(field, "is required")
	}
	if len(id) > MaxIDLen {
		return invalid(field, "must be at most %d bytes (got %d)", MaxIDLen, len(id))
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return invalid(field, "must be printable ASCII without spaces (got %s)", quoteShort(id))
		}
	}
	return nil
}

// validText checks free text: valid UTF-8 without control characters.
func validText(field, s string, max int) error {
	if rule := textRule(s, max); rule != "" {
		return invalid(field, "%s", rule)
	}
	return nil
}

// textRule returns the rule s breaks as free text, or "" when none; it
// allocates only on failure, so callers can build the field name lazily.
func textRule(s string, max int) string {
	if len(s) > max {
		return fmt.Sprintf("must be at most %d bytes (got %d)", max, len(s))
	}
	if !utf8.ValidString(s) {
		return "must be valid UTF-8"
	}
	for _, r := range s {
		if r < ' ' || r == 0x7f {
			return "must not contain control characters"
		}
	}
	return ""
}

// quoteShort quotes s for an error message, cut to a readable length.
func quoteShort(s string) string {
	const max = 40
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}
