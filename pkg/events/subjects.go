package events

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Subjects holds the subject prefixes of every allot subject. The zero
// value is not usable: start from [DefaultSubjects] and change what you
// need. Every subject allot uses is built and parsed here.
type Subjects struct {
	Usage     string `yaml:"usage"`     // usage events: <usage>.<uid>
	Dead      string `yaml:"dead"`      // dead letters: <dead>.<uid>
	Meter     string `yaml:"meter"`     // <meter>.credit.<uid>, .authorize.<uid>, .grants.<uid>
	RateLimit string `yaml:"ratelimit"` // <ratelimit>.check.<uid>, .reset.<uid>
	Registry  string `yaml:"registry"`  // <registry>.register, .find[.<name>], .changed.<name>
	Notify    string `yaml:"notify"`    // <notify>.usage.<uid>, .confirm.<uid>
}

// DefaultSubjects returns the prefixes of DESIGN.md.
func DefaultSubjects() Subjects {
	return Subjects{
		Usage:     "usage",
		Dead:      "usage.dead",
		Meter:     "meter",
		RateLimit: "ratelimit",
		Registry:  "registry",
		Notify:    "notify",
	}
}

// Validate checks that every prefix is a literal NATS subject of tokens
// and that the usage and dead-letter streams cannot overlap.
func (s Subjects) Validate() error {
	var errs []error
	for _, p := range []struct{ field, value string }{
		{"subjects.usage", s.Usage},
		{"subjects.dead", s.Dead},
		{"subjects.meter", s.Meter},
		{"subjects.ratelimit", s.RateLimit},
		{"subjects.registry", s.Registry},
		{"subjects.notify", s.Notify},
	} {
		if err := validPrefix(p.field, p.value); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Usage != "" && s.Usage == s.Dead {
		errs = append(errs, invalid("subjects.dead", "must differ from subjects.usage, or the two streams overlap"))
	}
	return errors.Join(errs...)
}

func validPrefix(field, p string) error {
	if p == "" {
		return invalid(field, "is required")
	}
	for _, tok := range strings.Split(p, ".") {
		if !IsToken(tok) {
			return invalid(field, "must be dot-separated tokens of A-Z a-z 0-9 _ - (got %s)", quoteShort(p))
		}
	}
	return nil
}

// UsageStreamSubject is what the usage stream captures: one token after
// the prefix, so usage.dead.<uid> is never captured by it. A partitioned
// stream stores these as <usage>.<partition>.<uid>
// ([StreamConfig.UsageFilter]).
func (s Subjects) UsageStreamSubject() string { return s.Usage + ".*" }

// DeadStreamSubject is the filter of the dead-letter stream.
func (s Subjects) DeadStreamSubject() string { return s.Dead + ".*" }

// Usage returns the subject an app publishes uid's usage events to.
func (s Subjects) UsageFor(uid string) string { return s.Usage + "." + uid }

// DeadFor returns the dead-letter subject for uid.
func (s Subjects) DeadFor(uid string) string { return s.Dead + "." + uid }

// Credit returns the credit endpoint subject for uid.
func (s Subjects) Credit(uid string) string { return s.Meter + ".credit." + uid }

// Authorize returns the authorize endpoint subject for uid.
func (s Subjects) Authorize(uid string) string { return s.Meter + ".authorize." + uid }

// Grants returns the grants endpoint subject for uid.
func (s Subjects) Grants(uid string) string { return s.Meter + ".grants." + uid }

// Check returns the rate-limit check subject for uid.
func (s Subjects) Check(uid string) string { return s.RateLimit + ".check." + uid }

// CreditMany, AuthorizeMany and CheckMany return the batch subjects of
// credit, authorize and check for scope: [ScopeAll] or a uid (many.go).
func (s Subjects) CreditMany(scope string) string { return s.Meter + ".credit_many." + scope }

// AuthorizeMany: see CreditMany.
func (s Subjects) AuthorizeMany(scope string) string { return s.Meter + ".authorize_many." + scope }

// CheckMany: see CreditMany.
func (s Subjects) CheckMany(scope string) string { return s.RateLimit + ".check_many." + scope }

// ParseScope returns the scope token that follows prefix in a batch
// subject: [ScopeAll] or a uid.
func (s Subjects) ParseScope(subject, prefix string) (string, error) {
	if rest, ok := strings.CutPrefix(subject, prefix+"."); ok && rest == ScopeAll {
		return rest, nil
	}
	scope, err := s.ParseUID(subject, prefix)
	var v *ValidationError
	if errors.As(err, &v) {
		v.Field = "scope"
	}
	return scope, err
}

// Reset returns the rate-limit reset subject for uid.
func (s Subjects) Reset(uid string) string { return s.RateLimit + ".reset." + uid }

// Register returns the registry's register subject.
func (s Subjects) Register() string { return s.Registry + ".register" }

// Deregister returns the registry's deregister subject.
func (s Subjects) Deregister() string { return s.Registry + ".deregister" }

// Find returns the registry's find subject: all services when name is
// empty, else one.
func (s Subjects) Find(name string) string {
	if name == "" {
		return s.Registry + ".find"
	}
	return s.Registry + ".find." + name
}

// RegistryChanged returns the subject of change events for service name.
func (s Subjects) RegistryChanged(name string) string { return s.Registry + ".changed." + name }

// RegistryRefresh returns the subject that has the registry reap expired
// instances and rebuild its URL map at once.
func (s Subjects) RegistryRefresh() string { return s.Registry + ".refresh" }

// NotifyUsage returns the subject of uid's threshold notices.
func (s Subjects) NotifyUsage(uid string) string { return s.Notify + ".usage." + uid }

// NotifyConfirm returns the subject on which apps ask for uid's
// confirmation email.
func (s Subjects) NotifyConfirm(uid string) string { return s.Notify + ".confirm." + uid }

// NotifyVerify returns the subject on which a confirmation token is
// verified (request/reply). It lies outside the NOTIFY stream, which
// captures notify.usage.* and notify.confirm.*: a stream would answer the
// request with its own acknowledgement.
func (s Subjects) NotifyVerify() string { return s.Notify + ".verify" }

// NotifierGroup is the queue group of the notifier's endpoints.
func (s Subjects) NotifierGroup() string { return s.Notify }

// Endpoint groups of the request/reply services, for micro.AddGroup.
func (s Subjects) MeterGroup() string     { return s.Meter }
func (s Subjects) RateLimitGroup() string { return s.RateLimit }
func (s Subjects) RegistryGroup() string  { return s.Registry }

// ReservedUIDs returns the tokens that are never uids with these
// prefixes: [ReservedUID], and each token that another prefix (the dead
// letters' usage.dead, say) puts right after the usage prefix, since
// <usage>.<token> would be a usage subject inside that prefix's space.
func (s Subjects) ReservedUIDs() []string {
	reserved := []string{ReservedUID}
	for _, p := range []string{s.Dead, s.Meter, s.RateLimit, s.Registry, s.Notify} {
		rest, ok := strings.CutPrefix(p, s.Usage+".")
		if !ok {
			continue
		}
		if tok, _, _ := strings.Cut(rest, "."); tok != "" && !slices.Contains(reserved, tok) {
			reserved = append(reserved, tok)
		}
	}
	return reserved
}

// startsPrefix reports whether <usage>.<tok> starts another prefix,
// without allocating: every event's uid is checked.
func (s Subjects) startsPrefix(tok string) bool {
	for _, p := range [...]string{s.Dead, s.Meter, s.RateLimit, s.Registry, s.Notify} {
		rest, ok := strings.CutPrefix(p, s.Usage+".")
		if first, _, _ := strings.Cut(rest, "."); ok && first == tok {
			return true
		}
	}
	return false
}

// ValidateUID checks a uid: a token, and none of [Subjects.ReservedUIDs].
// Every place a uid enters (a publisher, the client, an endpoint's
// subject, the meter's parse of an event's subject) asks it.
func (s Subjects) ValidateUID(field, uid string) error {
	if err := ValidateToken(field, uid); err != nil {
		return err
	}
	return s.reserved(field, uid)
}

func (s Subjects) reserved(field, uid string) error {
	if uid != ReservedUID && !s.startsPrefix(uid) {
		return nil
	}
	if strings.HasPrefix(s.Dead, s.Usage+"."+uid) || uid == ReservedUID {
		return invalid(field, "%q is reserved, never a uid: %s.* holds the dead letters, beside the usage events on %s.<uid>", uid, s.Dead, s.Usage)
	}
	return invalid(field, "%q is reserved, never a uid: %s.%s starts other subjects", uid, s.Usage, uid)
}

// ParseUsage returns the uid of a usage event subject as the usage
// stream stores it: <usage>.<uid>, or <usage>.<partition>.<uid> in a
// partitioned stream (streams.partitions), the partition a decimal
// number. A reserved token (usage.dead) is refused as no uid.
func (s Subjects) ParseUsage(subject string) (string, error) {
	if rest, ok := strings.CutPrefix(subject, s.Usage+"."); ok {
		if p, uid, ok := strings.Cut(rest, "."); ok && isPartition(p) {
			subject = s.Usage + "." + uid
		}
	}
	uid, err := parseTail(subject, s.Usage)
	if err != nil {
		return "", err
	}
	return uid, s.reserved("subject", uid)
}

// UsagePartition returns the partition of a usage event subject as a
// partitioned stream stores it (<usage>.<partition>.<uid>); ok is false
// for any other subject.
func (s Subjects) UsagePartition(subject string) (p int, ok bool) {
	rest, ok := strings.CutPrefix(subject, s.Usage+".")
	if !ok {
		return 0, false
	}
	tok, _, ok := strings.Cut(rest, ".")
	if !ok || !isPartition(tok) {
		return 0, false
	}
	p, err := strconv.Atoi(tok)
	return p, err == nil
}

// isPartition reports whether tok is a partition number as the usage
// stream's subject transform writes it: decimal digits, no sign, no
// leading zero but for 0 itself.
func isPartition(tok string) bool {
	if tok == "" || len(tok) > 4 || len(tok) > 1 && tok[0] == '0' {
		return false
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] < '0' || tok[i] > '9' {
			return false
		}
	}
	return true
}

// ParseUID returns the <uid> token that follows prefix in a request
// subject, as the package's ParseUID does, and refuses a reserved one.
func (s Subjects) ParseUID(subject, prefix string) (string, error) {
	uid, err := ParseUID(subject, prefix)
	if err != nil {
		return "", err
	}
	return uid, s.reserved("uid", uid)
}

// ParseDead returns the uid of a dead-letter subject.
func (s Subjects) ParseDead(subject string) (string, error) {
	return parseTail(subject, s.Dead)
}

// ParseToken returns the single token that follows prefix in subject, as
// in ParseToken("meter.credit.u-42", "meter.credit") == "u-42". A missing
// or invalid token is a [ValidationError] on field "subject".
func ParseToken(subject, prefix string) (string, error) {
	return parseTail(subject, prefix)
}

// ParseUID returns the <uid> token that follows prefix in a request
// subject, as ParseToken does, but names the field "uid" in its error
// and refuses [ReservedUID]; [Subjects.ParseUID] also refuses the
// configured reserved tokens.
func ParseUID(subject, prefix string) (string, error) {
	uid, err := parseTail(subject, prefix)
	var v *ValidationError
	if errors.As(err, &v) {
		v.Field = "uid"
	}
	if err != nil {
		return "", err
	}
	if uid == ReservedUID {
		return "", DefaultSubjects().reserved("uid", uid)
	}
	return uid, nil
}

func parseTail(subject, prefix string) (string, error) {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return "", invalid("subject", "%s does not start with %q", quoteShort(subject), prefix+".")
	}
	if !IsToken(rest) {
		return "", invalid("subject", "token %s after %q must be 1 to %d characters of A-Z a-z 0-9 _ -", quoteShort(rest), prefix+".", MaxTokenLen)
	}
	return rest, nil
}

// String lists the prefixes, for logs.
func (s Subjects) String() string {
	return fmt.Sprintf("usage=%s dead=%s meter=%s ratelimit=%s registry=%s notify=%s",
		s.Usage, s.Dead, s.Meter, s.RateLimit, s.Registry, s.Notify)
}
