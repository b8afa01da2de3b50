package meter

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/usage"
	"github.com/allot/allot/services/meter/internal/store"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// ErrMetersRunning is returned by a rebuild that would replace the state
// meters are writing at the same moment: stop them first, or Force.
var ErrMetersRunning = errors.New("meter: meters are running")

// RebuildOptions says what Rebuild replays and where it writes.
type RebuildOptions struct {
	// From is the oldest event replayed, by the time the stream stored
	// it. Zero: DefaultRebuildFrom.
	From time.Time
	// UID restricts the rebuild to one uid's own state (usage.<uid>);
	// events of global or instance-scoped metrics are then skipped, since
	// they add to state every uid shares. "": every uid.
	UID string
	// DryRun rebuilds into a scratch key space of the same Redis, lists
	// how it differs from what the meter holds, and deletes it; the
	// meter's state is not touched.
	DryRun bool
	// Force replaces the state even though the meter's consumer has pull
	// requests waiting (meters seem to be running).
	Force bool
	// Progress, when set, is called at most once per ProgressEvery (1 s)
	// while events are replayed.
	Progress      func(RebuildProgress)
	ProgressEvery time.Duration
	// Now is the clock of the default From and of the age of notices
	// (nil: time.Now).
	Now func() time.Time
	// Log receives what happens; nil discards it.
	Log *slog.Logger
}

// RebuildProgress is how far a rebuild has come: the position of its
// replay of the stream.
type RebuildProgress = service.ReplayProgress

// RebuildReport is what a rebuild did.
type RebuildReport struct {
	Stream string
	UID    string // "" for every uid
	DryRun bool
	From   time.Time // the oldest event asked for; zero: the whole stream
	// FirstSeq and LastSeq are the stream sequences replayed (0, 0: none).
	FirstSeq, LastSeq uint64
	// Missing is set when the stream no longer holds every event asked
	// for (its oldest were removed by max_age or by hand): state from
	// before HeldSince cannot be restored.
	Missing   bool
	HeldSince time.Time
	// Events read; of them applied, duplicates (counted once already),
	// refused (dead-lettered by the meter too, never counted), given up
	// (the meter dead-lettered them after max_deliver deliveries, never
	// counting them) and skipped (another scope than -uid's).
	Events, Applied, Duplicates, Refused, GivenUp, Skipped int64
	// Cleared is the number of keys of meter state deleted before the
	// replay (not in a dry run).
	Cleared int
	// Notices crossed during the replay: already sent (found in the
	// notice stream, or older than what it keeps), published now (never
	// sent), left pending (never sent; a dry run publishes nothing).
	NoticesSent, NoticesPublished, NoticesPending int
	Elapsed                                       time.Duration
	// Diffs lists, for a dry run, where the meter's state differs from
	// the rebuilt one.
	Diffs []RebuildDiff
}

// DefaultRebuildFrom is where a rebuild starts when not told: the start of
// the oldest grant period still open. For calendar-aligned grants that is
// the start of the current period. A rolling period starts at the first
// use after the previous one ended, a chain only the uid's history tells;
// counters, gauges and indefinite grants have no period at all. With any
// of those it is the zero time: the whole stream.
func DefaultRebuildFrom(cat usage.Catalog, now time.Time) time.Time {
	var from time.Time
	for _, name := range cat.MetricNames() {
		mc, _ := cat.Metric(name)
		if mc.Style != usage.StyleGrant || mc.Align != usage.AlignCalendar || mc.Period == usage.PeriodIndefinite {
			return time.Time{}
		}
		start, _ := store.Bounds(mc.Period, mc.Align, now)
		if from.IsZero() || start.Before(from) {
			from = start
		}
	}
	return from
}

// rebuilder is one rebuild under way.
type rebuilder struct {
	cfg    Config
	deps   Deps
	opts   RebuildOptions
	log    *slog.Logger
	now    time.Time
	js     jetstream.JetStream
	live   keys.Keys
	target keys.Keys // live, or the scratch space of a dry run or of one uid
	m      *Meter    // the meter's parse and notices, on target
	report RebuildReport

	swapScript *redis.Script // rebuild_swap.lua

	// grants whose notices the replay crossed, and when each notice was
	// first crossed (the stream time of its event)
	pending   map[grantRef]usage.MetricConfig
	crossedAt map[string]time.Time
	givenUp   map[uint64]bool // sequences the meter gave up on
	upTo      uint64          // the stream's last sequence when the replay began
}

type grantRef struct{ uid, metric string }

// rebuildSwapLua puts a one-uid rebuild in place; the file says how.
//
//go:embed rebuild_swap.lua
var rebuildSwapLua string

// Rebuild replays the usage stream through the meter's own apply path
// (the same parse, scripts and dedup records) so that Redis holds what a
// meter that never lost anything holds. It reads the stream with an
// ordered consumer of its own, never the meter's durable one.
//
// Without DryRun it first deletes the meter state it rebuilds (grant
// state, counters, gauges and dedup records of every uid, or of UID);
// grant overrides are kept, since the stream does not hold them. Meters
// must not apply events meanwhile: it refuses with ErrMetersRunning when
// the meter's consumer has pull requests waiting, unless Force.
func Rebuild(ctx context.Context, cfg Config, deps Deps, opts RebuildOptions) (RebuildReport, error) {
	if deps.NATS == nil || deps.Redis == nil {
		return RebuildReport{}, errors.New("meter: rebuild: NATS and Redis are required")
	}
	if err := cfg.Validate(); err != nil {
		return RebuildReport{}, fmt.Errorf("meter: rebuild: %w", err)
	}
	if opts.UID != "" {
		if err := cfg.Subjects.ValidateUID("uid", opts.UID); err != nil {
			return RebuildReport{}, fmt.Errorf("meter: rebuild: %w", err)
		}
	}
	clock := opts.Now
	if clock == nil {
		clock = time.Now
	}
	r := &rebuilder{cfg: cfg, deps: deps, opts: opts, log: opts.Log, now: clock().UTC(), swapScript: redis.NewScript(rebuildSwapLua),
		live: keys.New(cfg.Redis.KeyPrefix), pending: map[grantRef]usage.MetricConfig{}, crossedAt: map[string]time.Time{}}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if opts.From.After(r.now) {
		return RebuildReport{}, fmt.Errorf("meter: rebuild: -from %s is in the future", opts.From.UTC().Format(time.RFC3339))
	}
	r.report.Stream, r.report.UID, r.report.From, r.report.DryRun = cfg.Streams.Usage, opts.UID, opts.From, opts.DryRun
	if opts.From.IsZero() {
		r.report.From = DefaultRebuildFrom(cfg.Usage, r.now)
	}
	start := time.Now()
	err := r.run(ctx)
	r.report.Elapsed = time.Since(start)
	return r.report, err
}

func (r *rebuilder) run(ctx context.Context) error {
	var err error
	if r.js, err = jetstream.New(r.deps.NATS); err != nil {
		return fmt.Errorf("meter: rebuild: %w", err)
	}
	if _, err := r.js.Stream(ctx, r.cfg.Streams.Usage); err != nil {
		return fmt.Errorf("meter: rebuild: stream %s: %w", r.cfg.Streams.Usage, err)
	}
	r.target = r.live
	// A dry run, and a rebuild of one uid, replay into a scratch key
	// space: the one compares it with the live state, the other puts it in
	// place in one step at the end (swap), so a rebuild cut short leaves
	// the live state as it was rather than half replaced.
	if r.opts.DryRun || r.opts.UID != "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		r.target = keys.New(r.cfg.Redis.KeyPrefix + "rebuild-" + hex.EncodeToString(b[:]) + ":")
		defer func() {
			// Even when ctx ended: the scratch space must not stay.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if err := deleteUnder(cctx, r.deps.Redis, r.target.Prefix()+"*"); err != nil {
				r.log.Warn("rebuild: scratch keys not deleted", "prefix", r.target.Prefix(), "err", err)
			}
		}()
	}
	sopts := store.Options{Keys: r.target, DedupTTL: r.cfg.Meter.DedupTTL, StreamDedup: !r.cfg.Meter.DedupIDs, Partitions: r.cfg.Streams.Partitions}
	if _, cluster := r.deps.Redis.(*redis.ClusterClient); sopts.StreamDedup && r.opts.UID != "" && !cluster {
		// Every uid shares the stream-position records on a single Redis,
		// and they still say what the live consumer must not apply again:
		// replay one uid into records of its own.
		var b [4]byte
		_, _ = rand.Read(b[:])
		sopts.SeqKey = r.target.DedupSeqs(keys.DedupTag) + ":rebuild-" + hex.EncodeToString(b[:])
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if err := r.deps.Redis.Unlink(cctx, sopts.SeqKey).Err(); err != nil {
				r.log.Warn("rebuild: scratch records not deleted", "key", sopts.SeqKey, "err", err)
			}
		}()
	}
	st, err := store.New(ctx, r.deps.Redis, sopts)
	if err != nil {
		return fmt.Errorf("meter: rebuild: %w", err)
	}
	r.m = &Meter{cfg: r.cfg, subj: r.cfg.Subjects, log: r.log, nc: r.deps.NATS, js: r.js, store: st}
	if r.m.metrics, err = newMetrics(nil, r.m); err != nil {
		return fmt.Errorf("meter: rebuild: %w", err)
	}
	if !r.opts.DryRun {
		if err := r.checkIdle(ctx); err != nil {
			return err
		}
	}
	switch {
	case r.target != r.live:
		if err := r.copyOverrides(ctx); err != nil {
			return err
		}
	default:
		// Before the first delete: a rebuild cut short from here on must
		// be rebuilt again, not taken for a whole state.
		if err := r.m.store.MarkRebuilding(ctx); err != nil {
			return fmt.Errorf("meter: rebuild: %w", err)
		}
		if r.report.Cleared, err = r.clear(ctx); err != nil {
			return err
		}
	}
	if err := r.replay(ctx); err != nil {
		return err
	}
	if err := r.settleNotices(ctx); err != nil {
		return err
	}
	switch {
	case r.opts.DryRun:
	case r.opts.UID != "":
		if r.report.Cleared, err = r.swap(ctx); err != nil {
			return err
		}
	default:
		// Last: the marker tells waiting meters that the state is whole.
		if err := r.m.store.SetEpoch(ctx, max(r.report.LastSeq, r.upTo), r.report.HeldSince); err != nil {
			return fmt.Errorf("meter: rebuild: %w", err)
		}
	}
	if r.opts.DryRun {
		if r.report.Diffs, err = r.diff(ctx); err != nil {
			return err
		}
	}
	return nil
}

// checkIdle refuses when the meter's durable consumer has pull requests
// waiting: a meter is running and would write into what is replaced.
func (r *rebuilder) checkIdle(ctx context.Context) error {
	if r.opts.Force {
		return nil
	}
	for _, name := range r.cfg.consumerNames() {
		cons, err := r.js.Consumer(ctx, r.cfg.Streams.Usage, name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("meter: rebuild: consumer %s: %w", name, err)
		}
		if n := cons.CachedInfo().NumWaiting; n > 0 {
			return fmt.Errorf("%w: consumer %s of %s has %d pull requests waiting; stop the meters first (a rebuild replaces the state they write), check with -dry-run, or pass -force",
				ErrMetersRunning, name, r.cfg.Streams.Usage, n)
		}
	}
	return nil
}

// replay reads the stream from From to the last event it holds now and
// applies it in chunks, in stream order (service.Replay). Later events
// are the running meter's, and their dedup records make a second
// application harmless anyway.
func (r *rebuilder) replay(ctx context.Context) error {
	var err error
	if r.givenUp, err = r.gaveUp(ctx); err != nil {
		return err
	}
	subject := r.cfg.Streams.UsageFilter(r.cfg.Subjects)
	if r.opts.UID != "" {
		subject = r.cfg.Streams.UsageFilterFor(r.cfg.Subjects, r.opts.UID)
	}
	res, err := service.Replay(ctx, r.js, r.cfg.Streams.Usage, service.ReplayOptions{
		Subject: subject, From: r.report.From, Batch: r.cfg.Meter.Batch, Progress: r.opts.Progress, ProgressEvery: r.opts.ProgressEvery,
	}, r.applyChunk)
	r.upTo = res.UpTo
	r.report.FirstSeq, r.report.LastSeq = res.FirstSeq, res.LastSeq
	r.report.Missing, r.report.HeldSince = res.Missing, res.HeldSince
	if err != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("meter: rebuild: %w", err)
	}
	return err
}

// applyChunk applies one chunk as the meter's worker does. Refused events
// are counted, never dead-lettered again: the meter did that when they
// first came. A Redis failure is retried a few times (the dedup records
// make it safe), then ends the rebuild.
func (r *rebuilder) applyChunk(ctx context.Context, chunk []jetstream.Msg) error {
	a := applier{m: r.m, partition: -1}
	ops := make([]store.Op, 0, len(chunk))
	lastWasOp := map[int]bool{} // by partition: the last message read of it became an op
	for _, msg := range chunk {
		r.report.Events++
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("meter: rebuild: %w", err)
		}
		it := a.parse(msg)
		part, _ := r.cfg.Subjects.UsagePartition(msg.Subject())
		switch {
		case r.givenUp[md.Sequence.Stream]:
			r.report.GivenUp++
			lastWasOp[part] = false
			continue
		case it.refuse != nil:
			r.report.Refused++
			lastWasOp[part] = false
			continue
		case r.opts.UID != "" && store.Tag(it.op) != keys.UserTag(r.opts.UID):
			r.report.Skipped++
			lastWasOp[part] = false
			continue
		}
		// The whole stream comes in order: the message before this one in
		// its partition is the last one of it read here, so when that was
		// applied too, the two are one run of stream positions. (One uid's
		// replay reads only its events: not so.)
		it.op.Follows = r.opts.UID == "" && lastWasOp[part]
		lastWasOp[part] = true
		ops = append(ops, it.op)
	}
	if len(ops) == 0 {
		return nil
	}
	var results []store.Result
	var err error
	for attempt, delay := 0, 100*time.Millisecond; ; attempt, delay = attempt+1, 2*delay {
		results, err = r.m.store.Apply(ctx, ops)
		if err == nil || !errors.Is(err, store.ErrRedis) || attempt == 4 {
			break
		}
		r.log.Warn("rebuild: redis failed; retrying the chunk", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
	if err != nil {
		return fmt.Errorf("meter: rebuild: apply: %w", err)
	}
	for i, res := range results {
		op := ops[i]
		switch {
		case res.Err != nil:
			r.report.Refused++
		case res.Applied:
			r.report.Applied++
		default:
			r.report.Duplicates++
		}
		// When each notice was crossed: by the event that crossed it;
		// one pending from before the replay, by the chunk it is first
		// seen in.
		for _, n := range res.Crossed {
			if _, ok := r.crossedAt[n.Raw]; !ok {
				r.crossedAt[n.Raw] = op.At
			}
		}
		if len(res.Notices) > 0 {
			r.pending[grantRef{op.UID, op.Metric}] = op.Config
			for _, n := range res.Notices {
				if _, ok := r.crossedAt[n.Raw]; !ok {
					r.crossedAt[n.Raw] = ops[0].At
				}
			}
		}
	}
	return nil
}
