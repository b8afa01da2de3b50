// Package templates renders the notifier's emails from named templates:
// defaults built in, which a directory of the operator's may replace or
// add to.
//
// A template NAME is a text file NAME.txt, in text/template syntax, that
// defines a one-line template "subject" beside its body:
//
//	{{define "subject"}}Please confirm your email address{{end}}
//	Hello {{.Name}}, ...
//
// and optionally NAME.html, in html/template syntax, the HTML alternative
// of the body. Both execute with the same data and the functions of
// Funcs.
package templates

import (
	"embed"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	texttemplate "text/template"
	"time"
)

//go:embed default/*.txt default/*.html
var defaults embed.FS

var (
	// ErrUnknown is returned by Render for a name that the Set lacks.
	ErrUnknown = errors.New("templates: unknown template")
	// ErrRender is returned by Render when a template fails with the
	// data given, or yields an empty or multi-line subject or an empty
	// body. Rendering the same data again fails the same way.
	ErrRender = errors.New("templates: render failed")
)

// validName is what a template's name must look like.
var validName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)

// Set is a parsed set of templates. It is safe for concurrent use.
type Set struct {
	byName map[string]template
}

// template is one name's parts.
type template struct {
	text *texttemplate.Template // the body, with "subject" defined beside it
	html *htmltemplate.Template // nil when the name has no HTML part
}

// Rendered is an email rendered from a template.
type Rendered struct {
	Subject string // one line, trimmed
	Text    string // the text/plain body, ending in one newline
	HTML    string // the text/html body; "" when the template has none
}

// Load parses the built-in templates and then, if dir is not "", every
// NAME.txt and NAME.html in dir, where NAME matches
// ^[a-z][a-z0-9_-]{0,63}$. A name found in dir replaces the built-in
// one as a whole: confirm.txt alone in dir makes "confirm" a text-only
// email. dir may not have NAME.html without NAME.txt. Any other file or
// folder in dir is ignored, such as README, Confirm.txt or the "..data"
// links of a Kubernetes ConfigMap volume; the files it names may be
// symbolic links.
//
// A template that does not parse or lacks "subject" fails Load, with its
// file and line.
func Load(dir string) (*Set, error) {
	builtin, err := fs.Sub(defaults, "default")
	if err != nil {
		return nil, fmt.Errorf("templates: %w", err)
	}
	byName, err := parseFS(builtin, func(file string) string { return "built-in " + file })
	if err != nil {
		return nil, err
	}
	if dir != "" {
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("templates: %w", err)
		}
		custom, err := parseFS(os.DirFS(dir), func(file string) string { return filepath.Join(dir, file) })
		if err != nil {
			return nil, err
		}
		for name, t := range custom {
			byName[name] = t
		}
	}
	return &Set{byName: byName}, nil
}

// parseFS parses the templates at the top of fsys; label names a file
// in errors.
func parseFS(fsys fs.FS, label func(file string) string) (map[string]template, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("templates: %w", err)
	}
	texts := map[string]string{} // name to file
	htmls := map[string]string{}
	for _, e := range entries {
		file := e.Name()
		name, ext, ok := strings.Cut(file, ".")
		if !ok || !validName.MatchString(name) || (ext != "txt" && ext != "html") {
			continue
		}
		info, err := fs.Stat(fsys, file) // follows a symbolic link
		if err != nil {
			return nil, fmt.Errorf("templates: %s: %w", label(file), err)
		}
		if !info.Mode().IsRegular() {
			continue
		}
		if ext == "txt" {
			texts[name] = file
		} else {
			htmls[name] = file
		}
	}

	byName := make(map[string]template, len(texts))
	for name, file := range htmls {
		if _, ok := texts[name]; !ok {
			return nil, fmt.Errorf("templates: %s: has no %s.txt beside it for the subject and text body", label(file), name)
		}
	}
	for name, file := range texts {
		var t template
		src, err := fs.ReadFile(fsys, file)
		if err != nil {
			return nil, fmt.Errorf("templates: %s: %w", label(file), err)
		}
		t.text, err = texttemplate.New(file).Option("missingkey=error").Funcs(texttemplate.FuncMap(Funcs())).Parse(string(src))
		if err != nil {
			return nil, fmt.Errorf("templates: %s: %w", label(file), err)
		}
		if t.text.Lookup("subject") == nil {
			return nil, fmt.Errorf(`templates: %s: defines no "subject" template: add {{define "subject"}}...{{end}}`, label(file))
		}
		if file, ok := htmls[name]; ok {
			src, err := fs.ReadFile(fsys, file)
			if err != nil {
				return nil, fmt.Errorf("templates: %s: %w", label(file), err)
			}
			t.html, err = htmltemplate.New(file).Option("missingkey=error").Funcs(htmltemplate.FuncMap(Funcs())).Parse(string(src))
			if err != nil {
				return nil, fmt.Errorf("templates: %s: %w", label(file), err)
			}
		}
		byName[name] = t
	}
	return byName, nil
}

// Has reports whether the set has a template name.
func (s *Set) Has(name string) bool {
	_, ok := s.byName[name]
	return ok
}

// Names lists the set's templates, sorted.
func (s *Set) Names() []string {
	names := make([]string, 0, len(s.byName))
	for name := range s.byName {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Render executes template name with data.
func (s *Set) Render(name string, data any) (Rendered, error) {
	t, ok := s.byName[name]
	if !ok {
		return Rendered{}, fmt.Errorf("%w %q", ErrUnknown, name)
	}
	fail := func(format string, args ...any) (Rendered, error) {
		return Rendered{}, fmt.Errorf("%w: %s: %s", ErrRender, name, fmt.Sprintf(format, args...))
	}

	var b strings.Builder
	if err := t.text.ExecuteTemplate(&b, "subject", data); err != nil {
		return fail("subject: %v", err)
	}
	var r Rendered
	r.Subject = strings.TrimSpace(b.String())
	switch {
	case r.Subject == "":
		return fail("subject is empty")
	case strings.ContainsAny(r.Subject, "\r\n"):
		return fail("subject %q has more than one line", r.Subject)
	}

	b.Reset()
	if err := t.text.Execute(&b, data); err != nil {
		return fail("text: %v", err)
	}
	r.Text = strings.TrimRight(strings.TrimLeft(b.String(), "\r\n"), " \t\r\n") + "\n"
	if strings.TrimSpace(r.Text) == "" {
		return fail("text body is empty")
	}

	if t.html != nil {
		b.Reset()
		if err := t.html.Execute(&b, data); err != nil {
			return fail("html: %v", err)
		}
		r.HTML = b.String()
	}
	return r, nil
}

// Funcs returns the functions templates may call, a new map each time:
//
//	datetime  a time.Time in UTC, RFC 1123: "Mon, 02 Jan 2006 15:04:05 UTC"
//	date      a time.Time's day in UTC: "2 January 2006"
//	number    a number as short as it goes: 1000, 0.5, 12.25
func Funcs() map[string]any {
	return map[string]any{
		"datetime": func(t time.Time) string { return t.UTC().Format(time.RFC1123) },
		"date":     func(t time.Time) string { return t.UTC().Format("2 January 2006") },
		"number":   number,
	}
}

// number formats an integer or float without exponent or trailing zeros.
func number(v any) (string, error) {
	switch n := v.(type) {
	case float64:
		return strconv.FormatFloat(n, 'f', -1, 64), nil
	case float32:
		return strconv.FormatFloat(float64(n), 'f', -1, 32), nil
	case int:
		return strconv.Itoa(n), nil
	case int64:
		return strconv.FormatInt(n, 10), nil
	case uint64:
		return strconv.FormatUint(n, 10), nil
	}
	return "", fmt.Errorf("number: %T is not a number", v)
}

// ConfirmData is what the built-in "confirm" template uses.
type ConfirmData struct {
	UID   string
	Name  string // greets the recipient; optional
	Email string // the address to confirm
	// Link opens the confirmation; it carries Token. Token is there for
	// a template that shows a code to paste instead of a link.
	Link      string
	Token     string
	ExpiresAt time.Time
	Product   string // signs the email; optional
}

// UsageData is what the built-in "usage" template uses.
type UsageData struct {
	UID    string
	Name   string // greets the recipient; optional
	Email  string
	Metric string
	// Threshold is the percent of Limit that was crossed, such as 80.
	Threshold   float64
	Used        float64 // when the threshold was crossed
	Limit       float64
	Period      string    // hour, day, week, month or indefinite
	PeriodStart time.Time // zero when the period has no start
	ResetsAt    time.Time // zero when the limit never resets
	Product     string    // signs the email; optional
}
