package templates_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/allot/allot/services/notifier/internal/templates"
)

func load(t *testing.T, dir string) *templates.Set {
	t.Helper()
	s, err := templates.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeFiles writes name → content into a new directory and returns it.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var (
	expires = time.Date(2026, 3, 14, 9, 30, 0, 0, time.FixedZone("CET", 3600))
	confirm = templates.ConfirmData{
		UID:       "user-42",
		Name:      "Ada",
		Email:     "ada@example.com",
		Link:      "https://app.example.com/confirm?token=abc.def&uid=user-42",
		Token:     "abc.def",
		ExpiresAt: expires,
		Product:   "Allot",
	}
	usage = templates.UsageData{
		UID:         "user-42",
		Name:        "Ada",
		Email:       "ada@example.com",
		Metric:      "api_calls_monthly_total",
		Threshold:   80,
		Used:        8000.5,
		Limit:       10000,
		Period:      "month",
		PeriodStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC),
		ResetsAt:    time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC),
		Product:     "Allot",
	}
)

func TestDefaults(t *testing.T) {
	s := load(t, "")
	if diff := cmp.Diff([]string{"confirm", "usage"}, s.Names()); diff != "" {
		t.Errorf("Names() (-want +got):\n%s", diff)
	}
	if !s.Has("confirm") || s.Has("nope") {
		t.Error("Has is wrong")
	}

	r, err := s.Render("confirm", confirm)
	if err != nil {
		t.Fatal(err)
	}
	if r.Subject != "Please confirm your email address for Allot" {
		t.Errorf("subject = %q", r.Subject)
	}
	for _, want := range []string{"Hello Ada,", "ada@example.com", confirm.Link, "Sat, 14 Mar 2026 08:30:00 UTC", "-- Allot\n"} {
		if !strings.Contains(r.Text, want) {
			t.Errorf("text lacks %q:\n%s", want, r.Text)
		}
	}
	if strings.HasPrefix(r.Text, "\n") || !strings.HasSuffix(r.Text, "Allot\n") {
		t.Errorf("text is not trimmed:\n%q", r.Text)
	}
	escaped := strings.ReplaceAll(confirm.Link, "&", "&amp;")
	for _, want := range []string{`href="` + escaped + `"`, "Hello Ada,", "Sat, 14 Mar 2026 08:30:00 UTC"} {
		if !strings.Contains(r.HTML, want) {
			t.Errorf("html lacks %q:\n%s", want, r.HTML)
		}
	}

	r, err = s.Render("usage", usage)
	if err != nil {
		t.Fatal(err)
	}
	if r.Subject != "api_calls_monthly_total has reached 80% of its limit" {
		t.Errorf("subject = %q", r.Subject)
	}
	for _, want := range []string{"crossed 80% of its limit", "8000.5 of 10000", "Period: month, since Sun, 01 Mar 2026 00:00:00 UTC", "Resets: Wed, 01 Apr 2026 00:00:00 UTC"} {
		if !strings.Contains(r.Text, want) {
			t.Errorf("text lacks %q:\n%s", want, r.Text)
		}
	}
	if !strings.Contains(r.HTML, "8000.5 of 10000") {
		t.Errorf("html lacks the numbers:\n%s", r.HTML)
	}
}

func TestDefaultsWithOptionalFieldsEmpty(t *testing.T) {
	s := load(t, "")
	c := confirm
	c.Name, c.Product = "", ""
	r, err := s.Render("confirm", c)
	if err != nil {
		t.Fatal(err)
	}
	if r.Subject != "Please confirm your email address" || !strings.HasPrefix(r.Text, "Hello,\n") || strings.Contains(r.Text, "--") {
		t.Errorf("rendered %+v", r)
	}

	u := usage
	u.Period, u.PeriodStart, u.ResetsAt = "indefinite", time.Time{}, time.Time{}
	r, err = s.Render("usage", u)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Period: indefinite\n", "does not reset by itself"} {
		if !strings.Contains(r.Text, want) {
			t.Errorf("text lacks %q:\n%s", want, r.Text)
		}
	}
	if strings.Contains(r.Text+r.HTML, "0001") {
		t.Errorf("a zero time shows:\n%s\n%s", r.Text, r.HTML)
	}
}

func TestHTMLEscapes(t *testing.T) {
	c := confirm
	c.Name = `<script>alert(1)</script>`
	c.Link = "javascript:alert(1)"
	r, err := load(t, "").Render("confirm", c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r.HTML, "<script>") || strings.Contains(r.HTML, `href="javascript:`) {
		t.Errorf("html is not escaped:\n%s", r.HTML)
	}
}

func TestOverrideDir(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"confirm.txt":   `{{define "subject"}}Confirm, {{.Name}}{{end}}Go to {{.Link}}`,
		"welcome.txt":   "{{define \"subject\"}}\n  Welcome {{.Name}}  \n{{end}}\n\nHi {{.Name}}.\n\n",
		"welcome.html":  `<p>Hi {{.Name}}</p>`,
		"README.md":     "not a template",
		"Upper.txt":     "{{ broken",
		"bad name.txt":  "{{ broken",
		"x.txt.bak":     "{{ broken",
		"_private.html": "{{ broken",
	})
	if err := os.Mkdir(filepath.Join(dir, "sub.txt"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "welcome.txt"), filepath.Join(dir, "hello.txt")); err != nil {
		t.Fatal(err)
	}
	s := load(t, dir)
	if diff := cmp.Diff([]string{"confirm", "hello", "usage", "welcome"}, s.Names()); diff != "" {
		t.Errorf("Names() (-want +got):\n%s", diff)
	}

	r, err := s.Render("confirm", confirm)
	if err != nil {
		t.Fatal(err)
	}
	want := templates.Rendered{Subject: "Confirm, Ada", Text: "Go to " + confirm.Link + "\n"}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("confirm replaced as a whole, without the built-in HTML (-want +got):\n%s", diff)
	}

	r, err = s.Render("welcome", map[string]string{"Name": "Ada"})
	if err != nil {
		t.Fatal(err)
	}
	want = templates.Rendered{Subject: "Welcome Ada", Text: "Hi Ada.\n", HTML: "<p>Hi Ada</p>"}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("welcome (-want +got):\n%s", diff)
	}
	if _, err := s.Render("usage", usage); err != nil {
		t.Errorf("built-in usage lost: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  []string // each must appear in the error
	}{
		{
			name:  "text parse error",
			files: map[string]string{"confirm.txt": "{{define \"subject\"}}x{{end}}\nline two\n{{.Name"},
			want:  []string{"confirm.txt", "confirm.txt:3"},
		},
		{
			name:  "html parse error",
			files: map[string]string{"note.txt": `{{define "subject"}}x{{end}}y`, "note.html": "<p>\n{{if}}</p>"},
			want:  []string{"note.html", "note.html:2"},
		},
		{
			name:  "unknown function",
			files: map[string]string{"note.txt": `{{define "subject"}}x{{end}}{{money .Used}}`},
			want:  []string{"note.txt", `"money" not defined`},
		},
		{
			name:  "no subject",
			files: map[string]string{"note.txt": "Hello"},
			want:  []string{"note.txt", `defines no "subject"`},
		},
		{
			name:  "html without text",
			files: map[string]string{"note.html": "<p>Hello</p>"},
			want:  []string{"note.html", "no note.txt"},
		},
		{
			name:  "html without text even for a built-in name",
			files: map[string]string{"confirm.html": "<p>Hello</p>"},
			want:  []string{"confirm.html", "no confirm.txt"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, tt.files)
			_, err := templates.Load(dir)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			for _, w := range append(tt.want, dir) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := templates.Load(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("Load of a missing directory succeeded")
	}
}

func TestRenderErrors(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"twolines.txt":  "{{define \"subject\"}}one\ntwo{{end}}body",
		"nosubject.txt": `{{define "subject"}} {{end}}body`,
		"nobody.txt":    `{{define "subject"}}s{{end}}   `,
		"badhtml.txt":   `{{define "subject"}}s{{end}}body`,
		"badhtml.html":  `{{.Missing}}`,
		"fails.txt":     `{{define "subject"}}s{{end}}{{number .Name}}`,
	})
	s := load(t, dir)
	tests := []struct {
		name     string
		template string
		data     any
		want     error
	}{
		{"unknown", "nope", confirm, templates.ErrUnknown},
		{"missing key", "confirm", map[string]any{"Name": "Ada"}, templates.ErrRender},
		{"missing field", "confirm", struct{ Name string }{"Ada"}, templates.ErrRender},
		{"subject of two lines", "twolines", nil, templates.ErrRender},
		{"empty subject", "nosubject", nil, templates.ErrRender},
		{"empty body", "nobody", nil, templates.ErrRender},
		{"html fails", "badhtml", map[string]any{}, templates.ErrRender},
		{"function fails", "fails", confirm, templates.ErrRender},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Render(tt.template, tt.data)
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
			if tt.want == templates.ErrRender && !strings.Contains(err.Error(), tt.template) {
				t.Errorf("error %q does not name the template", err)
			}
		})
	}
}

func TestFuncs(t *testing.T) {
	s := load(t, writeFiles(t, map[string]string{
		"f.txt": `{{define "subject"}}s{{end}}{{datetime .T}}|{{date .T}}|{{number .F}}|{{number .Big}}|{{number .I}}|{{number .Frac}}`,
	}))
	r, err := s.Render("f", map[string]any{
		"T": time.Date(2026, 1, 2, 23, 30, 0, 0, time.FixedZone("X", -2*3600)),
		"F": 100.0, "Big": 1e21, "I": 7, "Frac": 0.125,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "Sat, 03 Jan 2026 01:30:00 UTC|3 January 2026|100|1000000000000000000000|7|0.125\n"
	if r.Text != want {
		t.Errorf("text = %q, want %q", r.Text, want)
	}
}

func TestConcurrentRender(t *testing.T) {
	s := load(t, "")
	want, err := s.Render("confirm", confirm)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 20 {
				for _, name := range []string{"confirm", "usage"} {
					var data any = confirm
					if name == "usage" {
						data = usage
					}
					got, err := s.Render(name, data)
					if err != nil {
						t.Error(err)
						return
					}
					if name == "confirm" && got != want {
						t.Errorf("concurrent render differs: %+v", got)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}
