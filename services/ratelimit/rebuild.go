package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/ratelimit/internal/store"
	"github.com/nats-io/nats.go/jetstream"
)

// RebuildOptions says what Rebuild replays.
type RebuildOptions struct {
	// From is the oldest event replayed, by the time the stream stored it.
	// Zero: DefaultRebuildFrom.
	From time.Time
	// UID restricts the rebuild to one uid's events (usage.<uid>); the
	// epoch marker is then left as it is. "": every uid.
	UID string
	// Progress, when set, is called at most once per ProgressEvery (1 s)
	// while events are replayed.
	Progress      func(service.ReplayProgress)
	ProgressEvery time.Duration
	// Now is the clock of the default From (nil: time.Now).
	Now func() time.Time
	// Log receives what happens; nil discards it.
	Log *slog.Logger
}

// RebuildReport is what a rebuild of the windows of hits did.
type RebuildReport struct {
	Stream string
	UID    string    // "" for every uid
	From   time.Time // the oldest event asked for
	// FirstSeq and LastSeq are the stream sequences replayed (0, 0: none).
	FirstSeq, LastSeq uint64
	// Missing is set when the stream no longer holds every event asked
	// for: windows from before HeldSince cannot be restored.
	Missing   bool
	HeldSince time.Time
	// Events read; of them skipped (no service counts their metric, or
	// invalid). Hits counted now, duplicates (counted before: by the live
	// consumer, or by an earlier rebuild), refused (the window would pass
	// 1e15) and failed (a script error), each per (event, service).
	Events, Skipped, Hits, Duplicates, Refused, Failed int64
	Elapsed                                            time.Duration
}

// rebuildMargin is how much earlier than the oldest open window a
// rebuild starts by default: the rebuild's clock, the NATS servers' (which
// place hits) and Redis's (which places checks) may disagree by that much.
const rebuildMargin = time.Minute

// DefaultRebuildFrom is where a rebuild starts when not told: the start of
// the oldest window a check still reads among the services that count
// hits (the current one; for sliding, the previous one too), a minute
// earlier for clocks that disagree. The zero time when no service counts
// hits.
func DefaultRebuildFrom(s Settings, now time.Time) time.Time {
	var from time.Time
	ms := now.UnixMilli()
	for _, svcs := range s.HitServices() {
		for _, name := range svcs {
			rl, _ := s.RateLimitFor(name)
			i := rl.Interval.Milliseconds()
			start := ms / i * i
			if rl.Mode == ModeSliding {
				start -= i
			}
			if t := time.UnixMilli(start).Add(-rebuildMargin); from.IsZero() || t.Before(from) {
				from = t
			}
		}
	}
	return from.UTC()
}

// Rebuild replays the usage stream into the windows of hits through the
// hit consumer's own path (the same parse, hit.lua and dedup records), so
// that they hold what a rate limiter that never lost them holds. It reads
// the stream with an ordered consumer of its own, never the rate
// limiter's durable one.
//
// It deletes nothing: every hit carries its dedup record, so a hit the
// windows hold already is not counted again, and a rebuild can run while
// rate limiters count, be cut short and run again. A whole rebuild (no
// UID) sets the rebuilding mark first and writes the epoch marker last.
// What checks spent is not in the stream and is neither restored nor
// removed.
func Rebuild(ctx context.Context, cfg Config, deps Deps, opts RebuildOptions) (rep RebuildReport, err error) {
	if deps.NATS == nil || deps.Redis == nil {
		return rep, errors.New("ratelimit: rebuild: NATS and Redis are required")
	}
	if err := cfg.Validate(); err != nil {
		return rep, fmt.Errorf("ratelimit: rebuild: %w", err)
	}
	byMetric := cfg.RateLimit.HitServices()
	if len(byMetric) == 0 {
		return rep, errors.New("ratelimit: rebuild: no service counts hits from usage events (ratelimit.services.<name>.metric): nothing to rebuild")
	}
	if opts.UID != "" {
		if err := cfg.Subjects.ValidateUID("uid", opts.UID); err != nil {
			return rep, fmt.Errorf("ratelimit: rebuild: %w", err)
		}
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	clock := opts.Now
	if clock == nil {
		clock = time.Now
	}
	now := clock()
	rep.Stream, rep.UID, rep.From = cfg.Streams.Usage, opts.UID, opts.From
	if opts.From.After(now) {
		return rep, fmt.Errorf("ratelimit: rebuild: -from %s is in the future", opts.From.UTC().Format(time.RFC3339))
	}
	if rep.From.IsZero() {
		rep.From = DefaultRebuildFrom(cfg.RateLimit, now)
	}
	start := time.Now()
	defer func() { rep.Elapsed = time.Since(start) }()

	js, err := jetstream.New(deps.NATS)
	if err != nil {
		return rep, fmt.Errorf("ratelimit: rebuild: %w", err)
	}
	k := keys.New(cfg.Redis.KeyPrefix)
	st, err := store.New(ctx, deps.Redis, store.Options{Keys: k, Now: deps.Now})
	if err != nil {
		return rep, fmt.Errorf("ratelimit: rebuild: %w", err)
	}
	mt, _ := newMetrics(nil)
	w := hitCounter{l: &Limiter{cfg: cfg, log: log, store: st, metrics: mt}, byMetric: byMetric}
	epoch := newEpoch(deps.Redis, k)
	if opts.UID == "" {
		// Before the first hit: a rebuild cut short from here on must be
		// run again, not taken for whole windows.
		if err := epoch.MarkRebuilding(ctx); err != nil {
			return rep, fmt.Errorf("ratelimit: rebuild: %w", err)
		}
	}
	subject := cfg.Streams.UsageFilter(cfg.Subjects)
	if opts.UID != "" {
		subject = cfg.Streams.UsageFilterFor(cfg.Subjects, opts.UID)
	}
	res, err := service.Replay(ctx, js, cfg.Streams.Usage, service.ReplayOptions{
		Subject: subject, From: rep.From, Batch: cfg.RateLimit.Hits.Batch, Progress: opts.Progress, ProgressEvery: opts.ProgressEvery,
	}, func(ctx context.Context, chunk []jetstream.Msg) error {
		t, err := countRetrying(ctx, w, chunk, log)
		rep.Skipped += t.skipped
		rep.Hits += t.counted
		rep.Duplicates += t.duplicate
		rep.Refused += t.refused
		rep.Failed += t.failed
		return err
	})
	rep.FirstSeq, rep.LastSeq, rep.Events = res.FirstSeq, res.LastSeq, res.Events
	rep.Missing, rep.HeldSince = res.Missing, res.HeldSince
	if err != nil {
		return rep, fmt.Errorf("ratelimit: rebuild: %w", err)
	}
	if opts.UID == "" {
		// Last: the marker tells waiting rate limiters the windows are whole.
		if err := epoch.Set(ctx, max(res.LastSeq, res.UpTo), res.HeldSince); err != nil {
			return rep, fmt.Errorf("ratelimit: rebuild: %w", err)
		}
	}
	return rep, nil
}

// countRetrying counts a chunk's hits, trying again a few times when
// Redis fails (the dedup records make that safe), then gives up.
func countRetrying(ctx context.Context, w hitCounter, chunk []jetstream.Msg, log *slog.Logger) (hitTally, error) {
	for attempt, delay := 0, 100*time.Millisecond; ; attempt, delay = attempt+1, 2*delay {
		t, err := w.count(ctx, chunk)
		if err == nil || !errors.Is(err, store.ErrRedis) || attempt == 4 {
			return t, err
		}
		log.Warn("rebuild: redis failed; retrying the chunk", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return hitTally{}, ctx.Err()
		case <-time.After(delay):
		}
	}
}
