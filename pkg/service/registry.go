package service

import (
	"time"
)

// RegistryConfig tunes the service registry and how every allot service
// registers itself in it.
type RegistryConfig struct {
	// TTL is how long a registration lives without a heartbeat. Whole
	// seconds, 2s to 1h. Default 60s.
	TTL time.Duration `yaml:"ttl"`
	// Heartbeat is how often a registered instance registers again,
	// renewing its TTL; it must be shorter than TTL. Default 30s.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// ReapInterval is how often the reaper (one registry replica at a
	// time, under a pkg/mutex lock) looks for expired instances and
	// publishes their expiry. At most TTL. Default 5s.
	ReapInterval time.Duration `yaml:"reap_interval"`
	// FindCache is how long the registry keeps the decrypted instances in
	// memory between finds; a change event seen on NATS drops it at once.
	// 0 reads Redis on every find. At most 10s. Default 1s.
	FindCache time.Duration `yaml:"find_cache"`
	// Handlers is how many request handlers serve each endpoint, in one
	// queue group. Default 4.
	Handlers int `yaml:"handlers"`
	// Keys are the secrets entries are encrypted with (AES-256-GCM under a
	// key derived from each by HKDF-SHA256): the first encrypts, every one
	// decrypts, so a key is rotated by putting the new one first and
	// dropping the old one after a TTL. Each at least 16 characters; use
	// random ones (openssl rand -base64 32). The registry refuses to start
	// without one, except under "allot dev", which makes one up. From the
	// environment: ALLOT_REGISTRY_KEYS, comma-separated.
	Keys []Secret `yaml:"keys" env:"ALLOT_REGISTRY_KEYS"`
	// SelfRegister makes every allot service register itself (name,
	// instance, HTTP address) at start and renew it every Heartbeat.
	// Default true.
	SelfRegister bool `yaml:"self_register"`
}

// MinRegistryKeyLen is the shortest registry key accepted.
const MinRegistryKeyLen = 16

// DefaultRegistry returns the registry's defaults.
func DefaultRegistry() RegistryConfig {
	return RegistryConfig{
		TTL:          60 * time.Second,
		Heartbeat:    30 * time.Second,
		ReapInterval: 5 * time.Second,
		FindCache:    time.Second,
		Handlers:     4,
		SelfRegister: true,
	}
}

func (c RegistryConfig) validate() []error {
	var errs []error
	switch {
	case c.TTL < 2*time.Second || c.TTL > time.Hour:
		errs = append(errs, fieldError("registry.ttl", "must be between 2s and 1h, got %v", c.TTL))
	case c.TTL%time.Second != 0:
		errs = append(errs, fieldError("registry.ttl", "must be whole seconds, got %v", c.TTL))
	}
	switch {
	case c.Heartbeat <= 0:
		errs = append(errs, fieldError("registry.heartbeat", "must be > 0, got %v", c.Heartbeat))
	case c.Heartbeat >= c.TTL:
		errs = append(errs, fieldError("registry.heartbeat", "must be shorter than registry.ttl (%v), got %v", c.TTL, c.Heartbeat))
	}
	if c.ReapInterval < 10*time.Millisecond || c.ReapInterval > c.TTL {
		errs = append(errs, fieldError("registry.reap_interval", "must be between 10ms and registry.ttl (%v), got %v", c.TTL, c.ReapInterval))
	}
	if c.FindCache < 0 || c.FindCache > 10*time.Second {
		errs = append(errs, fieldError("registry.find_cache", "must be between 0 and 10s, got %v", c.FindCache))
	}
	if c.Handlers < 1 || c.Handlers > 256 {
		errs = append(errs, fieldError("registry.handlers", "must be between 1 and 256, got %d", c.Handlers))
	}
	for i, k := range c.Keys {
		if len(k.Reveal()) < MinRegistryKeyLen {
			errs = append(errs, fieldError("registry.keys", "key %d must be at least %d characters (got %d)", i, MinRegistryKeyLen, len(k.Reveal())))
		}
	}
	return errs
}
