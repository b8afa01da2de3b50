package registry

import (
	"context"
	"errors"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/mutex"
)

// lockName is the reaper's pkg/mutex lock. It carries the sealing key's
// id, so two clusters that share a Redis (with different keys) each run
// one reaper.
func (r *Registry) lockName() string { return "registry-reaper-" + r.sealer.KeyID() }

// reapLoop tries for the reaper's lock every reap_interval and, while it
// holds it (refreshed by the watchdog), reaps every reap_interval. It
// releases the lock when ctx ends.
func (r *Registry) reapLoop(ctx context.Context) {
	interval := r.cfg.Registry.ReapInterval
	opts := mutex.LockOptions{TTL: max(3*interval, time.Second).Truncate(time.Millisecond), Watchdog: true}
	var lock *mutex.Lock
	defer func() {
		if lock != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			if err := lock.Release(rctx); err != nil && !errors.Is(err, mutex.ErrNotHeld) {
				r.log.Warn("releasing the reaper lock", "err", err)
			}
		}
		r.metrics.leader.Set(0)
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if lock != nil {
			select {
			case <-lock.Lost():
				r.log.Warn("reaper lock lost", "err", lock.Err())
				lock = nil
				r.metrics.leader.Set(0)
			default:
			}
		}
		if lock == nil {
			l, err := r.locker.TryAcquire(ctx, r.lockName(), opts)
			switch {
			case err == nil:
				lock = l
				r.metrics.leader.Set(1)
				r.log.Info("reaping expired registrations", "lock", r.lockName(), "fencing_token", l.FencingToken())
			case !errors.Is(err, mutex.ErrNotAcquired) && ctx.Err() == nil:
				r.log.Warn("reaper lock", "err", err)
			}
		}
		if lock != nil {
			if _, err := r.ReapOnce(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("reaping", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ReapOnce removes registrations that have expired and publishes
// "expired" for each; it returns how many it reaped. The reaper calls it
// under its lock; tests call it directly.
func (r *Registry) ReapOnce(ctx context.Context) (int, error) {
	expired, now, err := r.store.Expired(ctx, reapBatch)
	if err != nil {
		return 0, err
	}
	if len(expired) == 0 {
		return 0, nil
	}
	grace := foreignGrace * r.cfg.Registry.TTL
	insts := make(map[string]*events.Instance, len(expired))
	take := expired[:0:0]
	for _, e := range expired {
		inst, err := r.open(e, "reap")
		switch {
		case err == nil:
			insts[e.Name+":"+e.ID] = &inst
		case now.Sub(e.Expiry) < grace:
			continue // another cluster's, most likely: its reaper announces it
		}
		take = append(take, e)
	}
	reaped, err := r.store.Reap(ctx, take)
	if err != nil {
		return 0, err
	}
	for _, e := range reaped {
		r.metrics.expired.Inc()
		inst := insts[e.Name+":"+e.ID]
		if inst == nil {
			continue // nobody could read it: nothing to announce
		}
		r.publish(events.ChangeExpired, e.Name, e.ID, inst)
	}
	return len(reaped), nil
}
