package notifier

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
)

func TestNotifierSection(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Instance = "notifier-0"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	n := cfg.Notifier
	if n.TokenTTL != 12*time.Hour || n.RefreshInterval != 30*time.Second || n.ChargeMetric != "email_daily_total" || n.Queues["critical"] != 6 {
		t.Errorf("defaults = %+v", n)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "allot.yaml")
	body := "notifier:\n  queues: {mail: 2, chores: 1}\n  confirm_queue: mail\n  usage_queue: mail\n  refresh_queue: chores\n" +
		"  smtp:\n    host: smtp.example.com\n    port: 465\n    tls: tls\n    username: allot\n    from: allot@example.com\n"
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := strings.Repeat("s", 40)
	getenv := func(k string) string {
		return map[string]string{"ALLOT_SMTP_PASSWORD": "pw", "ALLOT_NOTIFIER_TOKEN_SECRETS": secret + ",," + strings.Repeat("t", 32), "ALLOT_INSTANCE": "notifier-0"}[k]
	}
	rt, err := service.Load(path, getenv)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = LoadConfig(rt, path, getenv)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Notifier; got.SMTP.Port != 465 || got.SMTP.Password.Reveal() != "pw" || len(got.TokenSecrets) != 2 || got.Queues["mail"] != 2 || len(got.Queues) != 5 {
		t.Errorf("loaded = %+v", got)
	}
	// A file's queues are added to the defaults, as metrics and grants are.
	out, err := Section().Load(rt, path, getenv)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, secret) || strings.Contains(out, "password: pw") || !strings.Contains(out, "host: smtp.example.com") {
		t.Errorf("Section shows a secret, or not the section:\n%s", out)
	}
	if strings.Contains(rt.Redacted(out), secret) || strings.Contains(rt.Redacted(out), "password: pw") {
		t.Errorf("Redacted shows a secret:\n%s", rt.Redacted(out))
	}
	// A broken rule in the file is refused naming its field.
	if err := os.WriteFile(path, []byte("notifier:\n  retention: 1s\n  smtp: {tsl: none}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(rt, path, getenv); err == nil || !strings.Contains(err.Error(), "notifier.smtp.tsl: unknown field") {
		t.Errorf("a typo: %v", err)
	}
}

func TestNotifierSectionBadValues(t *testing.T) {
	for field, mutate := range map[string]func(*Settings){
		"notifier.concurrency": func(c *Settings) { c.Concurrency = 0 },
		"notifier.queues": func(c *Settings) {
			c.Queues = map[string]int{"Bad Name": 1, "critical": 1, "default": 1, "low": 1}
		},
		"notifier.usage_queue":      func(c *Settings) { c.UsageQueue = "nope" },
		"notifier.max_retry":        func(c *Settings) { c.MaxRetry = -1 },
		"notifier.retry_base":       func(c *Settings) { c.RetryBase = 0 },
		"notifier.retry_max":        func(c *Settings) { c.RetryMax = time.Second },
		"notifier.poll":             func(c *Settings) { c.Poll = time.Millisecond },
		"notifier.retention":        func(c *Settings) { c.Retention = time.Second },
		"notifier.unknown_outcome":  func(c *Settings) { c.UnknownOutcome = "maybe" },
		"notifier.durable":          func(c *Settings) { c.Durable = "a.b" },
		"notifier.ack_wait":         func(c *Settings) { c.AckWait = 500 * time.Millisecond },
		"notifier.handlers":         func(c *Settings) { c.Handlers = 0 },
		"notifier.token_secrets":    func(c *Settings) { c.TokenSecrets = []service.Secret{"short"} },
		"notifier.token_ttl":        func(c *Settings) { c.TokenTTL = 0 },
		"notifier.confirm_url":      func(c *Settings) { c.ConfirmURL = "ftp://x/confirm" },
		"notifier.product":          func(c *Settings) { c.Product = "" },
		"notifier.charge_metric":    func(c *Settings) { c.ChargeMetric = "api_calls_total" },
		"notifier.refresh_interval": func(c *Settings) { c.RefreshInterval = time.Millisecond },
		"notifier.smtp.port":        func(c *Settings) { c.SMTP.Port = 70000 },
		"notifier.smtp.tls":         func(c *Settings) { c.SMTP.TLS = "ssl" },
		"notifier.smtp.auth":        func(c *Settings) { c.SMTP.Auth = "xoauth" },
		"notifier.smtp.username":    func(c *Settings) { c.SMTP.Auth = "plain" },
		"notifier.smtp.password":    func(c *Settings) { c.SMTP.Username = "allot" },
		"notifier.smtp.from":        func(c *Settings) { c.SMTP.From = "Allot <noreply@example.com>" },
		"notifier.smtp.from_name":   func(c *Settings) { c.SMTP.FromName = "a\r\nBcc: x" },
		"notifier.smtp.host":        func(c *Settings) { c.SMTP.Host = "" },
		"notifier.smtp.timeout":     func(c *Settings) { c.SMTP.Timeout = 0 },
	} {
		cfg := DefaultConfig()
		cfg.Instance = "notifier-0"
		cfg.Notifier.Queues = map[string]int{"critical": 6, "default": 3, "low": 1}
		mutate(&cfg.Notifier)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), field+":") {
			t.Errorf("%s: error %v, want one naming it", field, err)
		}
	}
	// asynq's scheduler counts in whole seconds.
	cfg := DefaultConfig()
	cfg.Instance = "notifier-0"
	cfg.Notifier.RefreshInterval = 1500 * time.Millisecond
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "notifier.refresh_interval: must be whole seconds") {
		t.Errorf("refresh_interval 1.5s: %v", err)
	}
	// Turning charging and the refresh off is allowed.
	cfg = DefaultConfig()
	cfg.Instance = "notifier-0"
	cfg.Notifier.ChargeMetric, cfg.Notifier.RefreshInterval = "", 0
	if err := cfg.Validate(); err != nil {
		t.Errorf("charging and refresh off: %v", err)
	}
}
