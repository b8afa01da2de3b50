package auth

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nkeys"
)

// GlobalAccount is the account every allot client is placed in: the
// server's default account, where JetStream and allot's subjects live.
const GlobalAccount = "$G"

// ServerConfig is the part of a nats-server configuration that hands
// every connection to the auth service (auth callout, NATS 2.10+). The
// auth service itself connects twice without the callout: as AuthUser in
// the global account, where it answers $SYS.REQ.USER.AUTH, and as SysUser
// in the system account, from which it disconnects the clients of a
// revoked or changed key.
type ServerConfig struct {
	// Issuer is the public account nkey the auth service signs users with
	// (its seed is the service's auth.issuer_seed).
	Issuer                 string
	AuthUser, AuthPassword string
	SysUser, SysPassword   string
}

// Check refuses a config nats-server would refuse, or that would leave
// the callout open.
func (c ServerConfig) Check() error {
	if !nkeys.IsValidPublicAccountKey(c.Issuer) {
		return fmt.Errorf("auth: nats config: issuer %q is not a public account nkey (it starts with A)", c.Issuer)
	}
	for name, v := range map[string]string{"auth user": c.AuthUser, "auth password": c.AuthPassword, "system user": c.SysUser, "system password": c.SysPassword} {
		if v == "" {
			return fmt.Errorf("auth: nats config: the %s is empty", name)
		}
	}
	if c.AuthUser == c.SysUser {
		return fmt.Errorf("auth: nats config: the auth user and the system user must differ (both %q)", c.AuthUser)
	}
	return nil
}

// Render returns the configuration blocks (accounts, system_account,
// authorization) to put in a nats-server configuration file beside its
// listen and jetstream settings.
func (c ServerConfig) Render() (string, error) {
	if err := c.Check(); err != nil {
		return "", err
	}
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "# allot: every client connection is authorized by the allot auth service.\n")
	fmt.Fprintf(&b, "accounts {\n  SYS {\n    users: [ { user: %s, password: %s } ]\n  }\n}\n", q(c.SysUser), q(c.SysPassword))
	fmt.Fprintf(&b, "system_account: SYS\n")
	fmt.Fprintf(&b, "authorization {\n  users: [ { user: %s, password: %s } ]\n", q(c.AuthUser), q(c.AuthPassword))
	fmt.Fprintf(&b, "  auth_callout {\n    issuer: %s\n    auth_users: [ %s, %s ]\n  }\n}\n", q(c.Issuer), q(c.AuthUser), q(c.SysUser))
	return b.String(), nil
}
