package notifier

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/usage"
)

// Settings is the notifier section of allot.yaml, which the notifier
// owns: its asynq server, the confirmation tokens, the templates, the
// mail server and the registry refresh.
type Settings struct {
	// Concurrency is how many tasks run at once in one replica. Default 10.
	Concurrency int `yaml:"concurrency"`
	// Queues are asynq's queues and their priorities: a queue with
	// priority 6 is served six times as often as one with 1. Default
	// critical 6, default 3, low 1; a file's queues are added to these.
	Queues map[string]int `yaml:"queues"`
	// ConfirmQueue, UsageQueue and RefreshQueue say which queue each kind
	// of task goes to. Defaults critical, default and low.
	ConfirmQueue string `yaml:"confirm_queue"`
	UsageQueue   string `yaml:"usage_queue"`
	RefreshQueue string `yaml:"refresh_queue"`
	// MaxRetry is how often a failed email is retried (with exponential
	// backoff from RetryBase up to RetryMax) before it is archived with
	// its reason. Default 8.
	MaxRetry int `yaml:"max_retry"`
	// RetryBase is the first retry's delay; each next one doubles, with
	// jitter. Default 5s.
	RetryBase time.Duration `yaml:"retry_base"`
	// RetryMax caps the retry delay. Default 10m.
	RetryMax time.Duration `yaml:"retry_max"`
	// Poll is how often an idle worker looks for new tasks (asynq's task
	// check interval). Default 100ms.
	Poll time.Duration `yaml:"poll"`
	// Retention is how long a handled task's id is kept: a notice
	// redelivered within it never sends a second email. Default 168h (the
	// NOTIFY stream's default age).
	Retention time.Duration `yaml:"retention"`
	// UnknownOutcome is what a task does with an email whose earlier
	// attempt ended between the end of its data and the server's answer
	// (the notifier died, lost Redis or its connection in that moment),
	// so that nobody knows whether the server took it: "skip" counts it
	// as sent (at most once: a notice may be missing, never doubled),
	// "resend" sends it again with the same Message-ID (at least once: a
	// notice may arrive twice, never be missing). Default skip.
	UnknownOutcome string `yaml:"unknown_outcome"`
	// Durable names the notifier's JetStream consumer on the NOTIFY
	// stream. Default "notifier".
	Durable string `yaml:"durable"`
	// MaxDeliver is how often the NOTIFY consumer is handed one notice
	// before the server gives up on it; the notifier then dead-letters it
	// (USAGE_DEAD, under the dead prefix and the notice's uid, with the
	// reason). A notice whose task cannot be stored is naked with a delay
	// that doubles from 1s to 1m, so the default, 500, outlasts about four
	// hours of the notifier's Redis being away.
	MaxDeliver int `yaml:"max_deliver"`
	// AckWait is how long the NOTIFY consumer waits for the notifier to
	// take a notice (store its task) before handing it out again: after a
	// notifier dies holding notices, the next one gets them this much
	// later. Default 30s; 1s to 1h.
	AckWait time.Duration `yaml:"ack_wait"`
	// Handlers is how many notify.verify requests are served at once.
	// Default 4.
	Handlers int `yaml:"handlers"`
	// TokenSecrets sign the confirmation tokens (HMAC-SHA256): the first
	// signs, every one verifies, so a secret is rotated by putting the new
	// one first and dropping the old one after TokenTTL. Each at least 32
	// characters. The notifier refuses to start without one, except under
	// "allot dev", which makes one up. From the environment:
	// ALLOT_NOTIFIER_TOKEN_SECRETS, comma-separated.
	TokenSecrets []service.Secret `yaml:"token_secrets" env:"ALLOT_NOTIFIER_TOKEN_SECRETS"`
	// TokenTTL is how long a confirmation token stays valid. Default 12h,
	// as in apicrud.
	TokenTTL time.Duration `yaml:"token_ttl"`
	// ConfirmURL is the page the confirmation link opens; the token is
	// added as the query parameter "token". Default
	// http://localhost:8080/confirm.
	ConfirmURL string `yaml:"confirm_url" env:"ALLOT_NOTIFIER_CONFIRM_URL"`
	// Product names the product in the emails. Default "allot".
	Product string `yaml:"product"`
	// TemplatesDir holds templates that override or add to the built-in
	// ones: <name>.txt (text/template, with a "subject" template) and
	// optionally <name>.html. Empty: the built-in ones only.
	TemplatesDir string `yaml:"templates_dir" env:"ALLOT_NOTIFIER_TEMPLATES"`
	// ChargeMetric is the grant each email is charged to, through the
	// meter's authorize endpoint, as apicrud charges email_daily_total.
	// Empty sends without charging. Default "email_daily_total".
	ChargeMetric string `yaml:"charge_metric"`
	// RefreshInterval is how often the registry refresh task runs: it has
	// the registry reap expired entries and rebuild its URL map. One
	// notifier replica, holding a pkg/mutex lock, runs asynq's Scheduler
	// with it as the entry "@every <interval>", so it is whole seconds.
	// 0 turns it off. Default 30s.
	RefreshInterval time.Duration `yaml:"refresh_interval"`
	// SMTP is the mail server.
	SMTP SMTPConfig `yaml:"smtp"`
}

// SMTPConfig is the mail server the notifier sends through.
type SMTPConfig struct {
	// Host is the server's name or address. Default 127.0.0.1.
	Host string `yaml:"host" env:"ALLOT_SMTP_HOST"`
	// Port is the server's port. Default 587 (submission).
	Port int `yaml:"port"`
	// TLS is starttls (required), opportunistic (STARTTLS when offered),
	// tls (implicit TLS, usually port 465) or none. Default starttls.
	TLS string `yaml:"tls"`
	// Auth is plain, login, cram-md5 or none; empty is plain when a
	// username is set and none otherwise.
	Auth string `yaml:"auth"`
	// Username and Password authenticate to the server.
	Username string         `yaml:"username" env:"ALLOT_SMTP_USERNAME"`
	Password service.Secret `yaml:"password" env:"ALLOT_SMTP_PASSWORD"`
	// From is the sender address. Default noreply@localhost.
	From string `yaml:"from" env:"ALLOT_SMTP_FROM"`
	// FromName is the sender's display name. Default: notifier.product.
	FromName string `yaml:"from_name"`
	// Timeout bounds one whole SMTP conversation. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
}

// What a task does with an email of unknown outcome
// (Settings.UnknownOutcome).
const (
	UnknownOutcomeSkip   = "skip"
	UnknownOutcomeResend = "resend"
)

// MinTokenSecretLen is the shortest token secret accepted.
const MinTokenSecretLen = 32

// DefaultSettings returns the notifier section's defaults.
func DefaultSettings() Settings {
	return Settings{
		Concurrency:     10,
		Queues:          map[string]int{"critical": 6, "default": 3, "low": 1},
		ConfirmQueue:    "critical",
		UsageQueue:      "default",
		RefreshQueue:    "low",
		MaxRetry:        8,
		RetryBase:       5 * time.Second,
		RetryMax:        10 * time.Minute,
		Poll:            100 * time.Millisecond,
		Retention:       7 * 24 * time.Hour,
		UnknownOutcome:  UnknownOutcomeSkip,
		Durable:         "notifier",
		MaxDeliver:      service.DefaultMaxDeliver,
		AckWait:         30 * time.Second,
		Handlers:        4,
		TokenTTL:        12 * time.Hour,
		ConfirmURL:      "http://localhost:8080/confirm",
		Product:         "allot",
		ChargeMetric:    "email_daily_total",
		RefreshInterval: 30 * time.Second,
		SMTP: SMTPConfig{
			Host:    "127.0.0.1",
			Port:    587,
			TLS:     "starttls",
			From:    "noreply@localhost",
			Timeout: 10 * time.Second,
		},
	}
}

var queueName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)

// Validate checks s and returns every broken rule joined, each naming its
// field, such as "notifier: notifier.retention: must be at least 1m":
// charge_metric must be a grant of catalog.
func (s Settings) Validate(catalog usage.Catalog) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("notifier: notifier.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if s.Concurrency < 1 || s.Concurrency > 1000 {
		add("concurrency", "must be between 1 and 1000, got %d", s.Concurrency)
	}
	if len(s.Queues) == 0 {
		add("queues", "must name at least one queue")
	}
	names := make([]string, 0, len(s.Queues))
	for q := range s.Queues {
		names = append(names, q)
	}
	sort.Strings(names)
	for _, q := range names {
		if !queueName.MatchString(q) {
			add("queues", "queue name %q must be 1 to 64 of a-z 0-9 _ -, starting with a letter", q)
		}
		if p := s.Queues[q]; p < 1 || p > 100 {
			add("queues", "priority of %q must be between 1 and 100, got %d", q, p)
		}
	}
	for _, q := range []struct{ field, queue string }{{"confirm_queue", s.ConfirmQueue}, {"usage_queue", s.UsageQueue}, {"refresh_queue", s.RefreshQueue}} {
		if _, ok := s.Queues[q.queue]; !ok {
			add(q.field, "%q is not one of notifier.queues", q.queue)
		}
	}
	if s.MaxRetry < 0 || s.MaxRetry > 100 {
		add("max_retry", "must be between 0 and 100, got %d", s.MaxRetry)
	}
	if s.RetryBase <= 0 {
		add("retry_base", "must be > 0, got %s", s.RetryBase)
	}
	if s.RetryMax < s.RetryBase {
		add("retry_max", "must be at least notifier.retry_base (%v), got %v", s.RetryBase, s.RetryMax)
	}
	if s.Poll < 10*time.Millisecond || s.Poll > 10*time.Second {
		add("poll", "must be between 10ms and 10s, got %v", s.Poll)
	}
	if s.Retention < time.Minute {
		add("retention", "must be at least 1m, got %v", s.Retention)
	}
	if s.UnknownOutcome != UnknownOutcomeSkip && s.UnknownOutcome != UnknownOutcomeResend {
		add("unknown_outcome", "must be %s (at most once) or %s (at least once), got %q", UnknownOutcomeSkip, UnknownOutcomeResend, s.UnknownOutcome)
	}
	if err := events.ValidateToken("durable", s.Durable); err != nil {
		add("durable", "must be 1 to %d of A-Z a-z 0-9 _ -, got %q", events.MaxTokenLen, s.Durable)
	}
	if s.MaxDeliver < 2 || s.MaxDeliver > 1_000_000 {
		add("max_deliver", "must be between 2 and 1000000 (a notice is dead-lettered after that many deliveries), got %d", s.MaxDeliver)
	}
	if s.AckWait < time.Second || s.AckWait > time.Hour {
		add("ack_wait", "must be between 1s and 1h (how long a notice handed out waits to be taken), got %v", s.AckWait)
	}
	if s.Handlers < 1 || s.Handlers > 256 {
		add("handlers", "must be between 1 and 256, got %d", s.Handlers)
	}
	for i, secret := range s.TokenSecrets {
		if len(secret.Reveal()) < MinTokenSecretLen {
			add("token_secrets", "secret %d must be at least %d characters (got %d)", i, MinTokenSecretLen, len(secret.Reveal()))
		}
	}
	if s.TokenTTL < time.Minute || s.TokenTTL > 30*24*time.Hour {
		add("token_ttl", "must be between 1m and 720h, got %v", s.TokenTTL)
	}
	if u, err := url.Parse(s.ConfirmURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("confirm_url", "must be an http or https URL, got %q", s.ConfirmURL)
	} else if u.Fragment != "" {
		add("confirm_url", "must not have a #fragment, got %q", s.ConfirmURL)
	}
	if s.Product == "" {
		add("product", "must not be empty")
	}
	if s.ChargeMetric != "" {
		if m, ok := catalog.Metrics[s.ChargeMetric]; !ok || m.Style != usage.StyleGrant {
			add("charge_metric", "%q must be a grant metric declared under metrics (or empty to send without charging)", s.ChargeMetric)
		}
	}
	switch {
	case s.RefreshInterval < 0 || (s.RefreshInterval > 0 && s.RefreshInterval < time.Second):
		add("refresh_interval", "must be 0 (off) or at least 1s, got %v", s.RefreshInterval)
	case s.RefreshInterval%time.Second != 0:
		add("refresh_interval", "must be whole seconds (asynq's scheduler runs it @every <interval>), got %v", s.RefreshInterval)
	}
	errs = append(errs, s.SMTP.validate()...)
	return errors.Join(errs...)
}

func (c SMTPConfig) validate() []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("notifier: notifier.smtp.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.Host == "" {
		add("host", "must not be empty")
	}
	if c.Port < 1 || c.Port > 65535 {
		add("port", "must be between 1 and 65535, got %d", c.Port)
	}
	switch c.TLS {
	case "starttls", "opportunistic", "tls", "none":
	default:
		add("tls", "must be one of starttls, opportunistic, tls, none, got %q", c.TLS)
	}
	switch c.Auth {
	case "", "none":
	case "plain", "login", "cram-md5":
		if c.Username == "" {
			add("username", "must be set with auth %s", c.Auth)
		}
	default:
		add("auth", "must be one of plain, login, cram-md5, none, got %q", c.Auth)
	}
	if c.Username != "" && c.Password == "" && c.Auth != "none" {
		add("password", "must be set with username")
	}
	if err := events.ValidateEmail("from", c.From); err != nil {
		add("from", "%q is not an email address such as noreply@example.com", c.From)
	}
	if rule := textRule(c.FromName, 256); rule != "" {
		add("from_name", "%s", rule)
	}
	if c.Timeout <= 0 {
		add("timeout", "must be > 0, got %s", c.Timeout)
	}
	return errs
}

// textRule returns the rule s breaks as a header text, or "".
func textRule(s string, max int) string {
	if len(s) > max {
		return fmt.Sprintf("must be at most %d bytes", max)
	}
	for _, r := range s {
		if r < ' ' || r == 0x7f {
			return "must not contain control characters"
		}
	}
	return ""
}

// Config is what the notifier runs with: the runtime's configuration
// (connections, subjects, streams, instance), the metrics and grants
// (package usage: the grant email is charged to, the grants usage notices
// name) and its own section.
type Config struct {
	service.Config `yaml:"-"`
	// Usage is the metrics and grants sections.
	Usage usage.Catalog `yaml:",inline"`
	// Notifier is the notifier's own section.
	Notifier Settings `yaml:"notifier"`
}

// DefaultConfig returns the runtime's defaults with the notifier's.
func DefaultConfig() Config {
	return Config{Config: service.Default(), Usage: usage.Default(), Notifier: DefaultSettings()}
}

// LoadConfig reads what the notifier reads of the file at path (none: the
// defaults) and of the environment, over the defaults, beside rt, the
// runtime's configuration loaded from the same file; then it checks the
// whole.
func LoadConfig(rt service.Config, path string, getenv func(string) string) (Config, error) {
	cfg := DefaultConfig()
	cfg.Config = rt
	return service.LoadChecked(cfg, path, getenv)
}

// Validate checks the runtime's configuration, the metrics and grants and
// the notifier section, and returns every broken rule joined.
func (c Config) Validate() error {
	return errors.Join(c.Config.Validate(), c.Usage.Validate(), c.Notifier.Validate(c.Usage))
}

// Section is what the notifier reads of allot.yaml besides the runtime's
// sections (metrics, grants, notifier), as service.Run checks it before
// starting anything and prints it with -validate, secrets masked.
func Section() service.OwnedSection { return service.SectionOf(LoadConfig) }
