package mail

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"strings"
	"time"
)

// TLS modes of Config.TLS.
const (
	TLSStartTLS      = "starttls"      // STARTTLS is mandatory; the default
	TLSOpportunistic = "opportunistic" // STARTTLS if the server offers it
	TLSImplicit      = "tls"           // TLS from the first byte, as on port 465
	TLSNone          = "none"          // plain text; for a loopback or dev server
)

// Auth mechanisms of Config.Auth.
const (
	AuthNone    = "none"
	AuthPlain   = "plain"
	AuthLogin   = "login"
	AuthCRAMMD5 = "cram-md5"
)

// DefaultTimeout bounds one Send when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// Config says how to reach the SMTP server and whom mail comes from.
type Config struct {
	Host string
	Port int
	// TLS is "starttls" (empty means this), "opportunistic", "tls" or
	// "none".
	TLS string
	// Auth is "none", "plain", "login" or "cram-md5"; empty means "plain"
	// when Username is set and "none" otherwise.
	Auth     string
	Username string
	Password string
	// From is the bare address mail comes from, such as
	// no-reply@example.com; FromName is its optional display name.
	From     string
	FromName string
	// HELO is the name the client gives in EHLO; empty is the host name.
	HELO string
	// Timeout bounds one Send as a whole, from dialing to QUIT; zero is
	// DefaultTimeout.
	Timeout time.Duration
	// InsecureSkipVerify accepts any server certificate. For tests only.
	InsecureSkipVerify bool
	// RootCAs verifies the server certificate; nil is the system pool.
	RootCAs *x509.CertPool
}

// tlsMode is c.TLS with the default applied.
func (c Config) tlsMode() string {
	if c.TLS == "" {
		return TLSStartTLS
	}
	return c.TLS
}

// authMechanism is c.Auth with the default applied.
func (c Config) authMechanism() string {
	switch {
	case c.Auth != "":
		return c.Auth
	case c.Username != "":
		return AuthPlain
	default:
		return AuthNone
	}
}

func (c Config) timeout() time.Duration {
	if c.Timeout == 0 {
		return DefaultTimeout
	}
	return c.Timeout
}

// Validate checks every field and returns all broken rules joined, each
// naming its field, such as "mail: smtp.port: must be 1..65535 (got 0)".
func (c Config) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("mail: smtp.%s: %s", field, fmt.Sprintf(format, args...)))
	}

	switch {
	case c.Host == "":
		add("host", "must not be empty")
	case strings.ContainsAny(c.Host, " \t\r\n/:@") && net.ParseIP(c.Host) == nil:
		add("host", "%q is not a host name or IP address", c.Host)
	}
	if c.Port < 1 || c.Port > 65535 {
		add("port", "must be 1..65535 (got %d)", c.Port)
	}

	mode := c.tlsMode()
	switch mode {
	case TLSStartTLS, TLSOpportunistic, TLSImplicit, TLSNone:
	default:
		add("tls", "must be starttls, opportunistic, tls or none (got %q)", c.TLS)
	}

	mech := c.authMechanism()
	switch mech {
	case AuthNone:
	case AuthPlain, AuthLogin, AuthCRAMMD5:
		if c.Username == "" {
			add("auth", "%s needs smtp.username", mech)
		}
		if mode == TLSNone && !isLoopback(c.Host) {
			add("tls", "none would send the password in clear to %s; it is only for a loopback host", c.Host)
		}
	default:
		add("auth", "must be none, plain, login or cram-md5 (got %q)", c.Auth)
	}
	if c.Password != "" && c.Username == "" {
		add("password", "is set but smtp.username is empty")
	}
	if hasCRLF(c.Username) || hasCRLF(c.Password) {
		add("username", "username and password must not contain CR or LF")
	}

	if c.From == "" {
		add("from", "must not be empty")
	} else if _, err := parseBareAddress(c.From); err != nil {
		add("from", "%q is not an email address", c.From)
	}
	if hasCRLF(c.FromName) {
		add("from_name", "must not contain CR or LF")
	}
	if strings.ContainsAny(c.HELO, " \t\r\n") {
		add("helo", "%q must be one word, a host name", c.HELO)
	}
	if c.Timeout < 0 {
		add("timeout", "must not be negative (got %s)", c.Timeout)
	}
	return errors.Join(errs...)
}

// isLoopback reports whether host names this machine in one of the
// three ways go-mail lets PLAIN and LOGIN send a password without TLS.
func isLoopback(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

func hasCRLF(s string) bool { return strings.ContainsAny(s, "\r\n") }

// parseBareAddress accepts only a bare address such as ada@example.com:
// no display name, no angle brackets, no comments, nothing around it.
func parseBareAddress(s string) (string, error) {
	if hasCRLF(s) {
		return "", errors.New("contains CR or LF")
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", err
	}
	if a.Name != "" || a.Address != s {
		return "", errors.New("is not a bare address")
	}
	return a.Address, nil
}
