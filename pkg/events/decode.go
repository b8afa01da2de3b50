package events

import (
	"cmp"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// Decode parses and validates one event. Bodies over maxBytes (0 means
// [DefaultMaxEventBytes]) are refused before parsing. Every error is a
// [ValidationError] naming the field. Unknown top-level attributes are
// CloudEvents extensions and are ignored; unknown fields inside data are
// refused, since they are almost always a misspelling. Names match
// exactly, as CloudEvents requires: "ID" is an extension attribute, not
// the id, and "Value" inside data is an unknown field. When a name
// appears twice the last value counts, as with encoding/json.
func Decode(body []byte, maxBytes int) (Event, error) {
	return decode(body, maxBytes, false)
}

// DecodeDraft parses an event that may leave out id, source, time,
// specversion and type, as written by hand or in a JSON Lines file; the
// publisher fills those in (see Prepare). Everything present is checked
// as by Decode, except the rules on the fields left out.
func DecodeDraft(body []byte, maxBytes int) (Event, error) {
	return decode(body, maxBytes, true)
}

// decode is the meter's hot path, so it does not use encoding/json: a
// scanner made for this one shape reads the body in a single pass and
// allocates only the strings and labels it returns. It accepts exactly
// what encoding/json would (decode_reference_test.go keeps the old
// encoding/json decoder, and a fuzz target holds the two together), with
// the same error for every field.
func decode(body []byte, maxBytes int, draft bool) (Event, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxEventBytes
	}
	if len(body) > maxBytes {
		return Event{}, invalid("event", "must be at most %d bytes (got %d)", maxBytes, len(body))
	}
	d := decoder{b: body}
	if err := d.document(); err != nil {
		return Event{}, err
	}
	w := &d.w
	var e Event
	// A draft may leave out everything but the subject.
	if err := cmp.Or(
		w.specVersion.attribute(&e.SpecVersion, "specversion", SpecVersion, !draft),
		w.id.attribute(&e.ID, "id", "", !draft),
		w.source.attribute(&e.Source, "source", "", !draft),
		w.typ.attribute(&e.Type, "type", UsageType, !draft),
		w.subject.attribute(&e.Subject, "subject", "", true),
		w.dataContentType.attribute(&e.DataContentType, "datacontenttype", ContentType, false),
	); err != nil {
		return Event{}, err
	}
	switch {
	case w.time.set:
		t, ok := parseTimeUTC(w.time)
		if !ok {
			s := w.time.text("")
			var err error
			if t, err = time.Parse(time.RFC3339Nano, s); err != nil {
				return Event{}, invalid("time", "must be an RFC 3339 timestamp (got %s)", quoteShort(s))
			}
		}
		e.Time = t
	case !draft:
		return Event{}, invalid("time", "is required")
	}
	if !w.data {
		return Event{}, invalid("data", "is required")
	}
	if w.dataErr != nil {
		return Event{}, w.dataErr
	}
	if !w.metric.set {
		return Event{}, invalid("data.metric", "is required")
	}
	if !w.hasValue {
		return Event{}, invalid("data.value", "is required")
	}
	if len(w.labels) == 0 {
		w.labels = nil // {} and no labels are the same event
	}
	e.Data = Usage{Metric: w.metric.text(""), Value: w.value, Labels: w.labels}
	if draft {
		return e, e.validateDraft()
	}
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	return e, nil
}

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

// wireEvent is what the scanner found. Like the pointers of a struct
// given to encoding/json, a member that appears twice is overwritten,
// and null leaves it unset.
type wireEvent struct {
	specVersion, id, source, typ, subject, time, dataContentType jsonString

	err error // the first wrong type outside data

	// The last data member: encoding/json would decode only that one.
	data     bool // present and not null
	dataErr  error
	metric   jsonString
	value    float64
	hasValue bool
	labels   map[string]string
}

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

// document reads the whole body. It returns a syntax error if the body
// is not one JSON value, else the first member of the wrong type outside
// data. As encoding/json does, it reads to the end before reporting a
// wrong type, since a syntax error further on counts first.
func (d *decoder) document() error {
	d.space()
	if d.i < len(d.b) && d.b[d.i] == '{' {
		if err := d.event(); err != nil {
			return err
		}
		if err := d.end(); err != nil {
			return err
		}
		return d.w.err
	}
	kind, err := d.kind()
	if err != nil {
		return err
	}
	if err := d.skip(); err != nil {
		return err
	}
	if err := d.end(); err != nil {
		return err
	}
	if kind == "null" {
		return nil // encoding/json leaves everything unset
	}
	return invalid("event", "must be an object (got %s)", kind)
}

// end checks that only white space follows the document.
func (d *decoder) end() error {
	d.space()
	if d.i < len(d.b) {
		return d.syntax("after top-level value")
	}
	return nil
}

func (d *decoder) event() error {
	w := &d.w
	more, err := d.open()
	for more && err == nil {
		var key jsonString
		if key, err = d.key(); err != nil {
			return err
		}
		var buf [32]byte
		switch string(key.name(buf[:])) {
		case "specversion":
			err = d.stringField(&w.specVersion, &w.err, "specversion")
		case "id":
			err = d.stringField(&w.id, &w.err, "id")
		case "source":
			err = d.stringField(&w.source, &w.err, "source")
		case "type":
			err = d.stringField(&w.typ, &w.err, "type")
		case "subject":
			err = d.stringField(&w.subject, &w.err, "subject")
		case "time":
			err = d.stringField(&w.time, &w.err, "time")
		case "datacontenttype":
			err = d.stringField(&w.dataContentType, &w.err, "datacontenttype")
		case "data":
			err = d.data()
		default:
			err = d.skip() // an extension attribute
		}
		if err != nil {
			return err
		}
		more, err = d.next()
	}
	return err
}

// data reads the data member, forgetting any earlier one.
func (d *decoder) data() error {
	w := &d.w
	w.data, w.dataErr, w.metric, w.value, w.hasValue, w.labels = true, nil, jsonString{}, 0, false, nil
	if d.i < len(d.b) {
		switch d.b[d.i] {
		case '{':
			return d.usage()
		case 'n':
			w.data = false
			return d.literal("null")
		}
	}
	return d.wrongType(&w.dataErr, "data", "an object")
}

func (d *decoder) usage() error {
	w := &d.w
	more, err := d.open()
	for more && err == nil {
		var key jsonString
		if key, err = d.key(); err != nil {
			return err
		}
		var buf [32]byte
		switch string(key.name(buf[:])) {
		case "metric":
			err = d.stringField(&w.metric, &w.dataErr, "data.metric")
		case "value":
			err = d.value()
		case "labels":
			err = d.labels()
		default:
			if w.dataErr == nil {
				w.dataErr = invalid(unknownField(key.text("")), "is not a known field")
			}
			err = d.skip()
		}
		if err != nil {
			return err
		}
		more, err = d.next()
	}
	return err
}

// unknownField names an unknown member of data as the encoding/json
// decoder did: quoted, then stripped of its outer quote marks.
func unknownField(name string) string {
	if name = strings.Trim(strconv.Quote(name), `"`); name == "" {
		return "data"
	}
	return "data." + name
}

func (d *decoder) value() error {
	w := &d.w
	if d.i < len(d.b) {
		switch c := d.b[d.i]; {
		case c == '-' || '0' <= c && c <= '9':
			start := d.i
			if err := d.number(); err != nil {
				return err
			}
			v, err := strconv.ParseFloat(string(d.b[start:d.i]), 64)
			if err != nil { // beyond float64: 1e400
				if w.dataErr == nil {
					w.dataErr = literalError("data.value", string(d.b[start:d.i]), ValueRange)
				}
				return nil
			}
			w.value, w.hasValue = positiveZero(v), true
			return nil
		case c == 'n':
			w.hasValue = false
			return d.literal("null")
		}
	}
	return d.wrongType(&w.dataErr, "data.value", "a number")
}

func (d *decoder) labels() error {
	w := &d.w
	switch {
	case d.i < len(d.b) && d.b[d.i] == 'n':
		w.labels = nil
		return d.literal("null")
	case d.i >= len(d.b) || d.b[d.i] != '{':
		return d.wrongType(&w.dataErr, "data.labels", "an object")
	}
	more, err := d.open()
	if err != nil {
		return err
	}
	if w.labels == nil {
		w.labels = make(map[string]string)
	}
	for more {
		key, err := d.key()
		if err != nil {
			return err
		}
		var value jsonString
		if err := d.stringField(&value, &w.dataErr, "data.labels"); err != nil {
			return err
		}
		k, v := labelText(key, value) // null is ""
		w.labels[k] = v
		if more, err = d.next(); err != nil {
			return err
		}
	}
	return nil
}

// stringField reads a string into dst. A null unsets dst; any other type
// is recorded in *errp (unless an error is there already) and skipped.
func (d *decoder) stringField(dst *jsonString, errp *error, field string) error {
	if d.i < len(d.b) {
		switch d.b[d.i] {
		case '"':
			s, err := d.string()
			*dst = s
			return err
		case 'n':
			*dst = jsonString{}
			return d.literal("null")
		}
	}
	return d.wrongType(errp, field, "a string")
}

// wrongType records in *errp that field must be want and skips the value.
func (d *decoder) wrongType(errp *error, field, want string) error {
	kind, err := d.kind()
	if err != nil {
		return err
	}
	if *errp == nil {
		*errp = invalid(field, "must be %s (got %s)", want, kind)
	}
	return d.skip()
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
		d.space()
		if d.i >= len(d.b) {
			return d.syntax("")
		}
		switch d.b[d.i] {
		case ',':
			d.i++
			d.space()
		case ']':
			d.i++
			d.depth--
			return nil
		default:
			return d.syntax("after array element")
		}
	}
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

// parseTimeUTC parses s as time.Parse(time.RFC3339Nano, s) would, without
// allocating, when s has the usual form 2006-01-02T15:04:05[.999999999]Z.
// For any other form ok is false and the caller asks time.Parse.
func parseTimeUTC(s jsonString) (t time.Time, ok bool) {
	b := s.raw
	n := len(b)
	if s.esc || n < len("2006-01-02T15:04:05Z") || n > len("2006-01-02T15:04:05.999999999Z") || b[n-1] != 'Z' ||
		b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' {
		return time.Time{}, false
	}
	num := func(b []byte) int {
		x := 0
		for _, c := range b {
			if !isDigit(c) {
				return -1
			}
			x = x*10 + int(c-'0')
		}
		return x
	}
	year, month, day := num(b[0:4]), num(b[5:7]), num(b[8:10])
	hour, minute, sec := num(b[11:13]), num(b[14:16]), num(b[17:19])
	if year < 0 || month < 1 || month > 12 || day < 1 || day > daysIn(month, year) ||
		hour < 0 || hour > 23 || minute < 0 || minute > 59 || sec < 0 || sec > 59 {
		return time.Time{}, false
	}
	nsec := 0
	if frac := b[19 : n-1]; len(frac) > 0 {
		if len(frac) < 2 || frac[0] != '.' {
			return time.Time{}, false
		}
		if nsec = num(frac[1:]); nsec < 0 {
			return time.Time{}, false
		}
		for k := len(frac); k < 10; k++ {
			nsec *= 10
		}
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC), true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}
