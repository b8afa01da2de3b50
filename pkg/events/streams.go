package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfig describes the two JetStream streams allot needs.
type StreamConfig struct {
	// Usage is the name of the usage stream (default USAGE).
	Usage string `yaml:"usage"`
	// Dead is the name of the dead-letter stream (default USAGE_DEAD).
	Dead string `yaml:"dead"`
	// Notify is the name of the stream of notices for the notifier
	// (default NOTIFY): threshold notices and confirmation requests.
	Notify string `yaml:"notify"`
	// NotifyMaxAge is how long notices are kept (default 7 days).
	NotifyMaxAge time.Duration `yaml:"notify_max_age"`
	// MaxAge is how long usage events are kept (default 35 days, so the
	// longest grant period, a month, can be replayed).
	MaxAge time.Duration `yaml:"max_age"`
	// DeadMaxAge is how long dead letters are kept (default 35 days).
	DeadMaxAge time.Duration `yaml:"dead_max_age"`
	// Duplicates is the window in which the server drops a repeated
	// Nats-Msg-Id (default 2 minutes).
	Duplicates time.Duration `yaml:"duplicates"`
	// Replicas is the number of stream replicas (1 on a single server, 3
	// on a cluster).
	Replicas int `yaml:"replicas"`
	// MaxBytes caps the usage stream's size (default 8 GiB, about 20
	// million events of 400 bytes as stored); -1 is unlimited. A full
	// stream refuses new events (DiscardNew): the publisher gets an error
	// ("maximum bytes exceeded"), and nothing stored is deleted early,
	// since the meter's period state and a rebuild depend on the events.
	MaxBytes int64 `yaml:"max_bytes"`
	// DeadMaxBytes caps the dead-letter stream (default 1 GiB); -1 is
	// unlimited. A full one refuses new dead letters: the consumer then
	// keeps the refused message in its stream and retries, loudly.
	DeadMaxBytes int64 `yaml:"dead_max_bytes"`
	// NotifyMaxBytes caps the notice stream (default 1 GiB); -1 is
	// unlimited. A full one refuses new notices: the meter keeps its
	// notices pending in Redis and retries; an app asking for a
	// confirmation gets the error.
	NotifyMaxBytes int64 `yaml:"notify_max_bytes"`
	// Memory keeps the streams in memory instead of on disk (tests).
	Memory bool `yaml:"memory"`
	// Partitions splits the usage stream's subjects by uid (default 0:
	// not partitioned). With P of 2 to MaxPartitions the stream stores
	// an event published on <usage>.<uid> as <usage>.<p>.<uid>, p a hash
	// of the uid below P (the server's subject transform), so every
	// event of a uid is in one partition, and the meter runs one durable
	// consumer per partition, each applied by one replica at a time.
	// It is fixed once the stream holds events: EnsureStreams refuses to
	// change it then.
	Partitions int `yaml:"partitions"`
}

// MaxPartitions bounds streams.partitions.
const MaxPartitions = 1024

// DefaultStreamConfig returns the defaults described on StreamConfig.
func DefaultStreamConfig() StreamConfig {
	return StreamConfig{
		Usage:          "USAGE",
		Dead:           "USAGE_DEAD",
		Notify:         "NOTIFY",
		NotifyMaxAge:   7 * 24 * time.Hour,
		MaxAge:         35 * 24 * time.Hour,
		DeadMaxAge:     35 * 24 * time.Hour,
		Duplicates:     2 * time.Minute,
		Replicas:       1,
		MaxBytes:       8 << 30,
		DeadMaxBytes:   1 << 30,
		NotifyMaxBytes: 1 << 30,
	}
}

// Validate checks the stream settings.
func (c StreamConfig) Validate() error {
	var errs []error
	if err := ValidateToken("streams.usage", c.Usage); err != nil {
		errs = append(errs, err)
	}
	if err := ValidateToken("streams.dead", c.Dead); err != nil {
		errs = append(errs, err)
	}
	if err := ValidateToken("streams.notify", c.Notify); err != nil {
		errs = append(errs, err)
	}
	if c.Usage != "" && (c.Usage == c.Dead || c.Usage == c.Notify) || c.Dead != "" && c.Dead == c.Notify {
		errs = append(errs, invalid("streams", "usage, dead and notify must be three different names"))
	}
	if c.NotifyMaxAge < 0 {
		errs = append(errs, invalid("streams.notify_max_age", "must be >= 0 (0 keeps notices forever)"))
	}
	if c.MaxAge < 0 {
		errs = append(errs, invalid("streams.max_age", "must be >= 0 (0 keeps events forever)"))
	}
	if c.DeadMaxAge < 0 {
		errs = append(errs, invalid("streams.dead_max_age", "must be >= 0 (0 keeps dead letters forever)"))
	}
	if c.Duplicates <= 0 {
		errs = append(errs, invalid("streams.duplicates", "must be > 0"))
	}
	if c.MaxAge > 0 && c.Duplicates > c.MaxAge {
		errs = append(errs, invalid("streams.duplicates", "must not exceed streams.max_age"))
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, invalid("streams.replicas", "must be between 1 and 5 (got %d)", c.Replicas))
	}
	for _, b := range []struct {
		field string
		v     int64
	}{{"streams.max_bytes", c.MaxBytes}, {"streams.dead_max_bytes", c.DeadMaxBytes}, {"streams.notify_max_bytes", c.NotifyMaxBytes}} {
		if b.v == 0 || b.v < -1 {
			errs = append(errs, invalid(b.field, "must be -1 (unlimited) or > 0 (got %d)", b.v))
		}
	}
	if c.Partitions != 0 && (c.Partitions < 2 || c.Partitions > MaxPartitions) {
		errs = append(errs, invalid("streams.partitions", "must be 0 (not partitioned) or 2 to %d (got %d)", MaxPartitions, c.Partitions))
	}
	return errors.Join(errs...)
}

// UsageStreamConfig returns the JetStream configuration of the usage
// stream: partitioned, it maps <usage>.<uid> to <usage>.<p>.<uid>.
func (c StreamConfig) UsageStreamConfig(s Subjects) jetstream.StreamConfig {
	sc := c.stream(c.Usage, "allot usage events", c.MaxAge, c.MaxBytes, s.UsageStreamSubject())
	if c.Partitions > 0 {
		sc.SubjectTransform = &jetstream.SubjectTransformConfig{
			Source:      s.UsageStreamSubject(),
			Destination: fmt.Sprintf("%s.{{partition(%d,1)}}.{{wildcard(1)}}", s.Usage, c.Partitions),
		}
	}
	return sc
}

// UsageFilter is the consumer filter of every event in the usage stream,
// as stored: <usage>.* or, partitioned, <usage>.*.*.
func (c StreamConfig) UsageFilter(s Subjects) string {
	if c.Partitions > 0 {
		return s.Usage + ".*.*"
	}
	return s.UsageStreamSubject()
}

// UsageFilterFor is the consumer filter of uid's events, as stored.
func (c StreamConfig) UsageFilterFor(s Subjects, uid string) string {
	if c.Partitions > 0 {
		return s.Usage + ".*." + uid
	}
	return s.UsageFor(uid)
}

// PartitionFilter is the consumer filter of partition p's events.
func (c StreamConfig) PartitionFilter(s Subjects, p int) string {
	return fmt.Sprintf("%s.%d.*", s.Usage, p)
}

// DeadStreamConfig returns the JetStream configuration of the
// dead-letter stream.
func (c StreamConfig) DeadStreamConfig(s Subjects) jetstream.StreamConfig {
	return c.stream(c.Dead, "allot usage events that were refused, with the reason in Allot-Error", c.DeadMaxAge, c.DeadMaxBytes, s.DeadStreamSubject())
}

// NotifyStreamConfig returns the JetStream configuration of the notice
// stream.
func (c StreamConfig) NotifyStreamConfig(s Subjects) jetstream.StreamConfig {
	return c.stream(c.Notify, "allot notices for the notifier: usage thresholds and confirmation requests", c.NotifyMaxAge,
		c.NotifyMaxBytes, s.NotifyUsage("*"), s.NotifyConfirm("*"))
}

// stream is what allot's streams share: limits retention, the duplicate
// window, replicas, storage, and a size cap past which new messages are
// refused (DiscardNew) rather than the oldest deleted. Every stream of
// allot holds messages something still depends on (events the meter's
// periods and a rebuild replay, dead letters an operator must see,
// notices not yet mailed): a full stream must be loud, and the publisher's
// error is; messages still age out by max age.
func (c StreamConfig) stream(name, description string, maxAge time.Duration, maxBytes int64, subjects ...string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        name,
		Description: description,
		Subjects:    subjects,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxAge:      maxAge,
		MaxBytes:    maxBytes,
		MaxMsgs:     -1,
		Duplicates:  c.Duplicates,
		Replicas:    c.Replicas,
		Storage:     c.storage(),
	}
}

func (c StreamConfig) storage() jetstream.StorageType {
	if c.Memory {
		return jetstream.MemoryStorage
	}
	return jetstream.FileStorage
}

// EnsureStreams creates the usage, dead-letter and notice streams, or
// updates them to cfg when they exist. Calling it again with the same
// settings changes nothing.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, s Subjects, cfg StreamConfig) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("events: ensure streams: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("events: ensure streams: %w", err)
	}
	if err := samePartitions(ctx, js, cfg.UsageStreamConfig(s)); err != nil {
		return err
	}
	for _, sc := range []jetstream.StreamConfig{cfg.UsageStreamConfig(s), cfg.DeadStreamConfig(s), cfg.NotifyStreamConfig(s)} {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			if apiErr, ok := errors.AsType[*jetstream.APIError](err); ok && apiErr.ErrorCode == errInsufficientResources {
				return fmt.Errorf("events: ensure stream %s on %v: %w: nats-server sets aside each stream's cap (streams: max_bytes %d, dead_max_bytes %d, notify_max_bytes %d) against its JetStream store limit (max_file_store, or max_memory_store for memory streams) when it creates the stream; raise the limit or lower the caps",
					sc.Name, sc.Subjects, err, cfg.MaxBytes, cfg.DeadMaxBytes, cfg.NotifyMaxBytes)
			}
			return fmt.Errorf("events: ensure stream %s on %v: %w", sc.Name, sc.Subjects, err)
		}
	}
	return nil
}

// samePartitions refuses to change how an existing usage stream that
// holds events maps subjects: the events stored under the old subjects
// would be out of every new consumer's filter, so they would never be
// applied, or their uid's events would be split across partitions.
func samePartitions(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
	st, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("events: ensure stream %s: %w", want.Name, err)
	}
	info := st.CachedInfo()
	if TransformOf(info.Config.SubjectTransform) == TransformOf(want.SubjectTransform) || info.State.Msgs == 0 {
		return nil
	}
	return fmt.Errorf("events: ensure stream %s: %w: streams.partitions would change the stream's subject mapping from %s to %s, and it holds %d events stored the old way; "+
		"keep the old setting, or start the new one on a stream of another name (streams.usage) once the meters have applied everything in this one",
		want.Name, ErrInvalid, TransformOf(info.Config.SubjectTransform), TransformOf(want.SubjectTransform), info.State.Msgs)
}

// TransformOf describes a stream's subject transform ("none", or
// "source -> destination"), for comparison and for the messages that show
// it.
func TransformOf(t *jetstream.SubjectTransformConfig) string {
	if t == nil {
		return "none"
	}
	return t.Source + " -> " + t.Destination
}

// errInsufficientResources is JetStream's error code for a stream whose
// reservation does not fit the server's (or account's) store limit.
const errInsufficientResources jetstream.ErrorCode = 10047
