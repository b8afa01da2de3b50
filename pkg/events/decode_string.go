package events

import (
	"unicode/utf16"
	"unicode/utf8"
)

// jsonString is a JSON string in the body, not yet decoded.
type jsonString struct {
	raw []byte // between the quotes
	set bool   // false when the member is absent or null
	esc bool   // raw has escapes or bytes over 0x7f: decode before use
}

// attribute sets *dst to the string, if present, or else says that name
// is required.
func (s jsonString) attribute(dst *string, name, usual string, required bool) error {
	switch {
	case s.set:
		*dst = s.text(usual)
	case required:
		return invalid(name, "is required")
	}
	return nil
}

// text returns the decoded string: usual itself when equal to it, so
// that the expected constants cost no allocation.
func (s jsonString) text(usual string) string {
	if s.esc {
		var buf [64]byte
		return string(appendUnquoted(buf[:0], s.raw))
	}
	if string(s.raw) == usual {
		return usual
	}
	return string(s.raw)
}

// labelText returns a label's decoded name and value, made in one
// allocation since they live and die together in the labels map.
func labelText(name, value jsonString) (string, string) {
	var buf [128]byte
	b := name.appendText(buf[:0])
	n := len(b)
	both := string(value.appendText(b))
	return both[:n], both[n:]
}

func (s jsonString) appendText(b []byte) []byte {
	if !s.esc {
		return append(b, s.raw...)
	}
	return appendUnquoted(b, s.raw)
}

// name returns the decoded bytes of s, in buf when s has escapes.
func (s jsonString) name(buf []byte) []byte {
	if !s.esc {
		return s.raw
	}
	return appendUnquoted(buf[:0], s.raw)
}

func unhex(c byte) rune {
	switch {
	case '0' <= c && c <= '9':
		return rune(c - '0')
	case 'a' <= c && c <= 'f':
		return rune(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}

// hex4 decodes the 4 hex digits that follow \u at s[0:2], or returns -1
// if s does not start with such an escape.
func hex4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		h := unhex(c)
		if h < 0 {
			return -1
		}
		r = r<<4 | h
	}
	return r
}

// appendUnquoted appends the string whose JSON form (between the quotes,
// already checked by decoder.string) is s, decoding as encoding/json
// does: invalid UTF-8 and unpaired surrogates become U+FFFD.
func appendUnquoted(b, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\':
			switch e := s[i+1]; e {
			case 'u':
				r := hex4(s[i:])
				i += 6
				if utf16.IsSurrogate(r) {
					if pair := utf16.DecodeRune(r, hex4(s[i:])); pair != utf8.RuneError {
						r = pair
						i += 6
					} else {
						r = utf8.RuneError
					}
				}
				b = utf8.AppendRune(b, r)
				continue
			case 'b':
				c = '\b'
			case 'f':
				c = '\f'
			case 'n':
				c = '\n'
			case 'r':
				c = '\r'
			case 't':
				c = '\t'
			default: // " \ /
				c = e
			}
			b = append(b, c)
			i += 2
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, size := utf8.DecodeRune(s[i:])
			b = utf8.AppendRune(b, r)
			i += size
		}
	}
	return b
}
