package registry

import (
	"errors"
	"fmt"
	"time"

	"github.com/allot/allot/pkg/service"
)

// MinKeyLen is the shortest registry key accepted.
const MinKeyLen = 16

// Settings is the registry section of allot.yaml, which the registry
// owns. Its registration fields (ttl, heartbeat, self_register) are read
// by every service too, for its own registration (service.Config.Registry).
type Settings struct {
	// RegistrationConfig is how long a registration lives and how often
	// services renew theirs.
	service.RegistrationConfig `yaml:",inline"`
	// ReapInterval is how often the reaper (one registry replica at a
	// time, under a pkg/mutex lock) looks for expired instances and
	// publishes their expiry. At most TTL. Default 5s.
	ReapInterval time.Duration `yaml:"reap_interval"`
	// FindCache is how long the registry keeps the decrypted instances in
	// memory between finds; a change event seen on NATS drops it at once.
	// 0 reads Redis on every find. At most 10s. Default 1s.
	FindCache time.Duration `yaml:"find_cache"`
	// Handlers is how many requests of each endpoint are served at once.
	// Default 4.
	Handlers int `yaml:"handlers"`
	// Keys are the secrets entries are encrypted with (AES-256-GCM under a
	// key derived from each by HKDF-SHA256): the first encrypts, every one
	// decrypts, so a key is rotated by putting the new one first and
	// dropping the old one after a TTL. Each at least 16 characters; use
	// random ones (openssl rand -base64 32). The registry refuses to start
	// without one, except under "allot dev", which makes one up. From the
	// environment: ALLOT_REGISTRY_KEYS, comma-separated.
	Keys []service.Secret `yaml:"keys" env:"ALLOT_REGISTRY_KEYS"`
}

// DefaultSettings returns the registry section's defaults.
func DefaultSettings() Settings {
	return Settings{
		RegistrationConfig: service.DefaultRegistration(),
		ReapInterval:       5 * time.Second,
		FindCache:          time.Second,
		Handlers:           4,
	}
}

// Validate checks s, its registration fields included, and returns every
// broken rule joined, each naming its field, such as "registry:
// registry.handlers: must be between 1 and 256".
func (s Settings) Validate() error {
	return errors.Join(s.RegistrationConfig.Validate(), s.validateOwn())
}

// validateOwn checks the fields only the registry reads.
func (s Settings) validateOwn() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("registry: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if s.ReapInterval < 10*time.Millisecond || s.ReapInterval > s.TTL {
		add("registry.reap_interval", "must be between 10ms and registry.ttl (%v), got %v", s.TTL, s.ReapInterval)
	}
	if s.FindCache < 0 || s.FindCache > 10*time.Second {
		add("registry.find_cache", "must be between 0 and 10s, got %v", s.FindCache)
	}
	if s.Handlers < 1 || s.Handlers > 256 {
		add("registry.handlers", "must be between 1 and 256, got %d", s.Handlers)
	}
	for i, k := range s.Keys {
		if len(k.Reveal()) < MinKeyLen {
			add("registry.keys", "key %d must be at least %d characters (got %d)", i, MinKeyLen, len(k.Reveal()))
		}
	}
	return errors.Join(errs...)
}

// Config is what the registry runs with: the runtime's configuration
// (connections, subjects) and its own section.
type Config struct {
	service.Config `yaml:"-"`
	// Registry is the registry's own section. It shadows the runtime's
	// view of the same section (Config.Config.Registry), read from the same
	// file: the registry serves with this one.
	Registry Settings `yaml:"registry"`
}

// DefaultConfig returns the runtime's defaults with the registry's.
func DefaultConfig() Config {
	return Config{Config: service.Default(), Registry: DefaultSettings()}
}

// LoadConfig reads the registry section of the file at path (none: the
// defaults) and of the environment, over the defaults, beside rt, the
// runtime's configuration loaded from the same file; then it checks the
// whole.
func LoadConfig(rt service.Config, path string, getenv func(string) string) (Config, error) {
	cfg := DefaultConfig()
	cfg.Config = rt
	return service.LoadChecked(cfg, path, getenv)
}

// Validate checks the runtime's configuration and the registry section,
// and returns every broken rule joined. The registration fields are
// checked once, as the registry's section has them.
func (c Config) Validate() error {
	rt := c.Config
	rt.Registry.RegistrationConfig = c.Registry.RegistrationConfig
	return errors.Join(rt.Validate(), c.Registry.validateOwn())
}

// Section is the registry section as service.Run checks it before
// starting anything and prints it with -validate, keys masked.
func Section() service.OwnedSection { return service.SectionOf(LoadConfig) }
