package events

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSubjectBuilders(t *testing.T) {
	s := DefaultSubjects()
	got := []string{
		s.UsageFor("u-42"), s.DeadFor("u-42"), s.UsageStreamSubject(), s.DeadStreamSubject(),
		s.Credit("u-42"), s.Authorize("u-42"), s.Grants("u-42"),
		s.Check("u-42"), s.Reset("u-42"),
		s.Register(), s.Deregister(), s.Find(""), s.Find("media"), s.RegistryChanged("media"),
		s.NotifyUsage("u-42"), s.NotifyConfirm("u-42"),
	}
	want := []string{
		"usage.u-42", "usage.dead.u-42", "usage.*", "usage.dead.*",
		"meter.credit.u-42", "meter.authorize.u-42", "meter.grants.u-42",
		"ratelimit.check.u-42", "ratelimit.reset.u-42",
		"registry.register", "registry.deregister", "registry.find", "registry.find.media", "registry.changed.media",
		"notify.usage.u-42", "notify.confirm.u-42",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("subjects (-want +got):\n%s", diff)
	}
}

func TestSubjectPrefixesConfigurable(t *testing.T) {
	s := Subjects{Usage: "acme.usage", Dead: "acme.dead", Meter: "acme.meter", RateLimit: "acme.rl", Registry: "acme.reg", Notify: "acme.notify"}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := s.Credit("u"); got != "acme.meter.credit.u" {
		t.Errorf("Credit = %q", got)
	}
	uid, err := s.ParseUsage("acme.usage.u-1")
	if err != nil || uid != "u-1" {
		t.Errorf("ParseUsage = %q, %v", uid, err)
	}
}

func TestParseSubjects(t *testing.T) {
	s := DefaultSubjects()
	for _, tc := range []struct {
		subject, want, errPart string
	}{
		{"usage.u-42", "u-42", ""},
		{"usage.U_1", "U_1", ""},
		{"usage.", "", "token"},
		{"usage.a.b", "", "token"},
		{"usage", "", "does not start with"},
		{"meter.credit.u", "", "does not start with"},
		{"usage." + strings.Repeat("x", 129), "", "token"},
		{"usage.dead", "", `"dead" is reserved`},
		{"usage.deadline", "deadline", ""},
	} {
		got, err := s.ParseUsage(tc.subject)
		if tc.errPart == "" {
			if err != nil || got != tc.want {
				t.Errorf("ParseUsage(%q) = %q, %v; want %q", tc.subject, got, err, tc.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.errPart) || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseUsage(%q) error = %v, want one containing %q", tc.subject, err, tc.errPart)
		}
	}
	uid, err := s.ParseDead("usage.dead.u-9")
	if err != nil || uid != "u-9" {
		t.Errorf("ParseDead = %q, %v", uid, err)
	}
	tok, err := ParseToken("meter.credit.u-1", "meter.credit")
	if err != nil || tok != "u-1" {
		t.Errorf("ParseToken = %q, %v", tok, err)
	}
}

func TestSubjectsValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mod   func(*Subjects)
		field string
	}{
		{"empty usage", func(s *Subjects) { s.Usage = "" }, "subjects.usage"},
		{"wildcard", func(s *Subjects) { s.Meter = "meter.*" }, "subjects.meter"},
		{"empty token", func(s *Subjects) { s.Notify = "a..b" }, "subjects.notify"},
		{"space", func(s *Subjects) { s.Registry = "reg istry" }, "subjects.registry"},
		{"same streams", func(s *Subjects) { s.Dead = s.Usage }, "subjects.dead"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := DefaultSubjects()
			tc.mod(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.field+":") {
				t.Errorf("Validate = %v, want an error naming %s", err, tc.field)
			}
		})
	}
}

// A uid never addresses a dead-letter or internal subject: "dead" is
// refused everywhere, and so is the token a configured dead prefix puts
// after the usage prefix.
func TestReservedUIDs(t *testing.T) {
	moved := DefaultSubjects()
	moved.Dead = "usage.refused"
	apart := DefaultSubjects()
	apart.Dead = "deadletters"
	for _, tc := range []struct {
		name     string
		s        Subjects
		reserved []string
	}{
		{"default", DefaultSubjects(), []string{"dead"}},
		{"dead prefix moved", moved, []string{"dead", "refused"}},
		{"dead prefix apart", apart, []string{"dead"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.reserved, tc.s.ReservedUIDs()); diff != "" {
				t.Errorf("ReservedUIDs (-want +got):\n%s", diff)
			}
			for _, uid := range tc.reserved {
				for what, err := range map[string]error{
					"ValidateUID": tc.s.ValidateUID("uid", uid),
					"ParseUsage":  second(tc.s.ParseUsage(tc.s.UsageFor(uid))),
					"ParseUID":    second(tc.s.ParseUID(tc.s.Credit(uid), tc.s.Meter+".credit")),
				} {
					if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "reserved") {
						t.Errorf("%s(%q) = %v, want a refusal saying it is reserved", what, uid, err)
					}
				}
			}
			if err := tc.s.ValidateUID("uid", "u-42"); err != nil {
				t.Errorf("ValidateUID(u-42) = %v", err)
			}
		})
	}
	// Without the configuration, "dead" is still refused.
	for what, err := range map[string]error{
		"ValidateUID": ValidateUID("uid", "dead"),
		"ParseUID":    second(ParseUID("meter.credit.dead", "meter.credit")),
	} {
		if err == nil || !strings.Contains(err.Error(), `uid: "dead" is reserved`) {
			t.Errorf("%s(dead) = %v, want uid: \"dead\" is reserved", what, err)
		}
	}
	ev := NewUsage("dead", "m", 1)
	if _, err := Prepare(&ev, PublisherOptions{Source: "test"}); err == nil || !strings.Contains(err.Error(), `subject: "dead" is reserved`) {
		t.Errorf("Prepare(uid dead) = %v, want it refused", err)
	}
	ev = NewUsage("refused", "m", 1)
	if _, err := Prepare(&ev, PublisherOptions{Source: "test", Subjects: moved}); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("Prepare(uid refused, dead prefix usage.refused) = %v, want it refused", err)
	}
}

func second[T any](_ T, err error) error { return err }

func TestTokens(t *testing.T) {
	for s, want := range map[string]bool{
		"u-42": true, "A_b-9": true, strings.Repeat("a", 128): true,
		"": false, strings.Repeat("a", 129): false, "u.42": false, "u 42": false, "é": false, "*": false, ">": false,
	} {
		if got := IsToken(s); got != want {
			t.Errorf("IsToken(%q) = %v, want %v", s, got, want)
		}
	}
}
