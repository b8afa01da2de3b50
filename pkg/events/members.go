package events

import (
	"bytes"
	"encoding/json"
	"io"
)

// checkMembers refuses a request body that is null, and any member name
// given twice in one object (at any depth), naming it: encoding/json
// would take null as {} and the last of two values silently. A body that
// is not valid JSON passes, for the decoder to report with its offset.
func checkMembers(body []byte, whole string) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil
	}
	if tok == nil {
		return invalid(whole, "must be a JSON object (got null)")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil
	}
	dup, _ := objectMembers(dec, "")
	return dup
}

// objectMembers reads the members of an object whose '{' was read, and
// returns the first name given twice (path-qualified) or a syntax error.
func objectMembers(dec *json.Decoder, path string) (dup, err error) {
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, _ := tok.(string)
		field := name
		if path != "" {
			field = path + "." + name
		}
		if seen[name] {
			return invalid(field, "given twice"), nil
		}
		seen[name] = true
		if dup, err := value(dec, field); dup != nil || err != nil {
			return dup, err
		}
	}
	_, err = dec.Token() // '}'
	return nil, err
}

// value reads one value, looking into objects and arrays for names given
// twice.
func value(dec *json.Decoder, path string) (dup, err error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	d, ok := tok.(json.Delim)
	switch {
	case !ok:
		return nil, nil
	case d == '{':
		return objectMembers(dec, path)
	case d == '[':
		for dec.More() {
			if dup, err := value(dec, path); dup != nil || err != nil {
				return dup, err
			}
		}
		_, err = dec.Token()
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return nil, nil
}
