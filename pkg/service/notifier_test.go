package service

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNotifierSection(t *testing.T) {
	cfg := Default()
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
	cfg, err := Load(path, func(k string) string {
		return map[string]string{"ALLOT_SMTP_PASSWORD": "pw", "ALLOT_NOTIFIER_TOKEN_SECRETS": secret + ",," + strings.Repeat("t", 32)}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := cfg.Notifier; got.SMTP.Port != 465 || got.SMTP.Password.Reveal() != "pw" || len(got.TokenSecrets) != 2 || got.Queues["mail"] != 2 || len(got.Queues) != 5 {
		t.Errorf("loaded = %+v", got)
	}
	// A file's queues are added to the defaults, as metrics and grants are.
	if strings.Contains(cfg.Redacted(), secret) || strings.Contains(cfg.Redacted(), "password: pw") {
		t.Errorf("Redacted shows a secret:\n%s", cfg.Redacted())
	}
}

func TestNotifierSectionBadValues(t *testing.T) {
	for field, mutate := range map[string]func(*NotifierConfig){
		"notifier.concurrency": func(c *NotifierConfig) { c.Concurrency = 0 },
		"notifier.queues": func(c *NotifierConfig) {
			c.Queues = map[string]int{"Bad Name": 1, "critical": 1, "default": 1, "low": 1}
		},
		"notifier.usage_queue":      func(c *NotifierConfig) { c.UsageQueue = "nope" },
		"notifier.max_retry":        func(c *NotifierConfig) { c.MaxRetry = -1 },
		"notifier.retry_max":        func(c *NotifierConfig) { c.RetryMax = time.Second },
		"notifier.poll":             func(c *NotifierConfig) { c.Poll = time.Millisecond },
		"notifier.retention":        func(c *NotifierConfig) { c.Retention = time.Second },
		"notifier.durable":          func(c *NotifierConfig) { c.Durable = "a.b" },
		"notifier.token_secrets":    func(c *NotifierConfig) { c.TokenSecrets = []Secret{"short"} },
		"notifier.token_ttl":        func(c *NotifierConfig) { c.TokenTTL = 0 },
		"notifier.confirm_url":      func(c *NotifierConfig) { c.ConfirmURL = "ftp://x/confirm" },
		"notifier.charge_metric":    func(c *NotifierConfig) { c.ChargeMetric = "api_calls_total" },
		"notifier.refresh_interval": func(c *NotifierConfig) { c.RefreshInterval = time.Millisecond },
		"notifier.smtp.port":        func(c *NotifierConfig) { c.SMTP.Port = 70000 },
		"notifier.smtp.tls":         func(c *NotifierConfig) { c.SMTP.TLS = "ssl" },
		"notifier.smtp.auth":        func(c *NotifierConfig) { c.SMTP.Auth = "xoauth" },
		"notifier.smtp.username":    func(c *NotifierConfig) { c.SMTP.Auth = "plain" },
		"notifier.smtp.password":    func(c *NotifierConfig) { c.SMTP.Username = "allot" },
		"notifier.smtp.from":        func(c *NotifierConfig) { c.SMTP.From = "Allot <noreply@example.com>" },
		"notifier.smtp.from_name":   func(c *NotifierConfig) { c.SMTP.FromName = "a\r\nBcc: x" },
		"notifier.smtp.host":        func(c *NotifierConfig) { c.SMTP.Host = "" },
	} {
		cfg := Default()
		cfg.Notifier.Queues = map[string]int{"critical": 6, "default": 3, "low": 1}
		mutate(&cfg.Notifier)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), field+":") {
			t.Errorf("%s: error %v, want one naming it", field, err)
		}
	}
	// Turning charging and the refresh off is allowed.
	cfg := Default()
	cfg.Notifier.ChargeMetric, cfg.Notifier.RefreshInterval = "", 0
	if err := cfg.Validate(); err != nil {
		t.Errorf("charging and refresh off: %v", err)
	}
}
