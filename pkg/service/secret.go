package service

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
)

// redacted is what a Secret prints instead of its value.
const redacted = "[redacted]"

// Secret is a string that never prints: String, GoString, every fmt verb,
// JSON, YAML, text and slog output show "[redacted]" (or nothing when the
// secret is empty). Reveal gives the value to the one place that needs it.
//
// Printing a config to YAML therefore loses its secrets on purpose: the
// output is for people, not for loading back.
type Secret string

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return string(s) }

// String returns "[redacted]", or "" when the secret is empty.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString returns the quoted redacted form, for %#v.
func (s Secret) GoString() string { return fmt.Sprintf("%q", s.String()) }

// Format prints the redacted form for every verb and flag.
func (s Secret) Format(f fmt.State, verb rune) { formatMasked(f, verb, s.String()) }

// MarshalText returns the redacted form.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// MarshalJSON returns the redacted form as a JSON string.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalYAML returns the redacted form.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// LogValue returns the redacted form, for log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// URL is a connection URL, or a comma-separated list of them as NATS takes,
// that may carry credentials. It prints like a Secret, except that only the
// credentials are masked (url.URL.Redacted): "redis://:xxxxx@host:6379/0".
// A user name with no password is masked too, since NATS reads it as a token.
// Reveal gives the URL to the client that connects with it.
type URL string

// Reveal returns the URL with its credentials.
func (u URL) Reveal() string { return string(u) }

// String returns the URL with its credentials masked.
func (u URL) String() string { return redactURLs(string(u)) }

// GoString returns the quoted masked form, for %#v.
func (u URL) GoString() string { return fmt.Sprintf("%q", u.String()) }

// Format prints the masked form for every verb and flag.
func (u URL) Format(f fmt.State, verb rune) { formatMasked(f, verb, u.String()) }

// MarshalText returns the masked form.
func (u URL) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// MarshalJSON returns the masked form as a JSON string.
func (u URL) MarshalJSON() ([]byte, error) { return json.Marshal(u.String()) }

// MarshalYAML returns the masked form.
func (u URL) MarshalYAML() (any, error) { return u.String(), nil }

// LogValue returns the masked form, for log/slog.
func (u URL) LogValue() slog.Value { return slog.StringValue(u.String()) }

// formatMasked prints an already masked string with the caller's verb and
// flags, so %q quotes it and %#v shows a Go string literal.
func formatMasked(f fmt.State, verb rune, masked string) {
	fmt.Fprintf(f, fmt.FormatString(f, verb), masked)
}

// splitList splits a comma-separated list, trimming spaces and dropping
// blanks.
func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// redactURLs masks the credentials of every URL in a comma-separated list.
func redactURLs(s string) string {
	parts := splitList(s)
	for i, p := range parts {
		parts[i] = redactURL(p)
	}
	return strings.Join(parts, ",")
}

// redactURL masks the credentials of one URL. A URL that does not parse is
// masked from the scheme to its last '@', so a typo never leaks a password.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		at := strings.LastIndex(s, "@")
		if at < 0 {
			return s
		}
		if i := strings.Index(s, "://"); i >= 0 && i < at {
			return s[:i+3] + "xxxxx" + s[at:]
		}
		return "xxxxx" + s[at:]
	}
	if u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		return u.Redacted()
	}
	u.User = url.User("xxxxx")
	return u.String()
}

// urlError returns a url.Parse error without the URL it quotes, which may
// hold a password.
func urlError(err error) string {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err.Error()
	}
	return err.Error()
}
