package events

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateEmail(t *testing.T) {
	for _, ok := range []string{"ada@example.com", "a.b+tag@mail.example.org", "dev@localhost"} {
		if err := ValidateEmail("email", ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", "ada", "ada@", "@example.com", "ada@example", "Ada <ada@example.com>",
		"ada@example.com\r\nBcc: eve@example.com", "ada@example.com, eve@example.com",
		"ada@exa mple.com", strings.Repeat("a", 250) + "@x.com", "(comment)ada@example.com",
	} {
		err := ValidateEmail("email", bad)
		var v *ValidationError
		if !errors.As(err, &v) || v.Field != "email" || !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: err %v, want a ValidationError on email", bad, err)
		}
	}
}

func TestConfirmRequestValidate(t *testing.T) {
	good := ConfirmRequest{ID: "c-1", Email: "ada@example.com", Name: "Ada", Template: "welcome"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := (ConfirmRequest{}).TemplateOrDefault(); got != "confirm" {
		t.Errorf("default template %q", got)
	}
	for field, r := range map[string]ConfirmRequest{
		"id":       {Email: "ada@example.com"},
		"email":    {ID: "c-1", Email: "not an address"},
		"name":     {ID: "c-1", Email: "ada@example.com", Name: "Ada\r\nBcc: x"},
		"template": {ID: "c-1", Email: "ada@example.com", Template: "../etc/passwd"},
	} {
		var v *ValidationError
		if err := r.Validate(); !errors.As(err, &v) || v.Field != field {
			t.Errorf("%+v: err %v, want one on %s", r, err, field)
		}
	}
}

func TestDecodeConfirmAndVerifyRequests(t *testing.T) {
	var r ConfirmRequest
	if err := DecodeRequest([]byte(`{"id":"c-1","email":"ada@example.com"}`), &r); err != nil || r.Email != "ada@example.com" {
		t.Fatalf("%+v %v", r, err)
	}
	for body, field := range map[string]string{
		`{"id":"c-1","email":"ada@example.com","bcc":"x"}`: "bcc",
		`{"id":"c-1","email":7}`:                           "email",
		`not json`:                                         "request",
	} {
		var r ConfirmRequest
		var v *ValidationError
		if err := DecodeRequest([]byte(body), &r); !errors.As(err, &v) || v.Field != field {
			t.Errorf("%s: err %v, want one on %s", body, err, field)
		}
	}
	var vr VerifyRequest
	var v *ValidationError
	if err := DecodeRequest([]byte(`{}`), &vr); !errors.As(err, &v) || v.Field != "token" {
		t.Errorf("empty token: %v", err)
	}
	if err := DecodeRequest([]byte(`{"token":"`+strings.Repeat("x", MaxTokenTextLen+1)+`"}`), &vr); !errors.As(err, &v) || v.Field != "token" {
		t.Errorf("long token: %v", err)
	}
}

func TestUsageNoticeValidate(t *testing.T) {
	good := UsageNotice{ID: "u-1.photo.0.80", UID: "u-1", Metric: "photo_daily_total", Threshold: 80, Used: 160, Limit: 200,
		Period: "day", PeriodStart: time.Unix(0, 0).UTC()}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for field, mutate := range map[string]func(*UsageNotice){
		"id":        func(n *UsageNotice) { n.ID = "" },
		"uid":       func(n *UsageNotice) { n.UID = "a.b" },
		"metric":    func(n *UsageNotice) { n.Metric = "" },
		"threshold": func(n *UsageNotice) { n.Threshold = 0 },
		"used":      func(n *UsageNotice) { n.Used = -1 },
		"limit":     func(n *UsageNotice) { n.Limit = 1e300 },
		"period":    func(n *UsageNotice) { n.Period = "" },
	} {
		n := good
		mutate(&n)
		var v *ValidationError
		if err := n.Validate(); !errors.As(err, &v) || v.Field != field {
			t.Errorf("%s: err %v", field, err)
		}
	}
}

func TestNotifySubjects(t *testing.T) {
	s := DefaultSubjects()
	if got := s.NotifyVerify(); got != "notify.verify" {
		t.Errorf("verify subject %q", got)
	}
	// The verify subject must not be one the NOTIFY stream captures.
	for _, pattern := range []string{s.NotifyUsage("*"), s.NotifyConfirm("*")} {
		if subjectMatches(pattern, s.NotifyVerify()) {
			t.Errorf("%s captures %s", pattern, s.NotifyVerify())
		}
	}
}

// subjectMatches reports whether a subject with only '*' wildcards
// matches subject.
func subjectMatches(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	if len(p) != len(s) {
		return false
	}
	for i := range p {
		if p[i] != "*" && p[i] != s[i] {
			return false
		}
	}
	return true
}
