package events

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
)

// The request and reply bodies of the batched endpoints (check, credit,
// authorize, and the batch messages that carry them) are read on every
// call, on both sides; through encoding/json they took a third of the
// Go process's time in a batched check (a profile of BenchmarkCheck's
// fixed_batched). So each has a quick reader for the form allot's own
// encoders write: flat members, each named exactly once, strings without
// escapes, numbers the field's type holds. Anything else, valid or not,
// makes the quick reader give up, and encoding/json reads the body as it
// always did: the quick path only ever gives the answer encoding/json
// would (quick_test.go holds them together, FuzzQuickReaders too).

// quickReader is a type with a quick reader: it reads b into itself and
// returns true, or returns false, leaving itself as it was, when b is
// not in the form it reads.
type quickReader interface {
	readQuick(b []byte) bool
}

// unmarshalReply reads a reply body into v: quickly when v has a quick
// reader and body is in its form, else with encoding/json.
func unmarshalReply(body []byte, v any) error {
	switch v := v.(type) {
	case quickReader:
		if v.readQuick(body) {
			return nil
		}
	case *json.RawMessage:
		// Kept to be read later, into its own type: that read checks it.
		*v = append((*v)[:0], body...)
		return nil
	}
	return json.Unmarshal(body, v)
}

// quickValue is a member's value as the flat scan found it: a string
// without escapes (its bytes between the quotes), a number (its
// literal), or true or false.
type quickValue struct {
	kind byte // '"', '0', 't' or 'f'
	raw  []byte
}

// scanFlat scans b as one flat JSON object and calls member for each of
// its members in order. It returns false when b is anything else (not
// JSON, not an object, a value that is null, an object, an array or a
// string with escapes or bytes over 0x7f, a name with any of those) or
// when member does.
func scanFlat(b []byte, member func(name []byte, v quickValue) bool) bool {
	d := decoder{b: b}
	d.space()
	if d.i >= len(b) || b[d.i] != '{' {
		return false
	}
	more, err := d.open()
	for more && err == nil {
		var name jsonString
		if name, err = d.key(); err != nil || name.esc {
			return false
		}
		var v quickValue
		if v, err = d.quickValue(); err != nil || !member(name.raw, v) {
			return false
		}
		more, err = d.next()
	}
	return err == nil && d.end() == nil
}

// quickValue reads a string, number, true or false at d.i; anything
// else is an error.
func (d *decoder) quickValue() (quickValue, error) {
	if d.i >= len(d.b) {
		return quickValue{}, d.syntax("")
	}
	start := d.i
	switch c := d.b[d.i]; {
	case c == '"':
		s, err := d.string()
		if err != nil || s.esc {
			return quickValue{}, errNotQuick
		}
		return quickValue{kind: '"', raw: s.raw}, nil
	case c == '-' || isDigit(c):
		if err := d.number(); err != nil {
			return quickValue{}, err
		}
		return quickValue{kind: '0', raw: d.b[start:d.i]}, nil
	case c == 't':
		return quickValue{kind: 't'}, d.literal("true")
	case c == 'f':
		return quickValue{kind: 'f'}, d.literal("false")
	}
	return quickValue{}, errNotQuick
}

// errNotQuick ends a quick read that met what it leaves to encoding/json.
var errNotQuick = invalid("request", "not in the quick form")

// seen tracks the members of a flat object by bit, so that a name given
// twice sends the body to encoding/json (which refuses it in a request
// and keeps the last in a reply: either way, not the quick path's call).
type seen uint16

func (s *seen) once(bit uint) bool {
	if *s&(1<<bit) != 0 {
		return false
	}
	*s |= 1 << bit
	return true
}

// quickString reads a string member.
func quickString(dst *string, v quickValue) bool {
	if v.kind != '"' {
		return false
	}
	*dst = string(v.raw)
	return true
}

// quickInt reads an integer member: digits only (encoding/json refuses
// 2.0 for an int64), within int64.
func quickInt(dst *int64, v quickValue) bool {
	if v.kind != '0' || bytes.ContainsAny(v.raw, ".eE") {
		return false
	}
	n, err := strconv.ParseInt(string(v.raw), 10, 64)
	*dst = n
	return err == nil
}

// quickFloat reads a number member as encoding/json does a float64.
func quickFloat(dst *float64, v quickValue) bool {
	if v.kind != '0' {
		return false
	}
	f, err := strconv.ParseFloat(string(v.raw), 64)
	*dst = f
	return err == nil
}

// quickBool reads true or false.
func quickBool(dst *bool, v quickValue) bool {
	*dst = v.kind == 't'
	return v.kind == 't' || v.kind == 'f'
}

// quickTime reads a time as time.Time's UnmarshalJSON does (it is what
// reads it).
func quickTime(dst *time.Time, v quickValue) bool {
	if v.kind != '"' {
		return false
	}
	var buf [64]byte
	return dst.UnmarshalJSON(append(append(append(buf[:0], '"'), v.raw...), '"')) == nil
}

// readQuick reads a check request of the form {"service":"api","cost":2}
// (either member may be left out). A cost written 2.0 or 1e6, null, or
// out of range is left to encoding/json and UnmarshalJSON.
func (dst *CheckRequest) readQuick(b []byte) bool {
	var s seen
	var r CheckRequest
	ok := scanFlat(b, func(name []byte, v quickValue) bool {
		switch string(name) {
		case "service":
			return s.once(0) && quickString(&r.Service, v)
		case "cost":
			var n int64
			if !s.once(1) || !quickInt(&n, v) || n < 0 || n > MaxCost {
				return false
			}
			r.Cost = &n
			return true
		}
		return false
	})
	if ok {
		*dst = r
	}
	return ok
}

// readQuick reads a credit request: {} or {"metric":"photos"}.
func (dst *CreditRequest) readQuick(b []byte) bool {
	var s seen
	var r CreditRequest
	ok := scanFlat(b, func(name []byte, v quickValue) bool {
		return string(name) == "metric" && s.once(0) && quickString(&r.Metric, v)
	})
	if ok {
		*dst = r
	}
	return ok
}

// readQuick reads an authorize request: {"id":..,"metric":..,"amount":..}.
func (dst *AuthorizeRequest) readQuick(b []byte) bool {
	var s seen
	var r AuthorizeRequest
	ok := scanFlat(b, func(name []byte, v quickValue) bool {
		switch string(name) {
		case "id":
			return s.once(0) && quickString(&r.ID, v)
		case "metric":
			return s.once(1) && quickString(&r.Metric, v)
		case "amount":
			return s.once(2) && quickFloat(&r.Amount, v)
		}
		return false
	})
	if ok {
		*dst = r
	}
	return ok
}

// readQuick reads a check decision.
func (dst *CheckReply) readQuick(b []byte) bool {
	var s seen
	var r CheckReply
	ok := scanFlat(b, func(name []byte, v quickValue) bool {
		switch string(name) {
		case "allowed":
			return s.once(0) && quickBool(&r.Allowed, v)
		case "limit":
			return s.once(1) && quickInt(&r.Limit, v)
		case "remaining":
			return s.once(2) && quickInt(&r.Remaining, v)
		case "reset_after_ms":
			return s.once(3) && quickInt(&r.ResetAfterMs, v)
		case "retry_after_ms":
			return s.once(4) && quickInt(&r.RetryAfterMs, v)
		}
		return false
	})
	if ok {
		*dst = r
	}
	return ok
}

// readQuick reads an authorize decision.
func (dst *AuthorizeReply) readQuick(b []byte) bool {
	var s seen
	var r AuthorizeReply
	ok := scanFlat(b, func(name []byte, v quickValue) bool {
		switch string(name) {
		case "allowed":
			return s.once(0) && quickBool(&r.Allowed, v)
		case "remaining":
			return s.once(1) && quickFloat(&r.Remaining, v)
		case "resets_at":
			return s.once(2) && quickTime(&r.ResetsAt, v)
		}
		return false
	})
	if ok {
		*dst = r
	}
	return ok
}

// readQuick reads one grant's credit.
func (dst *Credit) readQuick(b []byte) bool {
	var s seen
	var r Credit
	ok := scanFlat(b, func(name []byte, v quickValue) bool {
		switch string(name) {
		case "uid":
			return s.once(0) && quickString(&r.UID, v)
		case "metric":
			return s.once(1) && quickString(&r.Metric, v)
		case "limit":
			return s.once(2) && quickFloat(&r.Limit, v)
		case "used":
			return s.once(3) && quickFloat(&r.Used, v)
		case "remaining":
			return s.once(4) && quickFloat(&r.Remaining, v)
		case "overage":
			return s.once(5) && quickFloat(&r.Overage, v)
		case "period":
			return s.once(6) && quickString(&r.Period, v)
		case "resets_at":
			return s.once(7) && quickTime(&r.ResetsAt, v)
		case "counted_since":
			return s.once(8) && quickTime(&r.CountedSince, v)
		}
		return false
	})
	if ok {
		*dst = r
	}
	return ok
}

// readQuick reads a batch reply, {"replies":[{"status":200,"body":..},..]}:
// each body is any JSON value, kept as it is written (in a copy of b, as
// json.RawMessage keeps a copy).
func (dst *BatchReply) readQuick(b []byte) bool {
	var r BatchReply
	var res BatchResult
	var s seen
	ok := quickList(bytes.Clone(b), "replies", func(d *decoder, name []byte) bool {
		switch string(name) {
		case "status":
			var n int64
			v, err := d.quickValue()
			if err != nil || !s.once(0) || !quickInt(&n, v) || n != int64(int(n)) {
				return false
			}
			res.Status = int(n)
			return true
		case "body":
			var ok bool
			res.Body, ok = d.quickRaw()
			return ok && s.once(1)
		}
		return false
	}, func() {
		r.Replies = append(r.Replies, res)
		res, s = BatchResult{}, 0
	})
	if ok {
		*dst = r
	}
	return ok
}

// quickList reads b as {"<list>":[{..},..]}, a list of one or more
// objects, calling member at each member of each object, with d at its
// value (which member reads), and end after each object.
func quickList(b []byte, list string, member func(d *decoder, name []byte) bool, end func()) bool {
	d := &decoder{b: b}
	if !d.quickOpen('{') {
		return false
	}
	if name, err := d.key(); err != nil || string(name.raw) != list {
		return false
	}
	ok := d.quickArray(func() bool {
		if !d.quickOpen('{') {
			return false
		}
		for {
			name, err := d.key()
			if err != nil || !member(d, name.raw) {
				return false
			}
			more, err := d.next()
			switch {
			case err != nil:
				return false
			case !more:
				end()
				return true
			}
		}
	})
	if !ok {
		return false
	}
	more, err := d.next()
	return err == nil && !more && d.end() == nil
}

// quickRaw reads any value but null at d.i and returns it as written.
func (d *decoder) quickRaw() ([]byte, bool) {
	start := d.i
	if d.i >= len(d.b) || d.b[d.i] == 'n' || d.skip() != nil {
		return nil, false
	}
	return d.b[start:d.i], true
}

// quickOpen reads the { or [ that must come next, which must not be
// empty.
func (d *decoder) quickOpen(c byte) bool {
	d.space()
	if d.i >= len(d.b) || d.b[d.i] != c {
		return false
	}
	if c == '[' {
		if d.push() != nil {
			return false
		}
		d.i++
		d.space()
		return d.i < len(d.b) && d.b[d.i] != ']'
	}
	more, err := d.open()
	return err == nil && more
}

// quickArray reads a non-empty array at d.i, calling elem at each
// element.
func (d *decoder) quickArray(elem func() bool) bool {
	if !d.quickOpen('[') {
		return false
	}
	for {
		if !elem() {
			return false
		}
		if more, err := d.nextElement(); err != nil || !more {
			return err == nil
		}
	}
}

// readQuick reads a batch message, {"requests":[{"uid":"u-1","body":..},..]}
// with 1 to MaxBatchRequests requests, each body any JSON value but
// null, kept as it is written (in a copy of b).
func (dst *BatchRequest) readQuick(b []byte) bool {
	var r BatchRequest
	var it BatchItem
	var s seen
	ok := quickList(bytes.Clone(b), "requests", func(d *decoder, name []byte) bool {
		if len(r.Requests) == MaxBatchRequests {
			return false
		}
		switch string(name) {
		case "uid":
			v, err := d.quickValue()
			return err == nil && s.once(0) && quickString(&it.UID, v)
		case "body":
			var ok bool
			it.Body, ok = d.quickRaw()
			return ok && s.once(1)
		}
		return false
	}, func() {
		r.Requests = append(r.Requests, it)
		it, s = BatchItem{}, 0
	})
	if ok {
		*dst = r
	}
	return ok
}
