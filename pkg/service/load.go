package service

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// LoadInto overlays dst, a pointer to a struct already holding its
// defaults, with the YAML file at path and then with the environment.
//
// The file is strict: a field dst does not have, a value of the wrong type,
// a second document are errors naming the file, the line and the field's
// path. An empty path reads no file; an empty file changes nothing.
//
// Then every field tagged `env:"NAME"` whose variable getenv returns
// non-empty takes that value. Tagged fields may be strings (and string
// types such as Secret and URL), bools, ints, uints, floats, time.Duration
// (as in "1m30s") and []string (comma-separated). A value that does not
// parse is an error naming the variable.
func LoadInto(dst any, path string, getenv func(string) string) error {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("service: LoadInto needs a non-nil pointer to a struct, got %T", dst)
	}
	if path != "" {
		if err := decodeFile(path, dst); err != nil {
			return err
		}
	}
	return applyEnv(v.Elem(), getenv)
}

// Section stands in Config for a top-level section that another package
// owns and decodes with LoadSection: the whole-file load lets it be there
// without looking inside, and Redacted never prints it (it may hold
// secrets only its owner knows to mask).
type Section struct {
	// Present says the file had the section.
	Present bool `yaml:"-"`
}

// UnmarshalYAML notes the section is there.
func (s *Section) UnmarshalYAML(*yaml.Node) error { s.Present = true; return nil }

// MarshalYAML prints a note in its place.
func (s Section) MarshalYAML() (any, error) {
	return "(decoded by the service that owns it; run its -validate)", nil
}

// IsZero reports whether the file had no such section.
func (s Section) IsZero() bool { return !s.Present }

// LoadSection is LoadInto for the one top-level section of a shared
// configuration file that a service owns (auth, say): dst, a pointer to
// a struct holding the section's defaults, is overlaid with that key of
// the file, strictly (errors name the file, the line and the field's whole
// path, such as auth.roles.app.grnt), and then with the environment. The
// file's other sections are not its business; a file without the section
// changes nothing.
func LoadSection(dst any, path, section string, getenv func(string) string) error {
	if section == "" || strings.ContainsAny(section, "\"`,: ") {
		return fmt.Errorf("service: LoadSection: bad section name %q", section)
	}
	// dst under its key.
	return loadBeside(dst, "LoadSection", reflect.StructTag(`yaml:"`+section+`"`), path, getenv)
}

// LoadSections is LoadSection for a struct whose fields are several
// top-level sections of the shared configuration file (a service that
// reads the metrics and grants beside its own section, say): every field
// dst's YAML sees, inlined ones included, is overlaid with its key of the
// file, strictly, and then with the environment. The file's other keys are
// not its business. A field tagged `yaml:"-"` is left alone by the file
// and by the environment: that is where a service keeps what it did not
// read itself, such as the runtime's Config.
func LoadSections(dst any, path string, getenv func(string) string) error {
	// dst's fields at the top level.
	return loadBeside(dst, "LoadSections", `yaml:",inline"`, path, getenv)
}

// loadBeside decodes the file at path into dst, a pointer to a struct,
// standing in the file as tag says, beside the rest of the file, which it
// leaves alone: what dst sees is decoded strictly where it stands. Then
// the environment.
func loadBeside(dst any, caller string, tag reflect.StructTag, path string, getenv func(string) string) error {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("service: %s needs a non-nil pointer to a struct, got %T", caller, dst)
	}
	if path != "" {
		wt := reflect.StructOf([]reflect.StructField{
			{Name: "Dst", Type: v.Elem().Type(), Tag: tag},
			{Name: "Rest", Type: reflect.TypeFor[map[string]yaml.Node](), Tag: `yaml:",inline"`},
		})
		w := reflect.New(wt)
		w.Elem().Field(0).Set(v.Elem())
		if err := decodeFile(path, w.Interface()); err != nil {
			return err
		}
		v.Elem().Set(w.Elem().Field(0))
	}
	return applyEnv(v.Elem(), getenv)
}

// LoadChecked overlays cfg, a service's configuration holding its
// defaults, with its sections of the file at path and of the environment
// (LoadSections), and checks the result with its Validate.
func LoadChecked[C interface{ Validate() error }](cfg C, path string, getenv func(string) string) (C, error) {
	var zero C
	if err := LoadSections(&cfg, path, getenv); err != nil {
		return zero, err
	}
	if err := cfg.Validate(); err != nil {
		return zero, err
	}
	return cfg, nil
}

// decodeFile decodes the YAML file at path into dst, refusing unknown
// fields.
func decodeFile(path string, dst any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("service: config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(dst); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		if te, ok := errors.AsType[*yaml.TypeError](err); ok {
			return locateErrors(path, data, te)
		}
		return fmt.Errorf("service: config %s: %w", path, err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return fmt.Errorf("service: config %s: %w", path, err)
	default:
		return fmt.Errorf("service: config %s: line %d: a second YAML document; the config is one", path, extra.Line)
	}
}

// The parts of a yaml.TypeError line such as
// "line 3: field bogus not found in type service.NATSConfig".
var (
	yamlLine      = regexp.MustCompile(`^line (\d+): (.*)$`)
	yamlUnknown   = regexp.MustCompile(`^field (\S+) not found in type `)
	yamlUnmarshal = regexp.MustCompile("^cannot unmarshal (\\S+)(?: `(.*)`)? into ")
)

// yamlTruncation ends a value yaml cut short in a message.
const yamlTruncation = "..."

// locateErrors rewrites the messages of a yaml.TypeError, which give a line
// but not the field, to name the field's path too:
// "service: config f.yaml: line 3: nats.bogus: unknown field".
func locateErrors(path string, data []byte, te *yaml.TypeError) error {
	var root yaml.Node
	idx := map[int][]located{}
	if err := yaml.Unmarshal(data, &root); err == nil {
		indexPaths(&root, "", idx)
	}
	errs := make([]error, 0, len(te.Errors))
	for _, msg := range te.Errors {
		m := yamlLine.FindStringSubmatch(msg)
		if m == nil {
			errs = append(errs, fmt.Errorf("service: config %s: %s", path, msg))
			continue
		}
		line, _ := strconv.Atoi(m[1])
		field, rule := fieldAt(idx[line], m[2])
		if field == "" {
			errs = append(errs, fmt.Errorf("service: config %s: line %d: %s", path, line, rule))
			continue
		}
		errs = append(errs, fmt.Errorf("service: config %s: line %d: %s: %s", path, line, field, rule))
	}
	return errors.Join(errs...)
}

// located is a field's path and its value node.
type located struct {
	path  string
	value *yaml.Node
}

// indexPaths records, by line, the path of every key and value under n.
func indexPaths(n *yaml.Node, path string, idx map[int][]located) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			indexPaths(c, path, idx)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			idx[k.Line] = append(idx[k.Line], located{p, v})
			if v.Line != k.Line {
				idx[v.Line] = append(idx[v.Line], located{p, v})
			}
			indexPaths(v, p, idx)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			idx[c.Line] = append(idx[c.Line], located{p, c})
			indexPaths(c, p, idx)
		}
	}
}

// fieldAt picks, among the fields on one line, the one a yaml message is
// about, and rewrites the message as the rule it breaks.
func fieldAt(cands []located, msg string) (field, rule string) {
	if m := yamlUnknown.FindStringSubmatch(msg); m != nil {
		for _, c := range cands {
			if c.path == m[1] || strings.HasSuffix(c.path, "."+m[1]) {
				return c.path, "unknown field"
			}
		}
		return m[1], "unknown field"
	}
	if m := yamlUnmarshal.FindStringSubmatch(msg); m != nil {
		switch tag, value := m[1], m[2]; tag {
		case "!!seq", "!!map":
			// The innermost collection of that kind on the line.
			kind := yaml.SequenceNode
			if tag == "!!map" {
				kind = yaml.MappingNode
			}
			for i := len(cands) - 1; i >= 0; i-- {
				if cands[i].value.Kind == kind {
					return cands[i].path, msg
				}
			}
		default:
			// The scalar is quoted, cut to 7 characters and "..." if long.
			prefix, cut := strings.CutSuffix(value, yamlTruncation)
			for _, c := range cands {
				v := c.value
				if v.Kind == yaml.ScalarNode && (v.Value == value || cut && strings.HasPrefix(v.Value, prefix)) {
					return c.path, msg
				}
			}
		}
	}
	if len(cands) > 0 {
		return cands[0].path, msg
	}
	return "", msg
}

// durationType is the one int64 kind the environment spells differently.
var durationType = reflect.TypeFor[time.Duration]()

// applyEnv sets every env-tagged field of the struct v, and walks into
// untagged struct fields, collecting every error. A field the file cannot
// set (`yaml:"-"`) the environment does not set either.
func applyEnv(v reflect.Value, getenv func(string) string) error {
	var errs []error
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		if sf.Tag.Get("yaml") == "-" {
			continue
		}
		fv := v.Field(i)
		if name := sf.Tag.Get("env"); name != "" {
			if s := getenv(name); s != "" {
				if err := setFromString(fv, s); err != nil {
					errs = append(errs, fmt.Errorf("service: env %s: %w", name, err))
				}
			}
			continue
		}
		switch {
		case fv.Kind() == reflect.Struct:
			errs = append(errs, applyEnv(fv, getenv))
		case fv.Kind() == reflect.Pointer && !fv.IsNil() && fv.Elem().Kind() == reflect.Struct:
			errs = append(errs, applyEnv(fv.Elem(), getenv))
		}
	}
	return errors.Join(errs...)
}

// setFromString parses s into the field v according to its type.
func setFromString(v reflect.Value, s string) error {
	if v.Type() == durationType {
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("cannot parse %q as a duration such as 1m30s", s)
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("cannot parse %q as a bool", s)
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("cannot parse %q as %s", s, v.Type())
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(s, 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("cannot parse %q as %s", s, v.Type())
		}
		v.SetUint(n)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(s, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("cannot parse %q as %s", s, v.Type())
		}
		v.SetFloat(f)
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("unsupported field type %s", v.Type())
		}
		parts := splitList(s)
		out := reflect.MakeSlice(v.Type(), len(parts), len(parts))
		for i, p := range parts {
			out.Index(i).SetString(p)
		}
		v.Set(out)
	default:
		return fmt.Errorf("unsupported field type %s", v.Type())
	}
	return nil
}
