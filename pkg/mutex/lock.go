package mutex

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Lock is one held lock, returned by Acquire and TryAcquire. Its methods are
// safe for concurrent use.
//
// A Lock is held from the acquire until Release, or until it is lost: a
// refresh, TTL or release finds the key gone or holding another token, or its
// TTL runs out (counted from when the last successful acquire or refresh was
// sent) with no successful refresh. Lost and Err report both ends.
type Lock struct {
	locker *Locker
	name   string
	keys   [2]string // lock key, fence key
	token  any       // the random token, boxed once: ARGV[1] of every script
	ttl    time.Duration
	ttlArg any // ttl in milliseconds, boxed once
	fence  int64

	mu    sync.Mutex
	until time.Time     // local bound of the lock's validity
	ended bool          // released or lost
	why   error         // why it was lost; nil if released
	lost  chan struct{} // made by the first Lost call
	timer *time.Timer   // closes lost at until, once Lost was called

	stopWatchdog context.CancelFunc // nil without a watchdog
	watchdogDone chan struct{}
}

// Name returns the lock name.
func (l *Lock) Name() string { return l.name }

// FencingToken returns the number handed out with this lock: greater than
// every token handed out before for the same name (on the same Redis data).
// Give it to the resource the lock protects with every write, and have the
// resource refuse a token lower than the highest it has seen: then a holder
// that stalled past its TTL cannot overwrite the work of the next holder.
func (l *Lock) FencingToken() int64 { return l.fence }

// Release deletes the lock if this Lock still holds it (compare-and-delete in
// one script) and stops the watchdog. It returns an error matching ErrNotHeld
// if the lock was not held any more: expired, taken over, or released
// already. After any other error (Redis unreachable) the Lock is unchanged and
// Release may be called again.
//
// If the reply to a release that worked is lost and the client resends it
// (go-redis retries on network errors), the resend finds no key and reports
// ErrNotHeld: the lock is gone either way.
func (l *Lock) Release(ctx context.Context) error {
	n, err := l.locker.scripts.release.run(ctx, l.locker.client, l.keys[:1], l.token)
	if err != nil {
		return &Error{Op: "release", Name: l.name, Err: err}
	}
	if n == 0 {
		notHeld := &Error{Op: "release", Name: l.name, Err: ErrNotHeld}
		l.end(notHeld, true)
		l.waitWatchdog()
		return notHeld
	}
	l.end(nil, false)
	l.waitWatchdog()
	return nil
}

// waitWatchdog waits until the watchdog goroutine, if any, has returned, so
// that nothing of the Lock runs after Release.
func (l *Lock) waitWatchdog() {
	if l.watchdogDone != nil {
		<-l.watchdogDone
	}
}

// Refresh sets the lock's time to live to ttl (at least MinTTL) if this Lock
// still holds it (compare-and-extend in one script). If the lock is gone, or
// was lost or released before, it returns an error matching ErrNotHeld and
// the Lock is lost.
func (l *Lock) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := checkTTL(ttl); err != nil {
		return &Error{Op: "refresh", Name: l.name, Err: err}
	}
	return l.refresh(ctx, ttl, ttl.Milliseconds())
}

func (l *Lock) refresh(ctx context.Context, ttl time.Duration, ttlArg any) error {
	if err := l.Err(); err != nil {
		return err
	}
	sent := time.Now()
	n, err := l.locker.scripts.refresh.run(ctx, l.locker.client, l.keys[:1], l.token, ttlArg)
	if err != nil {
		return &Error{Op: "refresh", Name: l.name, Err: err}
	}
	if n == 0 {
		notHeld := &Error{Op: "refresh", Name: l.name, Err: ErrNotHeld}
		l.end(notHeld, true)
		return notHeld
	}
	l.mu.Lock()
	if !l.ended {
		l.until = sent.Add(ttl)
	}
	l.mu.Unlock()
	return nil
}

// TTL returns the lock's remaining time to live as Redis counts it, if this
// Lock still holds it; otherwise an error matching ErrNotHeld, and the Lock is
// lost.
func (l *Lock) TTL(ctx context.Context) (time.Duration, error) {
	if err := l.Err(); err != nil {
		return 0, err
	}
	n, err := l.locker.scripts.pttl.run(ctx, l.locker.client, l.keys[:1], l.token)
	if err != nil {
		return 0, &Error{Op: "ttl", Name: l.name, Err: err}
	}
	if n == -3 {
		notHeld := &Error{Op: "ttl", Name: l.name, Err: ErrNotHeld}
		l.end(notHeld, true)
		return 0, notHeld
	}
	return time.Duration(n) * time.Millisecond, nil
}

// Lost returns a channel that is closed when this Lock is known not to be
// held any more: lost (see Lock) or released. Once it is closed, Err says why.
//
// The TTL bound is checked with the local clock from when the acquire or
// last refresh was sent, which is no later than when Redis started counting;
// so Lost closes no later than Redis expires the key, unless the two clocks
// drift apart by more than the time between sending and Redis answering.
func (l *Lock) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost == nil {
		// Made on demand: a Lock nobody watches costs no channel and no timer.
		l.lost = make(chan struct{})
		if l.ended {
			close(l.lost)
		} else {
			l.armLocked()
		}
	}
	return l.lost
}

// Err returns nil while the Lock is held, and after that an error matching
// ErrNotHeld that says how it ended.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case !l.ended:
		return nil
	case l.why != nil:
		return l.why
	}
	// Made when asked, so that a release allocates nothing for it.
	return &Error{Op: "release", Name: l.name, Err: fmt.Errorf("%w: released", ErrNotHeld)}
}

// armLocked sets the timer that declares the lock lost at until.
func (l *Lock) armLocked() {
	d := time.Until(l.until)
	if l.timer == nil {
		l.timer = time.AfterFunc(d, l.expire)
		return
	}
	l.timer.Reset(d)
}

// expire runs when until passes: the lock is lost unless a refresh has moved
// until in the meantime.
func (l *Lock) expire() {
	l.mu.Lock()
	if l.ended {
		l.mu.Unlock()
		return
	}
	if time.Now().Before(l.until) {
		l.armLocked()
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	l.end(&Error{Op: "hold", Name: l.name, Err: fmt.Errorf("%w: ttl ran out without a refresh", ErrNotHeld)}, true)
}

// end marks the Lock as no longer held, once: it records why (nil for a
// release), closes Lost, stops the timer and the watchdog, and counts a loss
// if lost is set.
func (l *Lock) end(why error, lost bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	l.ended, l.why = true, why
	if lost {
		l.locker.metrics.lostOne()
	}
	if l.lost != nil {
		close(l.lost)
	}
	if l.timer != nil {
		l.timer.Stop()
	}
	if l.stopWatchdog != nil {
		l.stopWatchdog()
	}
}

// startWatchdog refreshes the lock every TTL/3 in a goroutine (every TTL/12
// after a failed refresh), until the Lock ends. It keeps ctx's values but not its cancellation: the lock outlives the
// context it was acquired with.
func (l *Lock) startWatchdog(ctx context.Context) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.stopWatchdog = cancel
	l.watchdogDone = make(chan struct{})
	go l.watch(ctx)
}

func (l *Lock) watch(ctx context.Context) {
	defer close(l.watchdogDone)
	// Every TTL/3 after a refresh; sooner after a failed one, so that one
	// network blip does not spend a third of the lock's remaining time.
	every, retry := max(l.ttl/3, time.Microsecond), max(l.ttl/12, time.Microsecond)
	timer := time.NewTimer(every)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		l.mu.Lock()
		until := l.until
		l.mu.Unlock()
		refreshCtx, cancel := context.WithDeadline(ctx, until)
		err := l.refresh(refreshCtx, l.ttl, l.ttlArg)
		cancel()
		if err == nil {
			timer.Reset(every)
			continue
		}
		if ctx.Err() != nil || l.Err() != nil {
			return // released, or refresh found the lock gone
		}
		if !time.Now().Before(until) {
			// Redis could not be reached for a whole TTL: the key may have
			// expired, so the lock cannot be relied upon any more.
			l.end(&Error{Op: "hold", Name: l.name, Err: fmt.Errorf("%w: ttl ran out without a refresh: %w", ErrNotHeld, err)}, true)
			return
		}
		timer.Reset(retry)
	}
}
