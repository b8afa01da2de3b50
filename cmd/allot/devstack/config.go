package devstack

import (
	"errors"
	"fmt"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/usage"
	"github.com/allot/allot/services/meter"
	"github.com/allot/allot/services/notifier"
	"github.com/allot/allot/services/ratelimit"
	"github.com/allot/allot/services/registry"
	"go.yaml.in/yaml/v3"
)

// Sections are the sections of allot.yaml the services own, as one
// process running all of them reads its one file: the metrics and grants
// and each service's own section. The runtime's sections are Options.Config.
type Sections struct {
	// Usage is the metrics and grants sections.
	Usage usage.Catalog `yaml:",inline"`
	// Meter is the meter section.
	Meter meter.Settings `yaml:"meter"`
	// RateLimit is the ratelimit section.
	RateLimit ratelimit.Settings `yaml:"ratelimit"`
	// Registry is the registry section.
	Registry registry.Settings `yaml:"registry"`
	// Notifier is the notifier section.
	Notifier notifier.Settings `yaml:"notifier"`
}

// DefaultSections returns every service's defaults.
func DefaultSections() Sections {
	return Sections{Usage: usage.Default(), Meter: meter.DefaultSettings(), RateLimit: ratelimit.DefaultSettings(),
		Registry: registry.DefaultSettings(), Notifier: notifier.DefaultSettings()}
}

// LoadSections reads the services' sections of the file at path (none:
// the defaults) and of the environment over the defaults, and checks each
// as its service does, beside rt, the runtime's configuration from the
// same file.
func LoadSections(rt service.Config, path string, getenv func(string) string) (Sections, error) {
	s := DefaultSections()
	if err := service.LoadSections(&s, path, getenv); err != nil {
		return Sections{}, err
	}
	if err := s.Validate(rt); err != nil {
		return Sections{}, err
	}
	return s, nil
}

// Validate checks rt, then every section as its service would run with
// it, and returns every broken rule joined.
func (s Sections) Validate(rt service.Config) error {
	if err := rt.Validate(); err != nil {
		return err
	}
	return errors.Join(s.meter(rt).Validate(), s.ratelimit(rt).Validate(), s.registry(rt).Validate(), s.notifier(rt).Validate())
}

// Redacted returns s as YAML with every secret masked, for
// service.Config.Redacted to print with the runtime's sections.
func (s Sections) Redacted() (string, error) {
	b, err := yaml.Marshal(s)
	if err != nil {
		return "", fmt.Errorf("devstack: cannot print the config: %w", err)
	}
	return string(b), nil
}

// meter is the meter's configuration: rt with the sections it reads.
func (s Sections) meter(rt service.Config) meter.Config {
	return meter.Config{Config: rt, Usage: s.Usage, Meter: s.Meter, RateLimited: s.RateLimit.ServiceNames()}
}

// ratelimit is the rate limiter's configuration: rt with the sections it
// reads.
func (s Sections) ratelimit(rt service.Config) ratelimit.Config {
	return ratelimit.Config{Config: rt, Usage: s.Usage, RateLimit: s.RateLimit}
}

// registry is the registry's configuration: rt with its section.
func (s Sections) registry(rt service.Config) registry.Config {
	return registry.Config{Config: rt, Registry: s.Registry}
}

// notifier is the notifier's configuration: rt with the sections it
// reads.
func (s Sections) notifier(rt service.Config) notifier.Config {
	return notifier.Config{Config: rt, Usage: s.Usage, Notifier: s.Notifier}
}
