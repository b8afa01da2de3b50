package service

import (
	"errors"
	"time"

	"go.yaml.in/yaml/v3"
)

// RegistrationConfig is how every allot service registers itself in the
// service registry: the part of the registry section that is not the
// registry's alone. The registry service owns the section and embeds
// this in its own settings (services/registry); the runtime reads these
// fields of the same section (Config.Registry) for the self-registration
// of every service.
type RegistrationConfig struct {
	// TTL is how long a registration lives without a heartbeat. Whole
	// seconds, 2s to 1h. Default 60s.
	TTL time.Duration `yaml:"ttl"`
	// Heartbeat is how often a registered instance registers again,
	// renewing its TTL; it must be shorter than TTL. Default 30s.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// SelfRegister makes every allot service register itself (name,
	// instance, HTTP address) at start and renew it every Heartbeat.
	// Default true.
	SelfRegister bool `yaml:"self_register"`
}

// DefaultRegistration returns the registration defaults.
func DefaultRegistration() RegistrationConfig {
	return RegistrationConfig{TTL: 60 * time.Second, Heartbeat: 30 * time.Second, SelfRegister: true}
}

// Validate checks c and returns every broken rule joined, each naming its
// field under registry, such as "service: registry.ttl: must be between
// 2s and 1h".
func (c RegistrationConfig) Validate() error { return errors.Join(c.validate()...) }

func (c RegistrationConfig) validate() []error {
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
	return errs
}

// RegistryView is the registry section as the runtime reads it: the
// RegistrationConfig, and nothing of the registry's own fields (its keys,
// its reaper), which stand in the file unread here and are never printed.
// The registry service decodes and checks the whole section.
type RegistryView struct {
	RegistrationConfig
}

// UnmarshalYAML reads the registration fields of the section.
func (v *RegistryView) UnmarshalYAML(n *yaml.Node) error {
	w := struct {
		RegistrationConfig `yaml:",inline"`
		Rest               map[string]yaml.Node `yaml:",inline"` // the registry's own
	}{RegistrationConfig: v.RegistrationConfig}
	if err := n.Decode(&w); err != nil {
		return err
	}
	v.RegistrationConfig = w.RegistrationConfig
	return nil
}

// MarshalYAML prints the registration fields.
func (v RegistryView) MarshalYAML() (any, error) { return v.RegistrationConfig, nil }
