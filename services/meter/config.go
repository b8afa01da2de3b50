package meter

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/usage"
	"go.yaml.in/yaml/v3"
)

// Settings is the meter section of allot.yaml, which the meter owns.
type Settings struct {
	// Consumer is the durable consumer name all meter replicas share.
	Consumer string `yaml:"consumer"`
	// ConsumerTuning tunes the consumer of the usage stream (batch,
	// fetch_wait, ack_wait, max_ack_pending, dedup_ttl, retry_delay).
	service.ConsumerTuning `yaml:",inline"`
	// Handlers is how many grants requests are served at once, so a slow
	// one never holds up the rest, and how many subscriptions take each
	// endpoint's requests in (credit and authorize are then served in
	// batches: Pipelines).
	Handlers int `yaml:"handlers"`
	// Pipelines is how many batches of credit or authorize requests are
	// in Redis at once. Requests that arrive while they are busy gather
	// into the next batch, one pipelined round trip for all of them.
	Pipelines int `yaml:"pipelines"`
	// ExportPerUID exports every uid's grants as Prometheus series.
	// Cardinality grows with users: off by default.
	ExportPerUID bool `yaml:"export_per_uid"`
	// ExportMaxUIDs caps the uids exported when ExportPerUID is on.
	ExportMaxUIDs int `yaml:"export_max_uids"`
	// LossCheck is how often the meter checks that Redis still holds its
	// state (the epoch marker); when it does not, one replica rebuilds it
	// from the usage stream while credit and authorize answer 503. 0
	// turns the check, the marker and the rebuild off.
	LossCheck time.Duration `yaml:"loss_check"`
	// DedupIDs records the id of every applied event for dedup_ttl, so a
	// publisher's repeat of an event long after the stream's duplicate
	// window still counts once. Off, a redelivered event is caught by its
	// stream position (a record per chunk, not per event, kept until the
	// consumer's ack floor passes it) and a repeat is the duplicate
	// window's job alone: faster, and the records take next to no memory.
	DedupIDs bool `yaml:"dedup_ids"`
	// WaitReplicas, above 0, acks a chunk of usage events (and answers an
	// authorization) only once that many replicas of each Redis master
	// written to have the writes (WAIT), within WaitTimeout (0: 1s),
	// else retries: Redis replicates asynchronously, and a master that
	// fails over right after a write loses it, with the event already
	// acked. 0 (the default) does not wait: a single Redis has no replica
	// to wait for, and with fewer replicas than this up every write fails.
	WaitReplicas int           `yaml:"wait_replicas"`
	WaitTimeout  time.Duration `yaml:"wait_timeout"`
	// Ordered (the default) pins the usage consumer to one meter at a
	// time (a NATS priority group): of several replicas one applies the
	// events, in stream order, and the others stand by, taking over when
	// it stops (at once when it stops gracefully, after PinTTL when it
	// dies). Off, every replica pulls chunks at once: ingest grows with
	// replicas, but a uid's events in chunks applied side by side can be
	// applied out of stream order (a gauge's older value can end last; an
	// event of a period that ended can count in the next).
	Ordered bool `yaml:"ordered"`
	// PinTTL is how long a pinned meter may go without pulling before the
	// pin passes on (0: fetch_wait + ack_wait, the shortest that lets what
	// a dead meter held be redelivered before anything after it).
	PinTTL time.Duration `yaml:"pin_ttl"`
}

// PriorityGroup is the priority group the meters pull from when Ordered.
const PriorityGroup = "meter"

// EffectivePinTTL is PinTTL, or its default of fetch_wait + ack_wait.
func (s Settings) EffectivePinTTL() time.Duration {
	if s.PinTTL > 0 {
		return s.PinTTL
	}
	return s.FetchWait + s.AckWait
}

// DefaultSettings returns the meter section's defaults.
func DefaultSettings() Settings {
	return Settings{
		Consumer:       "meter",
		ConsumerTuning: service.DefaultConsumerTuning(),
		Handlers:       4,
		Pipelines:      2,
		DedupIDs:       true,
		Ordered:        true,
		ExportMaxUIDs:  1000,
		LossCheck:      2 * time.Second,
	}
}

// Validate checks s and returns every broken rule joined, each naming its
// field, such as "meter: meter.handlers: must be between 1 and 256";
// dedup_ttl must outlast duplicates, the stream's duplicate window.
func (s Settings) Validate(duplicates time.Duration) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("meter: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if !events.IsToken(s.Consumer) {
		add("meter.consumer", "must be a token, got %q", s.Consumer)
	}
	errs = append(errs, s.ConsumerTuning.Validate("meter", duplicates))
	if s.Handlers < 1 || s.Handlers > 256 {
		add("meter.handlers", "must be between 1 and 256, got %d", s.Handlers)
	}
	if s.Pipelines < 1 || s.Pipelines > 64 {
		add("meter.pipelines", "must be between 1 and 64, got %d", s.Pipelines)
	}
	if s.ExportMaxUIDs < 0 {
		add("meter.export_max_uids", "must be >= 0")
	}
	if s.WaitReplicas < 0 || s.WaitReplicas > 5 {
		add("meter.wait_replicas", "must be between 0 and 5, got %d", s.WaitReplicas)
	}
	if s.WaitTimeout < 0 || s.WaitTimeout > 10*time.Second {
		add("meter.wait_timeout", "must be between 0 (1s) and 10s, got %v", s.WaitTimeout)
	}
	if s.PinTTL < 0 || (s.PinTTL > 0 && s.PinTTL <= s.FetchWait) {
		add("meter.pin_ttl", "must be 0 (fetch_wait + ack_wait) or longer than fetch_wait (%v): a meter waiting on an open pull would lose its pin, got %v", s.FetchWait, s.PinTTL)
	}
	if s.LossCheck < 0 || (s.LossCheck > 0 && s.LossCheck < 100*time.Millisecond) {
		add("meter.loss_check", "must be 0 (off) or at least 100ms, got %v", s.LossCheck)
	}
	return errors.Join(errs...)
}

// Config is what the meter runs with: the runtime's configuration
// (connections, subjects, streams), the metrics and grants it applies
// (package usage), its own section, and the names of the rate-limited
// services, whose ratelimit_<service> grants meter.grants may set.
type Config struct {
	service.Config `yaml:"-"`
	// Usage is the metrics and grants sections.
	Usage usage.Catalog `yaml:",inline"`
	// Meter is the meter's own section.
	Meter Settings `yaml:"meter"`
	// RateLimited names the rate-limited services: the keys of
	// ratelimit.services, a section the rate limiter owns and checks.
	RateLimited []string `yaml:"-"`
}

// DefaultConfig returns the runtime's defaults with the meter's.
func DefaultConfig() Config {
	return Config{Config: service.Default(), Usage: usage.Default(), Meter: DefaultSettings()}
}

// LoadConfig reads what the meter reads of the file at path (none: the
// defaults) and of the environment, over the defaults, beside rt, the
// runtime's configuration loaded from the same file; then it checks the
// whole.
func LoadConfig(rt service.Config, path string, getenv func(string) string) (Config, error) {
	// The rate limiter's section, for the names of its services only.
	var rl struct {
		Services map[string]yaml.Node `yaml:"services"`
		Rest     map[string]yaml.Node `yaml:",inline"`
	}
	if err := service.LoadSection(&rl, path, "ratelimit", getenv); err != nil {
		return Config{}, err
	}
	cfg := DefaultConfig()
	cfg.Config, cfg.RateLimited = rt, slices.Sorted(maps.Keys(rl.Services))
	return service.LoadChecked(cfg, path, getenv)
}

// Validate checks the runtime's configuration, the metrics and grants and
// the meter section, and returns every broken rule joined.
func (c Config) Validate() error {
	return errors.Join(c.Config.Validate(), c.Usage.Validate(), c.Meter.Validate(c.Streams.Duplicates))
}

// Section is what the meter reads of allot.yaml besides the runtime's
// sections (metrics, grants, meter), as service.Run checks it before
// starting anything and prints it with -validate.
func Section() service.OwnedSection { return service.SectionOf(LoadConfig) }
