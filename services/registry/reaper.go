package registry

import (
	"context"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/mutex"
)

// lockName is the reaper's pkg/mutex lock. It carries the sealing key's
// id, so two clusters that share a Redis (with different keys) each run
// one reaper.
func (r *Registry) lockName() string { return "registry-reaper-" + r.sealer.KeyID() }

// reapLoop reaps every reap_interval while this replica holds the
// reaper's lock (pkg/mutex Lead: tried every interval, kept alive by the
// watchdog, released when ctx ends).
func (r *Registry) reapLoop(ctx context.Context) {
	r.locker.Lead(ctx, r.lockName(), r.cfg.Registry.ReapInterval, mutex.LockOptions{}, mutex.LeadHooks{
		Acquired: func(l *mutex.Lock) {
			r.metrics.leader.Set(1)
			r.log.Info("reaping expired registrations", "lock", r.lockName(), "fencing_token", l.FencingToken())
		},
		Lost: func(err error) {
			r.metrics.leader.Set(0)
			r.log.Warn("reaper lock lost", "err", err)
		},
		Error:    func(err error) { r.log.Warn("reaper lock", "err", err) },
		Released: func() { r.metrics.leader.Set(0) },
	}, func(ctx context.Context) {
		if _, err := r.ReapOnce(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("reaping", "err", err)
		}
	})
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
			inst.Created = e.Created.UTC()
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
			continue // nobody could read it: nothing to announce (a watch sees the skipped seq and reloads)
		}
		r.publish(events.ChangeExpired, e.Name, e.ID, e.Seq, inst)
	}
	return len(reaped), nil
}
