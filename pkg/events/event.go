package events

import (
	"encoding/json"
	"errors"
	"io"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// CloudEvents attributes fixed by the contract.
const (
	SpecVersion = "1.0"
	UsageType   = "allot.usage.v1"
	ContentType = "application/json"
)

// Event is one usage event: "user <Subject> used <Data.Value> of
// <Data.Metric>". On the wire it is a CloudEvents 1.0 event in JSON
// structured mode.
//
// ID is the idempotency key: the same id applied twice counts once.
type Event struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Subject         string    `json:"subject"` // the uid; equal to the subject token
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype,omitempty"`
	Data            Usage     `json:"data"`
}

// Usage is the data of a usage event.
type Usage struct {
	Metric string            `json:"metric"`
	Value  float64           `json:"value"`
	Labels map[string]string `json:"labels,omitempty"`
}

// NewUsage returns an event for uid using value of metric. The publisher
// fills in the id, source and time when they are left empty.
func NewUsage(uid, metric string, value float64) Event {
	return Event{
		SpecVersion: SpecVersion,
		Type:        UsageType,
		Subject:     uid,
		Data:        Usage{Metric: metric, Value: value},
	}
}

// Validate checks every rule of the contract that can be checked without
// the service's configuration. It returns the first broken rule as a
// [ValidationError].
func (e *Event) Validate() error {
	if e.SpecVersion != SpecVersion {
		return invalid("specversion", "must be %q (got %s)", SpecVersion, quoteShort(e.SpecVersion))
	}
	if err := ValidateID("id", e.ID); err != nil {
		return err
	}
	if e.Source == "" {
		return invalid("source", "is required")
	}
	if err := validText("source", e.Source, MaxSourceLen); err != nil {
		return err
	}
	if e.Type != UsageType {
		return invalid("type", "must be %q (got %s)", UsageType, quoteShort(e.Type))
	}
	if err := ValidateUID("subject", e.Subject); err != nil {
		return err
	}
	if e.Time.IsZero() {
		return invalid("time", "is required")
	}
	if e.DataContentType != "" && e.DataContentType != ContentType {
		return invalid("datacontenttype", "must be %q when present (got %s)", ContentType, quoteShort(e.DataContentType))
	}
	if err := ValidateToken("data.metric", e.Data.Metric); err != nil {
		return err
	}
	if err := CheckNumber("data.value", e.Data.Value, ValueRange); err != nil {
		return err
	}
	if len(e.Data.Labels) > MaxLabels {
		return invalid("data.labels", "must have at most %d labels (got %d)", MaxLabels, len(e.Data.Labels))
	}
	for k, v := range e.Data.Labels {
		if !IsToken(k) {
			return invalid("data.labels", "label name %s must be 1 to %d characters of A-Z a-z 0-9 _ -", quoteShort(k), MaxTokenLen)
		}
		if rule := textRule(v, MaxLabelValueLen); rule != "" {
			return invalid("data.labels."+k, "%s", rule)
		}
	}
	return nil
}

// validateDraft validates a draft as the publisher will once it has
// filled in what is missing.
func (e *Event) validateDraft() error {
	filled := *e
	if filled.SpecVersion == "" {
		filled.SpecVersion = SpecVersion
	}
	if filled.Type == "" {
		filled.Type = UsageType
	}
	if filled.ID == "" {
		filled.ID = "draft"
	}
	if filled.Source == "" {
		filled.Source = "draft"
	}
	if filled.Time.IsZero() {
		filled.Time = time.Unix(0, 0)
	}
	return filled.Validate()
}

// CheckSubject checks that the event's subject equals uid, the token of
// the NATS subject it arrived on.
func (e *Event) CheckSubject(uid string) error {
	if e.Subject != uid {
		return invalid("subject", "must equal the subject token %s (got %s)", quoteShort(uid), quoteShort(e.Subject))
	}
	return nil
}

// MarshalJSON encodes the event in CloudEvents JSON structured mode.
func (e Event) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(make([]byte, 0, 256)), nil
}

// AppendJSON appends the event's JSON encoding to b. Label names are
// written in sorted order, so equal events encode to equal bytes.
func (e Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"specversion":`...)
	b = appendString(b, e.SpecVersion)
	b = append(b, `,"id":`...)
	b = appendString(b, e.ID)
	b = append(b, `,"source":`...)
	b = appendString(b, e.Source)
	b = append(b, `,"type":`...)
	b = appendString(b, e.Type)
	b = append(b, `,"subject":`...)
	b = appendString(b, e.Subject)
	b = append(b, `,"time":"`...)
	b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if e.DataContentType != "" {
		b = append(b, `,"datacontenttype":`...)
		b = appendString(b, e.DataContentType)
	}
	b = append(b, `,"data":{"metric":`...)
	b = appendString(b, e.Data.Metric)
	b = append(b, `,"value":`...)
	b = appendFloat(b, e.Data.Value)
	if len(e.Data.Labels) > 0 {
		b = append(b, `,"labels":{`...)
		for i, k := range sortedKeys(e.Data.Labels) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, e.Data.Labels[k])
		}
		b = append(b, '}')
	}
	return append(b, "}}"...)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// appendFloat writes v as encoding/json does. NaN and infinities, which
// JSON cannot carry, are written as 0; Validate refuses them first.
func appendFloat(b []byte, v float64) []byte {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return append(b, '0')
	}
	abs := math.Abs(v)
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		b = strconv.AppendFloat(b, v, 'e', -1, 64)
		// Shorten e-09 to e-9, as encoding/json does.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
		return b
	}
	return strconv.AppendFloat(b, v, 'f', -1, 64)
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// as with encoding/json.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= ' ' && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// jsonError turns an encoding/json error into a ValidationError naming
// the field under prefix; whole names the document for syntax errors.
// A number that the field's Go type cannot hold (1e400, or 1.5 for an
// integer) is refused with the field's Range from ranges, when it names
// one; a float64 field's default is ValueRange.
func jsonError(prefix, whole string, err error, ranges func(field string) (Range, bool)) error {
	if errors.Is(err, ErrInvalid) { // from a request's own UnmarshalJSON
		return err
	}
	join := func(field string) string {
		switch {
		case prefix == "":
			return field
		case field == "":
			return prefix
		}
		return prefix + "." + field
	}
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := join(typeErr.Field)
		if field == "" {
			field = whole
		}
		if literal, ok := strings.CutPrefix(typeErr.Value, "number "); ok {
			r, known := Range{}, false
			if ranges != nil {
				r, known = ranges(field)
			}
			switch kind := typeErr.Type.Kind(); {
			case known:
				return literalError(field, literal, r)
			case kind == reflect.Float64 || kind == reflect.Float32:
				return literalError(field, literal, ValueRange)
			case kind >= reflect.Int && kind <= reflect.Uint64:
				return invalid(field, "must be a whole number from %d to %d (got %s)", minOf(kind), maxOf(kind), quoteNumber(literal))
			}
		}
		return invalid(field, "must be %s (got %s)", jsonKind(typeErr.Type.Kind().String()), typeErr.Value)
	case errors.As(err, &syntaxErr):
		return invalid(whole, "is not valid JSON: %s at byte %d", syntaxErr.Error(), syntaxErr.Offset)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return invalid(join(name), "is not a known field")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalid(whole, "is not valid JSON: unexpected end of input")
	}
	return invalid(whole, "is not valid JSON: %v", err)
}

// minOf and maxOf are the range of an integer kind, for the rare
// integer field that names no Range of its own.
func minOf(k reflect.Kind) int64 {
	switch k {
	case reflect.Int8:
		return math.MinInt8
	case reflect.Int16:
		return math.MinInt16
	case reflect.Int32:
		return math.MinInt32
	case reflect.Int, reflect.Int64:
		return math.MinInt64
	}
	return 0
}

func maxOf(k reflect.Kind) uint64 {
	switch k {
	case reflect.Int8:
		return math.MaxInt8
	case reflect.Int16:
		return math.MaxInt16
	case reflect.Int32:
		return math.MaxInt32
	case reflect.Int, reflect.Int64:
		return math.MaxInt64
	case reflect.Uint8:
		return math.MaxUint8
	case reflect.Uint16:
		return math.MaxUint16
	case reflect.Uint32:
		return math.MaxUint32
	}
	return math.MaxUint64
}

func jsonKind(kind string) string {
	switch kind {
	case "float64", "int", "int64":
		return "a number"
	case "string":
		return "a string"
	case "map", "struct":
		return "an object"
	case "slice":
		return "an array"
	case "bool":
		return "a boolean"
	case "ptr":
		return "a value"
	}
	return "a " + kind
}
