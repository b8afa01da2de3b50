package auth

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"

	"github.com/allot/allot/services/auth/internal/apikey"
)

// Conn is what the validators see of a connection: what it presented,
// and once its key is read, the key's record and role.
type Conn struct {
	Request *jwt.AuthorizationRequest
	Key     apikey.Key
	Record  Record
	Role    Role
	Now     time.Time
}

// Validator checks one thing of a connection; a refusal is a *Refusal.
type Validator func(c *Conn) error

// Validators are the connection checks by name (armasec's plugins): config
// lists the ones that run, in order, and a role may skip some.
// key_format runs before the key is looked up and sets Conn.Key; the
// others run after, with the record and role.
type Validators map[string]Validator

// validatorOrder is the shipped validators, in the order they run by
// default.
var validatorOrder = []string{"key_format", "expiry", "revocation", "source_network", "client_name"}

// DefaultValidators returns the validators allot ships.
func DefaultValidators() Validators {
	return Validators{
		"key_format":     keyFormat,
		"expiry":         expiry,
		"revocation":     revocation,
		"source_network": sourceNetwork,
		"client_name":    clientName,
	}
}

// keyFormat reads the key from the CONNECT: the token, or the key id as
// user and the secret as password.
func keyFormat(c *Conn) error {
	o := c.Request.ConnectOptions
	var err error
	switch {
	case o.Token != "":
		c.Key, err = apikey.Parse(o.Token)
	case o.Username != "" || o.Password != "":
		c.Key, err = apikey.Parse(o.Username + "." + o.Password)
	default:
		return Refuse("no_key", "the client presented no key (connect with the key as token, or the key id as user and the secret as password)")
	}
	if err != nil {
		return Refuse("malformed_key", "%v", err)
	}
	return nil
}

func expiry(c *Conn) error {
	if !c.Record.Expires.IsZero() && !c.Now.Before(c.Record.Expires) {
		return Refuse("expired", "key %s expired at %s", c.Record.ID, c.Record.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}

func revocation(c *Conn) error {
	if !c.Record.Revoked.IsZero() {
		return Refuse("revoked", "key %s was revoked at %s", c.Record.ID, c.Record.Revoked.UTC().Format(time.RFC3339))
	}
	return nil
}

// sourceNetwork holds the client's address to its role's networks.
func sourceNetwork(c *Conn) error {
	if len(c.Role.networks) == 0 {
		return nil
	}
	addr, err := netip.ParseAddr(strings.Trim(c.Request.ClientInformation.Host, "[]"))
	if err != nil {
		return Refuse("source_network", "key %s: the client's address %q is not an IP address", c.Record.ID, c.Request.ClientInformation.Host)
	}
	addr = addr.Unmap()
	if !slices.ContainsFunc(c.Role.networks, func(p netip.Prefix) bool { return p.Contains(addr) }) {
		return Refuse("source_network", "key %s (role %s) may not connect from %s", c.Record.ID, c.Record.Role, addr)
	}
	return nil
}

// clientName holds the connection's name to its role's pattern.
func clientName(c *Conn) error {
	if c.Role.name == nil {
		return nil
	}
	name := c.Request.ConnectOptions.Name
	if !c.Role.name.MatchString(name) {
		return Refuse("client_name", "key %s (role %s): the connection name %q does not match %s", c.Record.ID, c.Record.Role, name, c.Role.ClientName)
	}
	return nil
}

// chain is the validators of a config in order, resolved.
type chain struct {
	names []string
	fns   []Validator
}

func newChain(names []string, all Validators) (chain, error) {
	var c chain
	for _, n := range names {
		f, ok := all[n]
		if !ok {
			return chain{}, fmt.Errorf("auth: validator %q is not registered", n)
		}
		c.names, c.fns = append(c.names, n), append(c.fns, f)
	}
	return c, nil
}
