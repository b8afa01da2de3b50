package events

import (
	"strconv"
	"unicode/utf8"
)

// maxDepth is how deeply encoding/json lets arrays and objects nest.
const maxDepth = 10000

// decoder scans one JSON document in b; i is the next byte to read and
// depth the number of arrays and objects open around it.
type decoder struct {
	b     []byte
	i     int
	depth int
	w     wireEvent
}

// end checks that only white space follows the document.
func (d *decoder) end() error {
	d.space()
	if d.i < len(d.b) {
		return d.syntax("after top-level value")
	}
	return nil
}

// kind names the type of the value at d.i as encoding/json does.
func (d *decoder) kind() (string, error) {
	if d.i >= len(d.b) {
		return "", d.syntax("")
	}
	switch c := d.b[d.i]; {
	case c == '"':
		return "string", nil
	case c == '{':
		return "object", nil
	case c == '[':
		return "array", nil
	case c == 't' || c == 'f':
		return "bool", nil
	case c == 'n':
		return "null", nil
	case c == '-' || '0' <= c && c <= '9':
		return "number", nil
	}
	return "", d.syntax("looking for beginning of value")
}

// skip reads over one value of any type.
func (d *decoder) skip() error {
	if d.i >= len(d.b) {
		return d.syntax("")
	}
	switch c := d.b[d.i]; {
	case c == '"':
		_, err := d.string()
		return err
	case c == '{':
		more, err := d.open()
		for more && err == nil {
			if _, err = d.key(); err != nil {
				return err
			}
			if err = d.skip(); err != nil {
				return err
			}
			more, err = d.next()
		}
		return err
	case c == '[':
		return d.array()
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		return d.number()
	}
	return d.syntax("looking for beginning of value")
}

func (d *decoder) array() error {
	if err := d.push(); err != nil {
		return err
	}
	d.i++ // [
	d.space()
	if d.i < len(d.b) && d.b[d.i] == ']' {
		d.i++
		d.depth--
		return nil
	}
	for {
		if err := d.skip(); err != nil {
			return err
		}
		if more, err := d.nextElement(); err != nil || !more {
			return err
		}
	}
}

// nextElement reads what follows an array element: more is true after a
// comma, false after the closing ].
func (d *decoder) nextElement() (more bool, err error) {
	d.space()
	if d.i >= len(d.b) {
		return false, d.syntax("")
	}
	switch d.b[d.i] {
	case ',':
		d.i++
		d.space()
		return true, nil
	case ']':
		d.i++
		d.depth--
		return false, nil
	}
	return false, d.syntax("after array element")
}

func (d *decoder) push() error {
	d.depth++
	if d.depth > maxDepth {
		return d.syntax("exceeded max depth")
	}
	return nil
}

// open reads the { of an object at d.i; more is false if it is empty.
func (d *decoder) open() (more bool, err error) {
	if err := d.push(); err != nil {
		return false, err
	}
	d.i++
	d.space()
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
		d.depth--
		return false, nil
	}
	return true, nil
}

// key reads a member's name and the colon after it, leaving d.i at the
// value.
func (d *decoder) key() (jsonString, error) {
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return jsonString{}, d.syntax("looking for beginning of object key string")
	}
	key, err := d.string()
	if err != nil {
		return key, err
	}
	d.space()
	if d.i >= len(d.b) || d.b[d.i] != ':' {
		return key, d.syntax("after object key")
	}
	d.i++
	d.space()
	return key, nil
}

// next reads what follows a member's value: more is true after a comma,
// false after the closing }.
func (d *decoder) next() (more bool, err error) {
	d.space()
	if d.i < len(d.b) {
		switch d.b[d.i] {
		case ',':
			d.i++
			d.space()
			return true, nil
		case '}':
			d.i++
			d.depth--
			return false, nil
		}
	}
	return false, d.syntax("after object key:value pair")
}

func (d *decoder) space() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// string reads a string at d.i, checking its escapes.
func (d *decoder) string() (jsonString, error) {
	b := d.b
	start := d.i + 1
	esc := false
	for i := start; i < len(b); {
		c := b[i]
		if ' ' <= c && c < utf8.RuneSelf && c != '"' && c != '\\' {
			i++
			continue
		}
		switch {
		case c == '"':
			d.i = i + 1
			return jsonString{raw: b[start:i], set: true, esc: esc}, nil
		case c == '\\':
			esc = true
			d.i = i + 1
			if d.i >= len(b) {
				return jsonString{}, d.syntax("")
			}
			switch b[d.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for k := 0; k < 4; k++ {
					d.i++
					if d.i >= len(b) {
						return jsonString{}, d.syntax("")
					}
					if unhex(b[d.i]) < 0 {
						return jsonString{}, d.syntax(`in \u hexadecimal character escape`)
					}
				}
				i += 6
			default:
				return jsonString{}, d.syntax("in string escape code")
			}
		case c < ' ':
			d.i = i
			return jsonString{}, d.syntax("in string literal")
		default: // over 0x7f
			esc = true
			i++
		}
	}
	d.i = len(b)
	return jsonString{}, d.syntax("")
}

// number reads a number at d.i as the JSON grammar has it:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *decoder) number() error {
	b := d.b
	if b[d.i] == '-' {
		d.i++
	}
	switch {
	case d.i >= len(b):
		return d.syntax("")
	case b[d.i] == '0':
		d.i++
	case '1' <= b[d.i] && b[d.i] <= '9':
		d.digits()
	default:
		return d.syntax("in numeric literal")
	}
	if d.i < len(b) && b[d.i] == '.' {
		d.i++
		if d.i >= len(b) || !isDigit(b[d.i]) {
			return d.syntax("after decimal point in numeric literal")
		}
		d.digits()
	}
	if d.i < len(b) && (b[d.i] == 'e' || b[d.i] == 'E') {
		d.i++
		if d.i < len(b) && (b[d.i] == '+' || b[d.i] == '-') {
			d.i++
		}
		if d.i >= len(b) || !isDigit(b[d.i]) {
			return d.syntax("in exponent of numeric literal")
		}
		d.digits()
	}
	return nil
}

func (d *decoder) digits() {
	for d.i < len(d.b) && isDigit(d.b[d.i]) {
		d.i++
	}
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// literal reads the literal word (true, false or null) at d.i.
func (d *decoder) literal(word string) error {
	for k := 0; k < len(word); k++ {
		if d.i >= len(d.b) {
			return d.syntax("")
		}
		if d.b[d.i] != word[k] {
			return d.syntax("in literal " + word + " (expecting " + quoteChar(word[k]) + ")")
		}
		d.i++
	}
	return nil
}

// syntax reports a syntax error at d.i: the byte there is not allowed
// in context, or the body ended. Like encoding/json, the offset is the
// number of bytes read, counting the offending one.
func (d *decoder) syntax(context string) error {
	if d.i >= len(d.b) {
		return invalid("event", "is not valid JSON: unexpected end of JSON input at byte %d", len(d.b))
	}
	msg := "invalid character " + quoteChar(d.b[d.i])
	if context != "" {
		msg += " " + context
	}
	return invalid("event", "is not valid JSON: %s at byte %d", msg, d.i+1)
}

// quoteChar formats c as encoding/json's syntax errors do.
func quoteChar(c byte) string {
	switch c {
	case '\'':
		return `'\''`
	case '"':
		return `'"'`
	}
	s := strconv.Quote(string(c))
	return "'" + s[1:len(s)-1] + "'"
}
