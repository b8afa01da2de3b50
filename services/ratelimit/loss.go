package ratelimit

import (
	"context"
	"fmt"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/mutex"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/ratelimit/internal/store"
	"github.com/redis/go-redis/v9"
)

// The loss of the windows of hits, as the meter handles the loss of its
// state (services/meter/loss.go), on the shared marker of pkg/service:
// the epoch marker ratelimit:epoch says Redis holds the windows of hits
// from usage events. Every ratelimit.loss_check each replica looks for
// it; gone while the usage stream holds events, the windows are lost:
// hits stop being counted (hit.lua refuses without the marker, on a
// Redis Cluster without its hash slot's; the consumer waits), checks of the services that count
// hits answer by their fail mode, and the replica holding the rebuild
// lock replays the stream into the windows (Rebuild) and writes the
// marker last.

// errRebuilding is what the hit consumer meets while Redis lacks the
// epoch marker: it naks and waits until the windows are rebuilt.
var errRebuilding = fmt.Errorf("ratelimit: rebuilding the windows of hits: %w: %w", store.ErrRedis, store.ErrLost)

// rebuildLock is the pkg/mutex lock the replica that rebuilds holds.
const rebuildLock = "ratelimit-rebuild"

// guards reports whether the rate limiter keeps an epoch marker: some
// service counts hits, and ratelimit.loss_check is on.
func guards(cfg Config) bool {
	return cfg.RateLimit.LossCheck > 0 && len(cfg.RateLimit.HitServices()) > 0
}

// rebuildingError is the 503 of a check of a service that counts hits,
// failing closed while its windows are rebuilt: a window missing its
// hits would admit what the limit refuses.
func (l *Limiter) rebuildingError() error {
	return events.NewServiceError(events.CodeUnavailable, "",
		"rebuilding: Redis lost the rate limiter's windows of hits from usage events and they are being rebuilt from the usage stream; retry after %s",
		l.cfg.RateLimit.LossCheck)
}

// setLost records whether Redis lacks the windows of hits, for the hit
// consumer, the checks and allot_ratelimit_rebuilding.
func (l *Limiter) setLost(lost bool) {
	// The gauge first: whoever sees the flag change sees the gauge agree.
	v := 0.0
	if lost {
		v = 1
	}
	l.metrics.rebuilding.Set(v)
	if l.lost.Swap(lost) != lost {
		if lost {
			l.log.Warn("Redis lost the rate limiter's windows of hits (no epoch marker): checks of services that count hits answer by their fail mode until they are rebuilt")
		} else {
			l.log.Info("the rate limiter's windows of hits are there (epoch marker found)")
		}
	}
}

// newEpoch returns the rate limiter's epoch marker; on a Redis Cluster
// with one more per hash slot, so that a master losing its data is seen
// whichever master holds ratelimit:epoch.
func newEpoch(rdb redis.UniversalClient, k keys.Keys) service.Epoch {
	if _, ok := rdb.(*redis.ClusterClient); ok {
		return service.NewSlottedEpoch(rdb, k.RateLimitEpoch(), k.RateLimitEpochSlots())
	}
	return service.NewEpoch(rdb, k.RateLimitEpoch())
}

// checkEpoch looks for the marker (service.Epoch.Lost: a stream without
// events writes it).
func (l *Limiter) checkEpoch(ctx context.Context) error {
	lost, err := l.epoch.Lost(ctx, l.usage)
	if err != nil {
		return err
	}
	l.setLost(lost)
	return nil
}

// adoptOrCheckEpoch is the check at start: a Redis holding records of
// hits (written by a rate limiter from before the marker) but no marker
// is kept, unless a rebuild's mark says it is a rebuild's half.
func (l *Limiter) adoptOrCheckEpoch(ctx context.Context) error {
	at, err := l.epoch.Adopt(ctx, 0, func(ctx context.Context) (bool, error) {
		return service.AnyKey(ctx, l.rdb, l.store.Keys().RateLimitDedupPattern())
	})
	if err != nil {
		return err
	}
	switch at {
	case service.EpochCut:
		l.log.Warn("Redis holds the windows of a rebuild that did not finish: rebuilding again")
	case service.EpochAdopted:
		l.log.Info("Redis holds windows of hits without an epoch marker (written before the marker existed): keeping them and writing the marker, no rebuild")
	case service.EpochSlotsAdopted:
		l.log.Info("the Redis Cluster's epoch marker has no markers per hash slot (written before they existed): writing them, no rebuild")
	}
	return l.checkEpoch(ctx)
}

// watchEpoch checks the marker every ratelimit.loss_check and, in the one
// replica holding the rebuild lock, rebuilds the windows when they are
// lost. It returns when ctx ends.
func (l *Limiter) watchEpoch(ctx context.Context) {
	every := l.cfg.RateLimit.LossCheck
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held *mutex.Lock // Lead runs the work only in the goroutine that set it
		l.locker.Lead(ctx, rebuildLock, every, mutex.LockOptions{}, mutex.LeadHooks{
			Acquired: func(lk *mutex.Lock) { held = lk },
			Error:    func(err error) { l.log.Warn("rebuild lock", "err", err) },
		}, func(ctx context.Context) { l.rebuildIfLost(ctx, held) })
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			<-done
			return
		case <-t.C:
			cctx, cancel := context.WithTimeout(ctx, every)
			if err := l.checkEpoch(cctx); err != nil && ctx.Err() == nil {
				l.log.Warn("epoch marker not checked", "err", err)
			}
			cancel()
		}
	}
}

// rebuildIfLost is the work of the replica holding the rebuild lock: when
// the marker is missing while the stream has events, it replays the
// stream into the windows (Rebuild, which writes the marker last).
//
// Redis losing the windows loses the lock too: a holder whose lock is
// gone from Redis does not rebuild (another replica may take the lock
// now); it tries for the lock again on its next turn.
func (l *Limiter) rebuildIfLost(ctx context.Context, lock *mutex.Lock) {
	if err := l.checkEpoch(ctx); err != nil || !l.lost.Load() {
		return
	}
	if _, err := lock.TTL(ctx); err != nil {
		return
	}
	l.log.Warn("rebuilding the windows of hits from the usage stream")
	l.metrics.rebuildDone.Set(0)
	rep, err := Rebuild(ctx, l.cfg, Deps{NATS: l.nc, Redis: l.rdb}, RebuildOptions{Log: l.log,
		Progress: func(p service.ReplayProgress) { l.metrics.rebuildDone.Set(p.Percent() / 100) }})
	if err != nil {
		if ctx.Err() == nil { // a replica shutting down has not failed
			l.metrics.rebuilds.WithLabelValues("failed").Inc()
			l.log.Error("rebuild failed; trying again", "err", err, "in", l.cfg.RateLimit.LossCheck)
		}
		return
	}
	l.metrics.rebuilds.WithLabelValues("done").Inc()
	l.metrics.rebuildDone.Set(1)
	l.log.Info("rebuilt the windows of hits", "from", rep.From, "events", rep.Events, "hits", rep.Hits, "duplicates", rep.Duplicates,
		"last_seq", rep.LastSeq, "missing", rep.Missing, "took", rep.Elapsed)
	l.setLost(false)
}

// hitsReady is the hit consumer's Ready while the windows may be lost: it
// resumes only once the marker is back and Redis answers.
func (l *Limiter) hitsReady(ctx context.Context) error {
	if l.lost.Load() {
		return errRebuilding
	}
	return l.store.Ping(ctx)
}
