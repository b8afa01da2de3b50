package notifier

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/allot/allot/pkg/mutex"
	"github.com/hibiken/asynq"
)

// schedulerLock is the pkg/mutex lock whose holder schedules the
// periodic tasks.
const schedulerLock = "notifier-scheduler"

// maxSchedulerHeartbeat bounds how often asynq's Scheduler writes its
// entries to Redis, which is also how long a new leader's entry takes to
// show in `asynq cron ls`.
const maxSchedulerHeartbeat = 5 * time.Second

// NewRefreshTask makes the registry refresh task with the options it is
// scheduled with. It is unique for an interval: while one waits in its
// queue, a second (from a scheduler that has not yet noticed it lost the
// lock) is refused.
func (n *Notifier) NewRefreshTask() (*asynq.Task, []asynq.Option) {
	c := n.cfg.Notifier
	return asynq.NewTask(TypeRegistryRefresh, nil), []asynq.Option{
		asynq.Queue(c.RefreshQueue),
		asynq.MaxRetry(2),
		asynq.Timeout(max(c.RefreshInterval, 2*n.cfg.NATS.RequestTimeout)),
		asynq.Unique(c.RefreshInterval),
	}
}

// refreshSpec is the refresh's schedule in asynq's (robfig/cron's) terms.
func refreshSpec(every time.Duration) string { return "@every " + every.String() }

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

// scheduleLoop runs asynq's Scheduler, whose one entry is the registry
// refresh every interval, while this replica holds the scheduler lock
// (pkg/mutex Lead: tried every interval, kept alive by the watchdog,
// released when ctx ends). The Scheduler registers its entry in Redis, so
// `asynq cron ls`, asynqmon and Inspector.SchedulerEntries show it, and
// it stops the moment the lock is lost.
func (n *Notifier) scheduleLoop(ctx context.Context) {
	interval := n.cfg.Notifier.RefreshInterval
	var (
		mu    sync.Mutex
		sched *asynq.Scheduler
	)
	// stopping shuts down s if it is still the one running (nil: whichever
	// is).
	stopping := func(s *asynq.Scheduler) {
		mu.Lock()
		defer mu.Unlock()
		if sched == nil || s != nil && s != sched {
			return
		}
		sched.Shutdown() // removes its entry from Redis
		sched = nil
		n.metrics.leader.Set(0)
	}
	stop := func() { stopping(nil) }
	n.locker.Lead(ctx, schedulerLock, interval, mutex.LockOptions{}, mutex.LeadHooks{
		Acquired: func(l *mutex.Lock) {
			s, err := n.startScheduler()
			if err != nil {
				// Cannot happen with a valid config; the next holder
				// tries again.
				n.log.Error("cannot schedule the registry refresh", "err", err)
				_ = l.Release(context.WithoutCancel(ctx))
				return
			}
			mu.Lock()
			sched = s
			mu.Unlock()
			n.metrics.leader.Set(1)
			n.log.Info("scheduling the registry refresh", "lock", schedulerLock, "every", interval, "fencing_token", l.FencingToken())
			// Lead notices a lost lock only at its next tick; stop
			// scheduling at once (not the next term's scheduler, should
			// Lead have taken the lock again by then).
			n.wg.Go(func() {
				<-l.Lost()
				stopping(s)
			})
		},
		Lost: func(err error) {
			stop()
			n.log.Warn("scheduler lock lost", "err", err)
		},
		Error:    func(err error) { n.log.Warn("scheduler lock", "err", err) },
		Released: stop,
	}, func(context.Context) {})
}

// startScheduler starts an asynq Scheduler with the refresh as its entry.
// A Scheduler cannot start again once shut down: each term of leadership
// has its own.
func (n *Notifier) startScheduler() (*asynq.Scheduler, error) {
	interval := n.cfg.Notifier.RefreshInterval
	s := asynq.NewSchedulerFromRedisClient(n.rdb, &asynq.SchedulerOpts{
		HeartbeatInterval: min(interval, maxSchedulerHeartbeat),
		Logger:            asynqLogger{n.log.With("component", "asynq-scheduler")},
		LogLevel:          asynq.WarnLevel,
		Location:          time.UTC,
		PostEnqueueFunc:   n.refreshEnqueued,
	})
	task, opts := n.NewRefreshTask()
	if _, err := s.Register(refreshSpec(interval), task, opts...); err != nil {
		return nil, fmt.Errorf("notifier: schedule the registry refresh: %w", err)
	}
	if err := s.Start(); err != nil {
		return nil, fmt.Errorf("notifier: start asynq's scheduler: %w", err)
	}
	return s, nil
}

// refreshEnqueued counts what the Scheduler's enqueue did.
func (n *Notifier) refreshEnqueued(_ *asynq.TaskInfo, err error) {
	switch {
	case err == nil:
		n.metrics.scheduled.Inc()
	case errors.Is(err, asynq.ErrDuplicateTask):
		n.log.Debug("the registry refresh is still queued; not enqueued again")
	default:
		n.log.Warn("enqueue the registry refresh", "err", err)
	}
}
