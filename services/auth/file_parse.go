package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

func readKeysFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keys file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeysFile+1))
	if err != nil {
		return nil, fmt.Errorf("keys file: %w", err)
	}
	if len(data) > maxKeysFile {
		return nil, fmt.Errorf("%s: larger than %d MiB", path, maxKeysFile>>20)
	}
	return data, nil
}

// keysFileError is what is wrong with a keys file, where.
type keysFileError struct {
	File    string
	Line    int
	Entry   int    // index in keys, -1 for the file as a whole
	ID      string // the entry's id, if it has a readable one
	Field   string // the field's path in the entry ("uids[1]"), or ""
	Problem string
}

func (e *keysFileError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Entry >= 0 {
		fmt.Fprintf(&b, "keys[%d]", e.Entry)
		if e.ID != "" {
			fmt.Fprintf(&b, " (id %q)", clip(e.ID))
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Problem)
	return b.String()
}

// parseKeysFile reads a keys file's contents strictly and returns its
// keys sorted by id; name is the file's name for errors.
func parseKeysFile(name string, data []byte) ([]Record, error) {
	fileErr := func(line int, format string, args ...any) error {
		return &keysFileError{File: name, Line: line, Entry: -1, Problem: fmt.Sprintf(format, args...)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fileErr(0, "empty (write keys: [] for a file without keys)")
		}
		return nil, fileErr(0, "not YAML: %v", err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, fileErr(0, "not YAML: %v", err)
		}
		return nil, fileErr(more.Line, "a second YAML document (a keys file is one)")
	}
	if len(doc.Content) == 0 {
		return nil, fileErr(0, "empty (write keys: [] for a file without keys)")
	}
	root := doc.Content[0]
	if a := firstAlias(root); a != nil {
		return nil, fileErr(a.Line, "anchors and aliases are not allowed in a keys file")
	}
	if root.Kind != yaml.MappingNode {
		return nil, fileErr(root.Line, "want a mapping with keys: [...], got %s", kindName(root))
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Value != "keys" {
			return nil, fileErr(k.Line, "unknown field %q (a keys file has only keys)", clip(k.Value))
		}
		if list != nil {
			return nil, fileErr(k.Line, "keys: given twice")
		}
		list = v
	}
	if list == nil {
		return nil, fileErr(root.Line, "keys: missing")
	}
	if isNull(list) {
		return nil, nil
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fileErr(list.Line, "keys: want a list of keys, got %s", kindName(list))
	}
	recs := make([]Record, 0, len(list.Content))
	first := map[string]int{} // id -> entry index
	for i, n := range list.Content {
		r, err := parseKeyEntry(name, i, n)
		if err != nil {
			return nil, err
		}
		if j, dup := first[r.ID]; dup {
			return nil, &keysFileError{File: name, Line: n.Line, Entry: i, ID: r.ID, Field: "id",
				Problem: fmt.Sprintf("the same id as keys[%d] (line %d)", j, list.Content[j].Line)}
		}
		first[r.ID] = i
		recs = append(recs, r)
	}
	sortRecords(recs)
	return recs, nil
}

// firstAlias returns the first node that is an alias or has an anchor.
func firstAlias(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		return n
	}
	for _, c := range n.Content {
		if bad := firstAlias(c); bad != nil {
			return bad
		}
	}
	return nil
}

// parseKeyEntry reads entry i of keys, node n, and checks it.
func parseKeyEntry(name string, i int, n *yaml.Node) (Record, error) {
	var r Record
	lines := map[string]int{}
	bad := func(field string, line int, format string, args ...any) error {
		return &keysFileError{File: name, Line: line, Entry: i, ID: r.ID, Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	if n.Kind != yaml.MappingNode {
		return r, bad("", n.Line, "want a mapping (id, hash, role, ...), got %s", kindName(n))
	}
	// The id first, so every error names it.
	for j := 0; j+1 < len(n.Content); j += 2 {
		if v := n.Content[j+1]; n.Content[j].Value == "id" && v.Kind == yaml.ScalarNode && !isNull(v) {
			r.ID = v.Value
		}
	}
	seen := map[string]bool{}
	for j := 0; j+1 < len(n.Content); j += 2 {
		k, v := n.Content[j], n.Content[j+1]
		field := k.Value
		if seen[field] {
			return r, bad(field, k.Line, "given twice")
		}
		seen[field] = true
		lines[field] = v.Line
		if isNull(v) {
			continue // as if absent
		}
		var err error
		switch field {
		case "id":
			r.ID, err = scalar(v)
		case "hash":
			r.Hash, err = scalar(v)
		case "role":
			r.Role, err = scalar(v)
		case "note":
			r.Note, err = scalar(v)
		case "uids":
			r.UIDs, err = scalars(v, "uids", lines)
		case "created":
			r.Created, err = timeValue(v)
		case "expires":
			r.Expires, err = timeValue(v)
		case "revoked":
			r.Revoked, err = timeValue(v)
		case "adjustments":
			r.Adjustments, err = parseAdjustments(v, lines)
		default:
			return r, bad("", k.Line, "unknown field %q (a key has id, hash, role, uids, note, created, expires, revoked, adjustments)", clip(field))
		}
		if err != nil {
			if fe, ok := errors.AsType[*fieldError](err); ok {
				return r, bad(fe.Field, lines[fe.Field], "%s", fe.Problem)
			}
			return r, bad(field, v.Line, "%v", err)
		}
	}
	if fe := r.check(); fe != nil {
		line, ok := lines[fe.Field]
		if !ok {
			line = n.Line // a missing field: the entry's line
		}
		return r, bad(fe.Field, line, "%s", fe.Problem)
	}
	if len(r.UIDs) == 0 {
		r.UIDs = nil
	}
	if len(r.Adjustments) == 0 {
		r.Adjustments = nil
	}
	return r, nil
}

// parseAdjustments reads an entry's adjustments, noting each field's
// line in lines under its path.
func parseAdjustments(n *yaml.Node, lines map[string]int) ([]Adjustment, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("want a list, got %s", kindName(n))
	}
	out := make([]Adjustment, 0, len(n.Content))
	for i, an := range n.Content {
		path := fmt.Sprintf("adjustments[%d]", i)
		lines[path] = an.Line
		if an.Kind != yaml.MappingNode {
			return nil, badField(path, "want a mapping (allow or deny, created, expires), got %s", kindName(an))
		}
		var a Adjustment
		seen := map[string]bool{}
		for j := 0; j+1 < len(an.Content); j += 2 {
			k, v := an.Content[j], an.Content[j+1]
			fp := path + "." + k.Value
			lines[fp] = v.Line
			if seen[k.Value] {
				return nil, badField(fp, "given twice")
			}
			seen[k.Value] = true
			if isNull(v) {
				continue
			}
			var err error
			switch k.Value {
			case "allow":
				a.Allow, err = scalar(v)
			case "deny":
				a.Deny, err = scalar(v)
			case "created":
				a.Created, err = timeValue(v)
			case "expires":
				a.Expires, err = timeValue(v)
			default:
				lines[fp] = k.Line
				return nil, badField(fp, "unknown field (an adjustment has allow or deny, created, expires)")
			}
			if err != nil {
				return nil, badField(fp, "%v", err)
			}
		}
		for _, f := range []string{"allow", "deny", "expires"} {
			if _, ok := lines[path+"."+f]; !ok {
				lines[path+"."+f] = an.Line
			}
		}
		out = append(out, a)
	}
	return out, nil
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// scalar is a plain value as written: a string, or a number or boolean
// taken as its text.
func scalar(n *yaml.Node) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("want a value, got %s", kindName(n))
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
		return n.Value, nil
	}
	return "", fmt.Errorf("want a plain value, got one tagged %s", n.ShortTag())
}

// scalars reads a list of plain values, noting each one's line in lines
// under "<path>[i]".
func scalars(n *yaml.Node, path string, lines map[string]int) ([]string, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("want a list, got %s", kindName(n))
	}
	out := make([]string, 0, len(n.Content))
	for i, c := range n.Content {
		fp := fmt.Sprintf("%s[%d]", path, i)
		lines[fp] = c.Line
		s, err := scalar(c)
		if err != nil {
			return nil, badField(fp, "%v", err)
		}
		out = append(out, s)
	}
	return out, nil
}

// timeValue reads a time: RFC 3339, or a date (midnight UTC), in UTC.
func timeValue(n *yaml.Node) (time.Time, error) {
	s, err := scalar(n)
	if err != nil {
		return time.Time{}, err
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time (RFC 3339, like 2025-01-02T15:04:05Z, or a date, like 2025-01-02)", clip(s))
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("the value %q", clip(n.Value))
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}
