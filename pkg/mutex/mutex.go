package mutex

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	// DefaultPrefix starts every key when Options.Prefix is empty.
	DefaultPrefix = "allot:"
	// MaxNameLen is the longest lock name, in bytes.
	MaxNameLen = 200
	// MinTTL is the shortest time to live: Redis counts it in milliseconds.
	MinTTL = time.Millisecond

	defaultMinRetry = 8 * time.Millisecond
	defaultMaxRetry = 512 * time.Millisecond
)

// Options configure a Locker. The zero value is valid.
type Options struct {
	// Prefix starts every Redis key; "" means DefaultPrefix ("allot:"). It
	// must not contain '{' or '}', which would break the keys' hash tags.
	Prefix string

	// Registerer receives the Locker's Prometheus series; nil means no
	// metrics. Lockers sharing a Registerer share the series.
	Registerer prometheus.Registerer
}

// LockOptions configure one acquisition. TTL is required; the other fields
// have usable zero values.
type LockOptions struct {
	// TTL is the lock's time to live, counted by Redis from when it sets the
	// key (PX). At least MinTTL; rounded down to whole milliseconds.
	TTL time.Duration

	// MaxWait bounds how long Acquire waits for a held lock; 0 means no
	// bound other than the context. TryAcquire ignores it.
	MaxWait time.Duration

	// Watchdog refreshes the lock every TTL/3 until it is released or lost.
	Watchdog bool

	// MinRetry and MaxRetry bound Acquire's wait between two attempts: the
	// bound doubles from MinRetry (default 8ms) to MaxRetry (default 512ms),
	// and each wait is drawn between half of it and all of it. A wait is never
	// longer than the holder's remaining time to live.
	MinRetry, MaxRetry time.Duration
}

// Locker takes locks on one Redis server (or one Cluster). It is safe for
// concurrent use.
type Locker struct {
	client  Scripter
	prefix  string
	metrics *metrics
	scripts scripts
}

// New returns a Locker that runs its scripts on client.
func New(client Scripter, opts Options) (*Locker, error) {
	if isNil(client) {
		return nil, fmt.Errorf("%w: nil client", ErrInvalid)
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if strings.ContainsAny(prefix, "{}") {
		return nil, fmt.Errorf("%w: prefix %q contains '{' or '}'", ErrInvalid, prefix)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	return &Locker{client: client, prefix: prefix, metrics: m, scripts: newScripts()}, nil
}

// isNil reports whether c is nil or an interface holding a nil pointer (a
// typed nil *redis.Client would otherwise panic on first use).
func isNil(c Scripter) bool {
	if c == nil {
		return true
	}
	switch v := reflect.ValueOf(c); v.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return v.IsNil()
	}
	return false
}

// Preload loads the scripts into Redis that it does not know yet (one round
// trip when all are known). Calling it is optional: a script Redis does not
// know is sent in full once, on its first use.
func (l *Locker) Preload(ctx context.Context) error {
	all := l.scripts.all()
	hashes := make([]string, len(all))
	for i, s := range all {
		hashes[i] = s.hash
	}
	known, err := l.client.ScriptExists(ctx, hashes...).Result()
	if err != nil {
		return fmt.Errorf("mutex: preload scripts: %w", err)
	}
	for i, s := range all {
		if i < len(known) && known[i] {
			continue
		}
		if err := l.client.ScriptLoad(ctx, s.src).Err(); err != nil {
			return fmt.Errorf("mutex: preload scripts: %w", err)
		}
	}
	return nil
}

// Acquire takes the lock name, waiting while someone else holds it: it asks
// again after a backoff with jitter until it gets the lock, MaxWait has
// passed, or ctx ends. Giving up returns an error matching ErrNotAcquired
// (and ctx.Err() when ctx ended).
//
// The Lock is bound to this Locker, not to ctx: ending ctx later releases
// nothing. Release it, or let its TTL expire.
func (l *Locker) Acquire(ctx context.Context, name string, opts LockOptions) (*Lock, error) {
	return l.acquire(ctx, name, opts, true)
}

// TryAcquire takes the lock name if it is free, and otherwise returns an
// error matching ErrNotAcquired at once. MaxWait is ignored.
func (l *Locker) TryAcquire(ctx context.Context, name string, opts LockOptions) (*Lock, error) {
	return l.acquire(ctx, name, opts, false)
}

// WithLock acquires the lock name as Acquire does, with the watchdog on
// whatever opts.Watchdog says, and runs fn while holding it. The context
// given to fn is cancelled, with the loss as its cause (context.Cause), as
// soon as the lock is known to be lost; fn should then stop touching what the
// lock protects. The lock is released when fn returns.
//
// It returns the acquire error, or fn's error joined with the loss of the
// lock (matching ErrNotHeld) or a failed release.
func (l *Locker) WithLock(ctx context.Context, name string, opts LockOptions, fn func(ctx context.Context) error) error {
	opts.Watchdog = true
	lk, err := l.Acquire(ctx, name, opts)
	if err != nil {
		return err
	}
	fnCtx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-lk.Lost():
			cancel(lk.Err())
		case <-fnCtx.Done():
		}
	}()
	fnErr := fn(fnCtx)
	lostErr := lk.Err()
	cancel(nil)

	// Release even if ctx has ended. Past the TTL the lock is gone anyway,
	// but a tiny TTL must not turn into a release that times out at once.
	relCtx, relCancel := context.WithTimeout(context.WithoutCancel(ctx), max(opts.TTL, time.Second))
	defer relCancel()
	relErr := lk.Release(relCtx)
	if lostErr != nil {
		// The release then fails too; the loss says why.
		relErr = lostErr
	}
	return errors.Join(fnErr, relErr)
}

func (l *Locker) acquire(ctx context.Context, name string, opts LockOptions, wait bool) (*Lock, error) {
	if err := checkName(name); err != nil {
		return nil, &Error{Op: "acquire", Name: name, Err: err}
	}
	if err := opts.check(); err != nil {
		return nil, &Error{Op: "acquire", Name: name, Err: err}
	}
	lk := l.newLock(name, opts.TTL)
	sent := time.Now()
	n, err := l.try(ctx, lk, time.Time{})
	switch {
	case err != nil:
		return nil, err
	case n > 0:
		l.taken(ctx, lk, n, sent, opts.Watchdog)
		return lk, nil
	case !wait:
		return nil, l.notAcquired(name, time.Time{}, ErrNotAcquired)
	}
	return l.wait(ctx, lk, opts, sent, n)
}

// try runs the acquire script once: n > 0 is the fencing token of a lock
// taken, n <= -1 encodes the holder's remaining TTL (see acquire.lua). start
// is when a waiting Acquire began waiting, or zero.
func (l *Locker) try(ctx context.Context, lk *Lock, start time.Time) (n int64, _ error) {
	n, err := l.scripts.acquire.run(ctx, l.client, lk.keys[:], lk.token, lk.ttlArg)
	if err == nil {
		return n, nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		// The reply may have been lost after Redis took the lock for us;
		// then it stays taken until its TTL runs out.
		return 0, l.notAcquired(lk.name, start, fmt.Errorf("%w: %w", ErrNotAcquired, ctxErr))
	}
	l.metrics.result(resultError)
	return 0, &Error{Op: "acquire", Name: lk.name, Err: err}
}

// taken completes a Lock whose acquire returned the fencing token fence.
func (l *Locker) taken(ctx context.Context, lk *Lock, fence int64, sent time.Time, watchdog bool) {
	lk.fence = fence
	lk.until = sent.Add(lk.ttl)
	l.metrics.result(resultAcquired)
	if watchdog {
		lk.startWatchdog(ctx)
	}
}

// wait asks again, with backoff, for a lock that was held when first asked
// (at start, when the answer was n).
func (l *Locker) wait(ctx context.Context, lk *Lock, opts LockOptions, start time.Time, n int64) (*Lock, error) {
	var giveUp time.Time
	if opts.MaxWait > 0 {
		giveUp = start.Add(opts.MaxWait)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for attempt := 0; ; attempt++ {
		delay := backoff(attempt, opts.MinRetry, opts.MaxRetry)
		if holderTTL := time.Duration(-1-n) * time.Millisecond; holderTTL > 0 && delay > holderTTL {
			// The holder's key expires before then: ask right after.
			delay = holderTTL + time.Millisecond
		}
		if !giveUp.IsZero() {
			left := time.Until(giveUp)
			if left <= 0 {
				return nil, l.notAcquired(lk.name, start, fmt.Errorf("%w: still held after waiting %v", ErrNotAcquired, opts.MaxWait))
			}
			// One last attempt right at the deadline.
			delay = min(delay, left)
		}
		timer.Reset(delay)
		select {
		case <-ctx.Done():
			return nil, l.notAcquired(lk.name, start, fmt.Errorf("%w: %w", ErrNotAcquired, ctx.Err()))
		case <-timer.C:
		}

		sent := time.Now()
		var err error
		if n, err = l.try(ctx, lk, start); err != nil {
			return nil, err
		}
		if n > 0 {
			l.taken(ctx, lk, n, sent, opts.Watchdog)
			l.metrics.waited(time.Since(start))
			return lk, nil
		}
	}
}

// notAcquired counts a failed acquisition, and its wait if it waited.
func (l *Locker) notAcquired(name string, start time.Time, err error) error {
	l.metrics.result(resultNotAcquired)
	if !start.IsZero() {
		l.metrics.waited(time.Since(start))
	}
	return &Error{Op: "acquire", Name: name, Err: err}
}

// newLock makes the Lock an acquisition will return if it succeeds: its keys,
// a fresh random token, and the script arguments boxed once for its lifetime.
func (l *Locker) newLock(name string, ttl time.Duration) *Lock {
	lk := &Lock{locker: l, name: name, ttl: ttl, ttlArg: ttl.Milliseconds(), token: newToken()}
	lk.keys[0], lk.keys[1] = lockKeys(l.prefix, name)
	return lk
}

// newToken returns 128 random bits, base64url-encoded: a value nobody else
// will ever write into the lock key.
func newToken() string {
	var raw [16]byte
	_, _ = crand.Read(raw[:]) // never fails; crashes the program if the OS source is broken
	var buf [22]byte
	base64.RawURLEncoding.Encode(buf[:], raw[:])
	return string(buf[:])
}

// backoff returns the wait after the attempt-th failed attempt (from 0): the
// bound doubles from lo up to hi, and the wait is drawn from [bound/2, bound)
// so that waiters spread out.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	bound := hi
	if attempt < 63 && lo <= hi>>attempt { // so lo<<attempt cannot overflow
		bound = lo << attempt
	}
	half := bound / 2
	return half + rand.N(bound-half)
}

func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty lock name", ErrInvalid)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: lock name is %d bytes, more than %d", ErrInvalid, len(name), MaxNameLen)
	}
	return nil
}

func checkTTL(ttl time.Duration) error {
	if ttl < MinTTL {
		return fmt.Errorf("%w: ttl %v is under %v", ErrInvalid, ttl, MinTTL)
	}
	return nil
}

// check validates o and fills in the retry defaults.
func (o *LockOptions) check() error {
	if err := checkTTL(o.TTL); err != nil {
		return err
	}
	if o.MaxWait < 0 {
		return fmt.Errorf("%w: negative max wait %v", ErrInvalid, o.MaxWait)
	}
	if o.MinRetry < 0 || o.MaxRetry < 0 {
		return fmt.Errorf("%w: negative retry delay (min %v, max %v)", ErrInvalid, o.MinRetry, o.MaxRetry)
	}
	switch {
	case o.MinRetry == 0 && o.MaxRetry == 0:
		o.MinRetry, o.MaxRetry = defaultMinRetry, defaultMaxRetry
	case o.MinRetry == 0:
		o.MinRetry = min(defaultMinRetry, o.MaxRetry)
	case o.MaxRetry == 0:
		o.MaxRetry = max(defaultMaxRetry, o.MinRetry)
	}
	if o.MinRetry > o.MaxRetry {
		return fmt.Errorf("%w: min retry %v is more than max retry %v", ErrInvalid, o.MinRetry, o.MaxRetry)
	}
	return nil
}
