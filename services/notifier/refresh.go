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

// scheduleLoop enqueues one refresh task per interval while this
// replica holds the scheduler lock (pkg/mutex Lead: tried every interval,
// kept alive by the watchdog, released when ctx ends).
func (n *Notifier) scheduleLoop(ctx context.Context) {
	interval := n.cfg.Notifier.RefreshInterval
	n.locker.Lead(ctx, schedulerLock, interval, mutex.LockOptions{}, mutex.LeadHooks{
		Acquired: func(l *mutex.Lock) {
			n.metrics.leader.Set(1)
			n.log.Info("scheduling the registry refresh", "lock", schedulerLock, "every", interval, "fencing_token", l.FencingToken())
		},
		Lost: func(err error) {
			n.metrics.leader.Set(0)
			n.log.Warn("scheduler lock lost", "err", err)
		},
		Error:    func(err error) { n.log.Warn("scheduler lock", "err", err) },
		Released: func() { n.metrics.leader.Set(0) },
	}, func(ctx context.Context) { n.enqueueRefresh(ctx, n.now().Truncate(interval)) })
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
