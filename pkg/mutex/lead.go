package mutex

import (
	"context"
	"errors"
	"time"
)

// LeadHooks tell a Lead loop's owner what happened, for its logs and
// metrics; every field may be nil.
type LeadHooks struct {
	// Acquired: this process now holds the lock and runs the work.
	Acquired func(l *Lock)
	// Lost: the lock was lost (expired or taken over); the loop tries to
	// take it again on its next tick.
	Lost func(err error)
	// Error: trying for the lock or releasing it failed for a reason
	// other than someone else holding it.
	Error func(err error)
	// Released: the loop ended and let go of the lock it held (also
	// called after Lost, with the lock already gone).
	Released func()
}

// Lead runs work every interval while this process holds the lock name:
// the pattern of a job that one replica of several must run. It tries for
// the lock at once and then every interval (TryAcquire, with the
// watchdog on, so the lock lives while the process does), runs work right
// after taking it and then on each tick, and notices a lost lock before
// each run. work gets ctx; it should return within about an interval.
//
// Lead returns when ctx ends, after releasing the lock (under a timeout of
// its own, so an ended ctx does not keep the lock to its TTL).
func (l *Locker) Lead(ctx context.Context, name string, interval time.Duration, opts LockOptions, hooks LeadHooks, work func(ctx context.Context)) {
	opts.Watchdog = true
	if opts.TTL <= 0 {
		opts.TTL = max(3*interval, time.Second).Truncate(time.Millisecond)
	}
	call := func(f func(error), err error) {
		if f != nil {
			f(err)
		}
	}
	var lock *Lock
	defer func() {
		if lock != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			if err := lock.Release(rctx); err != nil && !errors.Is(err, ErrNotHeld) {
				call(hooks.Error, err)
			}
		}
		if hooks.Released != nil {
			hooks.Released()
		}
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if lock != nil {
			select {
			case <-lock.Lost():
				call(hooks.Lost, lock.Err())
				lock = nil
			default:
			}
		}
		if lock == nil {
			lk, err := l.TryAcquire(ctx, name, opts)
			switch {
			case err == nil:
				lock = lk
				if hooks.Acquired != nil {
					hooks.Acquired(lk)
				}
			case !errors.Is(err, ErrNotAcquired) && ctx.Err() == nil:
				call(hooks.Error, err)
			}
		}
		if lock != nil {
			work(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
