package events

import (
	"cmp"
	"strconv"
	"strings"
	"time"
)

// Decode parses and validates one event. Bodies over maxBytes (0 means
// [DefaultMaxEventBytes]) are refused before parsing. Every error is a
// [ValidationError] naming the field. Unknown top-level attributes are
// CloudEvents extensions and are ignored; unknown fields inside data are
// refused, since they are almost always a misspelling. Names match
// exactly, as CloudEvents requires: "ID" is an extension attribute, not
// the id, and "Value" inside data is an unknown field. A name given
// twice in the event, in data or in labels is refused ("<name>: given
// twice"), and so is a null body: which value was meant is not a guess
// to make.
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

// wireEvent is what the scanner found. Like the pointers of a struct
// given to encoding/json, a member that appears twice is overwritten,
// and null leaves it unset.
type wireEvent struct {
	specVersion, id, source, typ, subject, time, dataContentType jsonString

	err error // the first wrong type outside data
	dup error // the first name given twice; it counts before err

	// The names seen: known ones by bit, others (extension attributes,
	// unknown data fields) by name.
	seenTop, seenData uint16
	extTop, extData   []string

	// The last data member: encoding/json would decode only that one.
	data     bool // present and not null
	dataErr  error
	metric   jsonString
	value    float64
	hasValue bool
	labels   map[string]string
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
		if d.w.dup != nil {
			return d.w.dup
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
		return invalid("event", "must be an object (got null)")
	}
	return invalid("event", "must be an object (got %s)", kind)
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
		name := key.name(buf[:])
		w.once(true, name)
		switch string(name) {
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

// The members the decoder knows, by their bit in seenTop and seenData.
var (
	topNames  = []string{"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"}
	dataNames = []string{"metric", "value", "labels"}
)

// once records that name was seen in the event (top) or in its data,
// and records in w.dup the first name seen twice.
func (w *wireEvent) once(top bool, name []byte) {
	seen, ext, known, prefix := &w.seenData, &w.extData, dataNames, "data."
	if top {
		seen, ext, known, prefix = &w.seenTop, &w.extTop, topNames, ""
	}
	for i, k := range known {
		if string(name) == k {
			if *seen&(1<<i) != 0 && w.dup == nil {
				w.dup = invalid(prefix+k, "given twice")
			}
			*seen |= 1 << i
			return
		}
	}
	for _, e := range *ext {
		if e == string(name) {
			if w.dup == nil {
				w.dup = invalid(prefix+e, "given twice")
			}
			return
		}
	}
	*ext = append(*ext, string(name))
}

// data reads the data member, forgetting any earlier one.
func (d *decoder) data() error {
	w := &d.w
	w.data, w.dataErr, w.metric, w.value, w.hasValue, w.labels = true, nil, jsonString{}, 0, false, nil
	w.seenData, w.extData = 0, w.extData[:0]
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
		name := key.name(buf[:])
		w.once(false, name)
		switch string(name) {
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
		if _, twice := w.labels[k]; twice && w.dup == nil {
			w.dup = invalid("data.labels."+k, "given twice")
		}
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
