package auth

import (
	_ "embed"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/auth/internal/policy"
	"github.com/nats-io/nkeys"
	"go.yaml.in/yaml/v3"
)

// Config is the auth section of allot.yaml, which this service owns.
type Config struct {
	// IssuerSeed is the account nkey seed users are signed with; nats-server
	// is configured with its public key (ServerConfig.Issuer).
	IssuerSeed service.Secret `yaml:"issuer_seed" env:"ALLOT_AUTH_ISSUER_SEED"`
	// SysUser and SysPassword are the service's system-account user, from
	// which it disconnects the clients of a changed key. The service's own
	// connection (nats.user/password) is the callout's bypass user.
	SysUser     string         `yaml:"sys_user" env:"ALLOT_AUTH_SYS_USER"`
	SysPassword service.Secret `yaml:"sys_password" env:"ALLOT_AUTH_SYS_PASSWORD"`
	// Backend chooses where keys live, by name, with its own options.
	Backend BackendConfig `yaml:"backend"`
	// Validators are the checks run on a connection, in order, by name
	// (Validators lists them); key_format must be first.
	Validators []string `yaml:"validators"`
	// Roles are what keys may do, by name; a file's roles are added to the
	// shipped ones (app, reader, operator, admin, service), replacing one
	// of the same name.
	Roles map[string]Role `yaml:"roles"`
	// KeyTTL is how long a new key lasts when its creator names no ttl;
	// MaxKeyTTL bounds any (0: no bound).
	KeyTTL    time.Duration `yaml:"key_ttl"`
	MaxKeyTTL time.Duration `yaml:"max_key_ttl"`
	// StaticKeys are keys the service makes sure exist at start, as
	// "role=key" items (ALLOT_AUTH_STATIC_KEYS, comma-separated): the
	// services' own keys and the first admin key, from Secrets.
	StaticKeys []service.Secret `yaml:"static_keys" env:"ALLOT_AUTH_STATIC_KEYS"`
	// Handlers is how many callout requests are decided at once.
	Handlers int `yaml:"handlers"`
}

// BackendConfig names a key backend and carries its options.
type BackendConfig struct {
	Name    string    `yaml:"name"`
	Options yaml.Node `yaml:"options"`
}

// Role is what the keys of one role may do.
type Role struct {
	// Grant is the role's requirement tree (package policy).
	Grant policy.Requirement `yaml:"grant"`
	// Skip names validators that do not run for this role's keys.
	Skip []string `yaml:"skip_validators"`
	// Networks, for source_network: the client's address must be in one
	// (CIDRs); none means any.
	Networks []string `yaml:"networks"`
	// ClientName, for client_name: a regular expression the client's
	// connection name must match; empty means any.
	ClientName string `yaml:"client_name"`
	// Description says what the role is for, in keys list and docs.
	Description string `yaml:"description"`

	networks []netip.Prefix
	name     *regexp.Regexp
}

//go:embed roles.yaml
var shippedRoles []byte

// DefaultConfig is the auth section with nothing set: the shipped roles,
// every validator, the redis backend, keys of 30 days.
func DefaultConfig() (Config, error) {
	var shipped struct {
		Roles map[string]Role `yaml:"roles"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(shippedRoles)))
	dec.KnownFields(true)
	if err := dec.Decode(&shipped); err != nil {
		return Config{}, fmt.Errorf("auth: the shipped roles: %w", err)
	}
	return Config{
		SysUser:    "allot-sys",
		Backend:    BackendConfig{Name: "redis"},
		Validators: slices.Clone(validatorOrder),
		Roles:      shipped.Roles,
		KeyTTL:     720 * time.Hour,
		Handlers:   4,
	}, nil
}

// LoadConfig reads the auth section of the file at path (none: only the
// defaults) over the defaults, then the environment, and checks it.
func LoadConfig(path string, getenv func(string) string) (Config, error) {
	cfg, err := DefaultConfig()
	if err != nil {
		return Config{}, err
	}
	return LoadConfigOver(cfg, path, getenv)
}

// LoadConfigOver is LoadConfig over other defaults than DefaultConfig
// (allot dev's, with an issuer made up for the run).
func LoadConfigOver(cfg Config, path string, getenv func(string) string) (Config, error) {
	shipped := cfg.Roles
	cfg.Roles = nil
	if err := service.LoadSection(&cfg, path, "auth", getenv); err != nil {
		return Config{}, err
	}
	for name, r := range shipped {
		if _, mine := cfg.Roles[name]; !mine {
			if cfg.Roles == nil {
				cfg.Roles = map[string]Role{}
			}
			cfg.Roles[name] = r
		}
	}
	if err := cfg.Check(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Check reports every broken rule of c, each naming its field; it also
// prepares each role's networks and name pattern.
func (c *Config) Check() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("auth: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.IssuerSeed == "" {
		add("issuer_seed", "is required (ALLOT_AUTH_ISSUER_SEED; make one with `allot keys issuer`)")
	} else if kp, err := nkeys.FromSeed([]byte(c.IssuerSeed.Reveal())); err != nil {
		add("issuer_seed", "is not an nkey seed")
	} else if pub, _ := kp.PublicKey(); !nkeys.IsValidPublicAccountKey(pub) {
		add("issuer_seed", "must be an account seed (starting SA)")
	}
	if c.SysUser == "" || c.SysPassword == "" {
		add("sys_user", "the system-account user and password are required (ALLOT_AUTH_SYS_USER, ALLOT_AUTH_SYS_PASSWORD)")
	}
	if c.Backend.Name == "" {
		add("backend.name", "is required (redis or file)")
	}
	if len(c.Validators) == 0 || c.Validators[0] != "key_format" {
		add("validators", "must start with key_format (a key is read before anything else is checked)")
	}
	for i, v := range c.Validators {
		if !slices.Contains(validatorOrder, v) {
			add(fmt.Sprintf("validators[%d]", i), "unknown validator %q (known: %s)", v, strings.Join(validatorOrder, ", "))
		}
	}
	if c.KeyTTL <= 0 {
		add("key_ttl", "must be > 0")
	}
	if c.MaxKeyTTL < 0 || (c.MaxKeyTTL > 0 && c.KeyTTL > c.MaxKeyTTL) {
		add("max_key_ttl", "must be 0 (no bound) or at least key_ttl")
	}
	if c.Handlers < 1 {
		add("handlers", "must be >= 1")
	}
	if len(c.Roles) == 0 {
		add("roles", "at least one role is needed")
	}
	names := make([]string, 0, len(c.Roles))
	for name := range c.Roles {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		r := c.Roles[name]
		field := "roles." + name
		if !roleName.MatchString(name) {
			add(field, "a role name is 1-32 of a-z 0-9 _ -")
		}
		if err := r.Grant.Check(); err != nil {
			add(field+".grant", "%v", err)
		} else if _, err := policy.Compile(r.Grant, []string{"*"}); err != nil {
			add(field+".grant", "%v", err)
		}
		for i, s := range r.Skip {
			switch {
			case s == "key_format":
				add(fmt.Sprintf("%s.skip_validators[%d]", field, i), "key_format cannot be skipped")
			case !slices.Contains(validatorOrder, s):
				add(fmt.Sprintf("%s.skip_validators[%d]", field, i), "unknown validator %q", s)
			}
		}
		r.networks = nil
		for i, n := range r.Networks {
			p, err := netip.ParsePrefix(n)
			if err != nil {
				add(fmt.Sprintf("%s.networks[%d]", field, i), "%q is not a CIDR such as 10.0.0.0/8", n)
				continue
			}
			r.networks = append(r.networks, p.Masked())
		}
		r.name = nil
		if r.ClientName != "" {
			re, err := regexp.Compile(r.ClientName)
			if err != nil {
				add(field+".client_name", "%v", err)
			} else {
				r.name = re
			}
		}
		c.Roles[name] = r
	}
	for i, k := range c.StaticKeys {
		if _, _, err := parseStaticKey(k.Reveal()); err != nil {
			add(fmt.Sprintf("static_keys[%d]", i), "%v", err)
		}
	}
	return errors.Join(errs...)
}

var roleName = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)

// Issuer returns the issuer key pair of c (Check has accepted the seed).
func (c Config) Issuer() (nkeys.KeyPair, error) {
	return nkeys.FromSeed([]byte(c.IssuerSeed.Reveal()))
}

// Section is the auth section as service.Run checks it before starting
// anything and prints it with -validate, secrets masked.
func Section() service.OwnedSection {
	return service.OwnedSection{Load: func(_ service.Config, path string, getenv func(string) string) (string, error) {
		cfg, err := LoadConfig(path, getenv)
		if err != nil {
			return "", err
		}
		b, err := yaml.Marshal(map[string]Config{"auth": cfg})
		if err != nil {
			return "", fmt.Errorf("auth: cannot print the config: %w", err)
		}
		return string(b), nil
	}}
}
