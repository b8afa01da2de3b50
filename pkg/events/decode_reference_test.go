package events

import (
	"bytes"
	"encoding/json"
	"time"
)

// refDuplicates finds, in a valid body, the first name given twice in
// the event, in its data object or in data's labels object (the objects
// Decode reads), in document order.
func refDuplicates(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, _ := dec.Token(); tok != json.Delim('{') {
		return nil
	}
	var first error
	// members reads an object's members after its '{'; into says, per
	// name, how to read the value (nil: skip it).
	var members func(prefix string, into func(name string) string) error
	skip := func() {
		var v json.RawMessage
		_ = dec.Decode(&v)
	}
	members = func(prefix string, into func(name string) string) error {
		seen := map[string]bool{}
		for dec.More() {
			tok, _ := dec.Token()
			name := tok.(string)
			if seen[name] && first == nil {
				first = invalid(prefix+name, "given twice")
			}
			seen[name] = true
			next := into(name)
			if next == "" {
				skip()
				continue
			}
			var raw json.RawMessage
			_ = dec.Decode(&raw)
			if bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
				sub := json.NewDecoder(bytes.NewReader(raw))
				saved := dec
				dec = sub
				_, _ = dec.Token()
				_ = members(next, func(n string) string {
					if next == "data." && n == "labels" {
						return "data.labels."
					}
					return ""
				})
				dec = saved
			}
		}
		_, _ = dec.Token()
		return nil
	}
	_ = members("", func(name string) string {
		if name == "data" {
			return "data."
		}
		return ""
	})
	return first
}

// refWireEvent is the reference decoding shape: pointers and raw fields
// tell a missing field from a zero one.
type refWireEvent struct {
	SpecVersion     *string         `json:"specversion"`
	ID              *string         `json:"id"`
	Source          *string         `json:"source"`
	Type            *string         `json:"type"`
	Subject         *string         `json:"subject"`
	Time            *string         `json:"time"`
	DataContentType *string         `json:"datacontenttype"`
	Data            json.RawMessage `json:"data"`
}

type refWireUsage struct {
	Metric *string           `json:"metric"`
	Value  *float64          `json:"value"`
	Labels map[string]string `json:"labels"`
}

// referenceDecode is Decode as it was written on encoding/json, before
// decode.go replaced it for speed. FuzzDecodeMatchesReference holds the
// two together. It matches names case-insensitively, as encoding/json
// does; Decode matches them exactly.
func referenceDecode(body []byte, maxBytes int, draft bool) (Event, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxEventBytes
	}
	if len(body) > maxBytes {
		return Event{}, invalid("event", "must be at most %d bytes (got %d)", maxBytes, len(body))
	}
	if json.Valid(body) {
		if bytes.Equal(bytes.TrimSpace(body), []byte("null")) {
			return Event{}, invalid("event", "must be an object (got null)")
		}
		if err := refDuplicates(body); err != nil {
			return Event{}, err
		}
	}
	var w refWireEvent
	if err := json.Unmarshal(body, &w); err != nil {
		return Event{}, jsonError("", "event", err, nil)
	}
	var e Event
	for _, f := range []struct {
		name string
		src  *string
		dst  *string
	}{
		{"specversion", w.SpecVersion, &e.SpecVersion},
		{"id", w.ID, &e.ID},
		{"source", w.Source, &e.Source},
		{"type", w.Type, &e.Type},
		{"subject", w.Subject, &e.Subject},
	} {
		switch {
		case f.src != nil:
			*f.dst = *f.src
		case !draft || f.name == "subject":
			return Event{}, invalid(f.name, "is required")
		}
	}
	if w.DataContentType != nil {
		e.DataContentType = *w.DataContentType
	}
	switch {
	case w.Time != nil:
		t, err := time.Parse(time.RFC3339Nano, *w.Time)
		if err != nil {
			return Event{}, invalid("time", "must be an RFC 3339 timestamp (got %s)", quoteShort(*w.Time))
		}
		e.Time = t
	case !draft:
		return Event{}, invalid("time", "is required")
	}
	if len(w.Data) == 0 || bytes.Equal(w.Data, []byte("null")) {
		return Event{}, invalid("data", "is required")
	}
	var u refWireUsage
	dec := json.NewDecoder(bytes.NewReader(w.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&u); err != nil {
		return Event{}, jsonError("data", "data", err, nil)
	}
	if u.Metric == nil {
		return Event{}, invalid("data.metric", "is required")
	}
	if u.Value == nil {
		return Event{}, invalid("data.value", "is required")
	}
	if len(u.Labels) == 0 {
		u.Labels = nil // {} and no labels are the same event
	}
	e.Data = Usage{Metric: *u.Metric, Value: positiveZero(*u.Value), Labels: u.Labels}
	if draft {
		return e, e.validateDraft()
	}
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	return e, nil
}
