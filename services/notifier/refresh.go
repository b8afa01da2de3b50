package notifier

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/allot/allot/pkg/mutex"
	"github.com/hibiken/asynq"
)

// schedulerLock is the pkg/mutex lock whose holder schedules the
// periodic tasks.
const schedulerLock = "notifier-scheduler"

// NewRefreshTask makes the registry refresh task of the interval that
// starts at slot. Its id names the slot, so two schedulers (one losing
// its lock while the next takes it) enqueue it once.
func (n *Notifier) NewRefreshTask(slot time.Time) *asynq.Task {
	c := n.cfg.Notifier
	return asynq.NewTask(TypeRegistryRefresh, nil,
		asynq.TaskID("registry-refresh:"+strconv.FormatInt(slot.UnixMilli(), 10)),
		asynq.Queue(c.RefreshQueue),
		asynq.MaxRetry(2),
		asynq.Timeout(max(c.RefreshInterval, 2*n.cfg.NATS.RequestTimeout)),
		asynq.Retention(2*c.RefreshInterval))
}

// HandleRefreshTask has the registry reap expired instances and rebuild
// its URL map. A registry that does not answer fails the task, which is
// retried twice; the next interval's task comes anyway.
func (n *Notifier) HandleRefreshTask(ctx context.Context, _ *asynq.Task) error {
	reply, err := n.client.RefreshRegistry(ctx)
	if err != nil {
		n.metrics.tasks.WithLabelValues(TypeRegistryRefresh, "retry").Inc()
		return fmt.Errorf("notifier: registry refresh: %w", err)
	}
	n.metrics.tasks.WithLabelValues(TypeRegistryRefresh, "done").Inc()
	n.metrics.reaped.Add(float64(reply.Reaped))
	n.log.Debug("registry refreshed", "reaped", reply.Reaped, "instances", reply.Instances, "resources", reply.Resources, "conflicts", reply.Conflicts)
	return nil
}

// scheduleLoop tries for the scheduler lock every interval and, while it
// holds it (renewed by the watchdog), enqueues one refresh task per
// interval. It releases the lock when ctx ends.
func (n *Notifier) scheduleLoop(ctx context.Context) {
	interval := n.cfg.Notifier.RefreshInterval
	opts := mutex.LockOptions{TTL: max(3*interval, time.Second).Truncate(time.Millisecond), Watchdog: true}
	var lock *mutex.Lock
	defer func() {
		if lock != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			if err := lock.Release(rctx); err != nil && !errors.Is(err, mutex.ErrNotHeld) {
				n.log.Warn("releasing the scheduler lock", "err", err)
			}
		}
		n.metrics.leader.Set(0)
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if lock != nil {
			select {
			case <-lock.Lost():
				n.log.Warn("scheduler lock lost", "err", lock.Err())
				lock = nil
				n.metrics.leader.Set(0)
			default:
			}
		}
		if lock == nil {
			l, err := n.locker.TryAcquire(ctx, schedulerLock, opts)
			switch {
			case err == nil:
				lock = l
				n.metrics.leader.Set(1)
				n.log.Info("scheduling the registry refresh", "lock", schedulerLock, "every", interval, "fencing_token", l.FencingToken())
			case !errors.Is(err, mutex.ErrNotAcquired) && ctx.Err() == nil:
				n.log.Warn("scheduler lock", "err", err)
			}
		}
		if lock != nil {
			n.enqueueRefresh(ctx, n.now().Truncate(interval))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (n *Notifier) enqueueRefresh(ctx context.Context, slot time.Time) {
	_, err := n.queue.EnqueueContext(ctx, n.NewRefreshTask(slot))
	switch {
	case err == nil:
		n.metrics.scheduled.Inc()
	case errors.Is(err, asynq.ErrTaskIDConflict):
		// Another scheduler got this slot first.
	case ctx.Err() == nil:
		n.log.Warn("enqueue the registry refresh", "err", err)
	}
}
