package mutex_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/allot/allot/pkg/mutex"
)

// backend is a Redis server the behaviour tests run on: miniredis in
// mutex_test.go, the real one in integration_test.go.
type backend struct {
	// newClient returns a new client (its own connection pool) to the
	// server, closed when the test ends.
	newClient func(t *testing.T) *redis.Client
	// advance lets d pass on the server's expiry clock.
	advance func(t *testing.T, d time.Duration)
}

// behaviours are the tests every backend runs.
var behaviours = []struct {
	name string
	test func(t *testing.T, b backend)
}{
	{"MutualExclusionUnderContention", testMutualExclusion},
	{"ExpiryLetsAnotherHolderIn", testExpiry},
	{"StaleHolderIsRefused", testStaleHolderRefused},
	{"LostClosesWithoutRefresh", testLostWithoutRefresh},
	{"LostClosesWhenTakenOver", testLostWhenTakenOver},
	{"FencingTokensIncrease", testFencingTokens},
	{"AcquireWaits", testAcquireWaits},
	{"RefreshAndTTL", testRefreshAndTTL},
	{"WatchdogKeepsLock", testWatchdog},
	{"WithLock", testWithLock},
	{"Preload", testPreload},
	{"Lead", testLead},
}

func runBehaviours(t *testing.T, b backend) {
	t.Helper()
	for _, bt := range behaviours {
		t.Run(bt.name, func(t *testing.T) { bt.test(t, b) })
	}
}

// keyPrefix returns a prefix no other test uses, and deletes every key under
// it when the test ends.
func (b backend) keyPrefix(t *testing.T) string {
	t.Helper()
	prefix := "allottest-" + rand.Text()[:12] + ":"
	c := b.newClient(t)
	t.Cleanup(func() {
		ctx := context.WithoutCancel(t.Context())
		iter := c.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			if err := c.Del(ctx, iter.Val()).Err(); err != nil {
				t.Errorf("clean up %s: %v", iter.Val(), err)
			}
		}
		if err := iter.Err(); err != nil {
			t.Errorf("clean up %s*: %v", prefix, err)
		}
	})
	return prefix
}

// locker returns a Locker on a new client of b under prefix.
func (b backend) locker(t *testing.T, prefix string) *mutex.Locker {
	t.Helper()
	l, err := mutex.New(b.newClient(t), mutex.Options{Prefix: prefix})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l
}

// lockKey is the documented layout of a lock key (see keys.go).
func lockKey(prefix, name string) string { return prefix + "lock:{" + name + "}" }

func mustAcquire(t *testing.T, l *mutex.Locker, name string, opts mutex.LockOptions) *mutex.Lock {
	t.Helper()
	lk, err := l.TryAcquire(t.Context(), name, opts)
	if err != nil {
		t.Fatalf("TryAcquire(%q): %v", name, err)
	}
	return lk
}

func mustRelease(t *testing.T, lk *mutex.Lock) {
	t.Helper()
	if err := lk.Release(t.Context()); err != nil {
		t.Fatalf("Release(%q): %v", lk.Name(), err)
	}
}

// wantErr fails unless err matches target and names the lock.
func wantErr(t *testing.T, what string, err, target error, name string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
	var e *mutex.Error
	if !errors.As(err, &e) || e.Name != name {
		t.Fatalf("%s: error %v does not name lock %q", what, err, name)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// testMutualExclusion: 3 clients x 50 goroutines increment a plain int under
// the lock, reading and writing it in two steps with a yield between; a
// second holder at any moment would lose increments.
func testMutualExclusion(t *testing.T, b backend) {
	const clients, goroutines, rounds = 3, 50, 2
	prefix := b.keyPrefix(t)
	var lockers []*mutex.Locker
	for range clients {
		lockers = append(lockers, b.locker(t, prefix))
	}
	opts := mutex.LockOptions{TTL: 30 * time.Second} // default backoff
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	var (
		counter   int // deliberately unprotected but for the lock
		holders   atomic.Int32
		lastFence atomic.Int64
		wg        sync.WaitGroup
	)
	for i := range clients * goroutines {
		l := lockers[i%clients]
		wg.Go(func() {
			for range rounds {
				lk, err := l.Acquire(ctx, "counter", opts)
				if err != nil {
					t.Error(err)
					return
				}
				if n := holders.Add(1); n != 1 {
					t.Errorf("%d holders at once", n)
				}
				if prev := lastFence.Swap(lk.FencingToken()); prev >= lk.FencingToken() {
					t.Errorf("fencing token %d after %d", lk.FencingToken(), prev)
				}
				v := counter
				runtime.Gosched()
				counter = v + 1
				holders.Add(-1)
				if err := lk.Release(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if diff := cmp.Diff(clients*goroutines*rounds, counter); diff != "" {
		t.Errorf("counter (-want +got):\n%s", diff)
	}
}

// testExpiry: once the holder's TTL has run out on the server, another
// holder gets the lock, with a greater fencing token.
func testExpiry(t *testing.T, b backend) {
	prefix := b.keyPrefix(t)
	first, second := b.locker(t, prefix), b.locker(t, prefix)
	opts := mutex.LockOptions{TTL: 100 * time.Millisecond}

	a := mustAcquire(t, first, "job", opts)
	_, err := second.TryAcquire(t.Context(), "job", opts)
	wantErr(t, "TryAcquire while held", err, mutex.ErrNotAcquired, "job")

	b.advance(t, 150*time.Millisecond)
	c := mustAcquire(t, second, "job", opts)
	if c.FencingToken() <= a.FencingToken() {
		t.Errorf("fencing token after expiry %d, want more than %d", c.FencingToken(), a.FencingToken())
	}
	mustRelease(t, c)
}

// testStaleHolderRefused: after its lock expired and another holder took it,
// the old holder can neither release, refresh nor read it, and the new
// holder keeps it. Releasing twice is refused too.
func testStaleHolderRefused(t *testing.T, b backend) {
	ops := []struct {
		name string
		op   func(ctx context.Context, lk *mutex.Lock) error
	}{
		{"Release", func(ctx context.Context, lk *mutex.Lock) error { return lk.Release(ctx) }},
		{"Refresh", func(ctx context.Context, lk *mutex.Lock) error { return lk.Refresh(ctx, time.Minute) }},
		{"TTL", func(ctx context.Context, lk *mutex.Lock) error { _, err := lk.TTL(ctx); return err }},
	}
	for _, tt := range ops {
		t.Run(tt.name, func(t *testing.T) {
			prefix := b.keyPrefix(t)
			l := b.locker(t, prefix)
			stale := mustAcquire(t, l, "job", mutex.LockOptions{TTL: 100 * time.Millisecond})
			b.advance(t, 150*time.Millisecond)
			owner := mustAcquire(t, l, "job", mutex.LockOptions{TTL: time.Minute})

			wantErr(t, tt.name+" by the stale holder", tt.op(t.Context(), stale), mutex.ErrNotHeld, "job")
			if !isClosed(stale.Lost()) {
				t.Error("stale holder's Lost() still open")
			}
			if ttl, err := owner.TTL(t.Context()); err != nil || ttl <= 0 {
				t.Fatalf("owner's TTL after the stale %s = %v, %v; want > 0, nil", tt.name, ttl, err)
			}
			mustRelease(t, owner)
			wantErr(t, "second Release", owner.Release(t.Context()), mutex.ErrNotHeld, "job")
		})
	}
}

// testLostWithoutRefresh: a holder that never refreshes sees Lost() close
// once its TTL has run out, and Err() says so.
func testLostWithoutRefresh(t *testing.T, b backend) {
	l := b.locker(t, b.keyPrefix(t))
	lk := mustAcquire(t, l, "job", mutex.LockOptions{TTL: time.Second})
	lost := lk.Lost()
	if isClosed(lost) {
		t.Fatal("Lost() closed right after acquiring")
	}
	if err := lk.Err(); err != nil {
		t.Fatalf("Err() while held = %v", err)
	}
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("Lost() still open 5s after a 1s TTL")
	}
	wantErr(t, "Err() after loss", lk.Err(), mutex.ErrNotHeld, "job")
	wantErr(t, "Refresh after loss", lk.Refresh(t.Context(), time.Second), mutex.ErrNotHeld, "job")
}

// testLostWhenTakenOver: Lost() closes as soon as a refresh finds the lock
// taken by another holder.
func testLostWhenTakenOver(t *testing.T, b backend) {
	prefix := b.keyPrefix(t)
	l := b.locker(t, prefix)
	lk := mustAcquire(t, l, "job", mutex.LockOptions{TTL: 100 * time.Millisecond})
	lost := lk.Lost()
	b.advance(t, 150*time.Millisecond)
	other := mustAcquire(t, b.locker(t, prefix), "job", mutex.LockOptions{TTL: time.Minute})
	defer mustRelease(t, other)

	wantErr(t, "Refresh after takeover", lk.Refresh(t.Context(), time.Minute), mutex.ErrNotHeld, "job")
	if !isClosed(lost) {
		t.Error("Lost() still open after a refresh found the lock taken")
	}
}

// testFencingTokens: tokens strictly increase per name, across releases and
// Lockers, and each name counts on its own.
func testFencingTokens(t *testing.T, b backend) {
	prefix := b.keyPrefix(t)
	lockers := []*mutex.Locker{b.locker(t, prefix), b.locker(t, prefix)}
	opts := mutex.LockOptions{TTL: time.Minute}
	var got []int64
	for i := range 20 {
		lk := mustAcquire(t, lockers[i%2], "job", opts)
		got = append(got, lk.FencingToken())
		mustRelease(t, lk)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("fencing tokens %v do not strictly increase", got)
		}
	}
	if got[0] < 1 {
		t.Errorf("first fencing token %d, want >= 1", got[0])
	}

	other := mustAcquire(t, lockers[0], "other-job", opts)
	defer mustRelease(t, other)
	if diff := cmp.Diff(int64(1), other.FencingToken()); diff != "" {
		t.Errorf("first token of a new name (-want +got):\n%s", diff)
	}
}

// testAcquireWaits: Acquire waits for a release; it gives up after MaxWait,
// or when the context ends, with ErrNotAcquired.
func testAcquireWaits(t *testing.T, b backend) {
	prefix := b.keyPrefix(t)
	l := b.locker(t, prefix)
	holder := mustAcquire(t, l, "job", mutex.LockOptions{TTL: time.Minute})

	t.Run("MaxWait", func(t *testing.T) {
		start := time.Now()
		_, err := l.Acquire(t.Context(), "job", mutex.LockOptions{TTL: time.Second, MaxWait: 150 * time.Millisecond})
		wantErr(t, "Acquire past MaxWait", err, mutex.ErrNotAcquired, "job")
		if waited := time.Since(start); waited < 150*time.Millisecond {
			t.Errorf("gave up after %v, before MaxWait 150ms", waited)
		}
	})
	t.Run("ContextDeadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		_, err := l.Acquire(ctx, "job", mutex.LockOptions{TTL: time.Second})
		wantErr(t, "Acquire past the context deadline", err, mutex.ErrNotAcquired, "job")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v does not match context.DeadlineExceeded", err)
		}
	})
	t.Run("UntilReleased", func(t *testing.T) {
		got := make(chan error, 1)
		go func() {
			lk, err := l.Acquire(t.Context(), "job", mutex.LockOptions{TTL: time.Minute, MaxWait: 10 * time.Second, MinRetry: time.Millisecond, MaxRetry: 50 * time.Millisecond})
			if err == nil {
				if lk.FencingToken() <= holder.FencingToken() {
					err = fmt.Errorf("token %d after %d", lk.FencingToken(), holder.FencingToken())
				}
				err = errors.Join(err, lk.Release(context.WithoutCancel(t.Context())))
			}
			got <- err
		}()
		time.Sleep(50 * time.Millisecond)
		mustRelease(t, holder)
		if err := <-got; err != nil {
			t.Errorf("waiting Acquire: %v", err)
		}
	})
}

// testRefreshAndTTL: Refresh sets a new TTL, which TTL reports.
func testRefreshAndTTL(t *testing.T, b backend) {
	l := b.locker(t, b.keyPrefix(t))
	lk := mustAcquire(t, l, "job", mutex.LockOptions{TTL: 2 * time.Second})
	defer mustRelease(t, lk)
	if ttl, err := lk.TTL(t.Context()); err != nil || ttl <= 0 || ttl > 2*time.Second {
		t.Fatalf("TTL = %v, %v; want in (0, 2s]", ttl, err)
	}
	if err := lk.Refresh(t.Context(), time.Minute); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if ttl, err := lk.TTL(t.Context()); err != nil || ttl <= 30*time.Second || ttl > time.Minute {
		t.Fatalf("TTL after Refresh(1m) = %v, %v; want in (30s, 1m]", ttl, err)
	}
}

// testWatchdog: with the watchdog on, a lock outlives several TTLs. (The TTL
// leaves room for a loaded test machine: the watchdog must get a refresh
// through within 2/3 of it.)
func testWatchdog(t *testing.T, b backend) {
	l := b.locker(t, b.keyPrefix(t))
	const ttl = 900 * time.Millisecond
	lk := mustAcquire(t, l, "job", mutex.LockOptions{TTL: ttl, Watchdog: true})
	lost := lk.Lost()
	time.Sleep(3 * ttl)
	b.advance(t, ttl/2) // miniredis: let server time pass, less than one TTL
	if isClosed(lost) {
		t.Fatalf("Lost() closed under the watchdog: %v", lk.Err())
	}
	if got, err := lk.TTL(t.Context()); err != nil || got <= 0 {
		t.Fatalf("TTL = %v, %v; want > 0, nil", got, err)
	}
	mustRelease(t, lk)
	if !isClosed(lost) {
		t.Error("Lost() still open after Release")
	}
}

// testWithLock: fn runs under the lock, which is released afterwards; fn's
// error comes back; fn's context is cancelled when the lock is lost.
func testWithLock(t *testing.T, b backend) {
	prefix := b.keyPrefix(t)
	l := b.locker(t, prefix)
	opts := mutex.LockOptions{TTL: 900 * time.Millisecond}

	t.Run("RunsAndReleases", func(t *testing.T) {
		errFn := errors.New("fn failed")
		err := l.WithLock(t.Context(), "job", opts, func(ctx context.Context) error {
			if _, err := l.TryAcquire(ctx, "job", opts); !errors.Is(err, mutex.ErrNotAcquired) {
				t.Errorf("TryAcquire inside WithLock: %v, want ErrNotAcquired", err)
			}
			return errFn
		})
		if !errors.Is(err, errFn) {
			t.Errorf("WithLock = %v, want fn's error", err)
		}
		mustRelease(t, mustAcquire(t, l, "job", opts))
	})
	t.Run("CancelsWhenLost", func(t *testing.T) {
		raw := b.newClient(t)
		err := l.WithLock(t.Context(), "job", opts, func(ctx context.Context) error {
			// Someone else's token replaces ours, as after an expiry and a
			// new holder; the watchdog's next refresh finds out.
			if err := raw.Set(ctx, lockKey(prefix, "job"), "someone-else", time.Minute).Err(); err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				if !errors.Is(context.Cause(ctx), mutex.ErrNotHeld) {
					t.Errorf("fn's context cause %v, want ErrNotHeld", context.Cause(ctx))
				}
				return nil
			case <-time.After(5 * time.Second):
				return errors.New("fn's context not cancelled 5s after the lock was lost")
			}
		})
		wantErr(t, "WithLock after loss", err, mutex.ErrNotHeld, "job")
		if got, err := raw.Get(t.Context(), lockKey(prefix, "job")).Result(); err != nil || got != "someone-else" {
			t.Errorf("new holder's key = %q, %v; want it untouched", got, err)
		}
	})
}

// testPreload: Preload loads the scripts, and locks work after it. (SCRIPT
// FLUSH is tested on miniredis only: on a shared server it would pull the
// scripts from under other programs' pipelines.)
func testPreload(t *testing.T, b backend) {
	l := b.locker(t, b.keyPrefix(t))
	for range 2 {
		if err := l.Preload(t.Context()); err != nil {
			t.Fatalf("Preload: %v", err)
		}
	}
	mustRelease(t, mustAcquire(t, l, "job", mutex.LockOptions{TTL: time.Second}))
}

// Two Lead loops on one lock: one works, the other waits; when the first
// stops it lets go and the second takes over within an interval.
func testLead(t *testing.T, b backend) {
	prefix := b.keyPrefix(t)
	l1, l2 := b.locker(t, prefix), b.locker(t, prefix)
	var works [2]atomic.Int64
	var leading [2]atomic.Bool
	run := func(i int, lk *mutex.Locker) (context.CancelFunc, chan struct{}) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			lk.Lead(ctx, "leader", 50*time.Millisecond, mutex.LockOptions{TTL: time.Second}, mutex.LeadHooks{
				Acquired: func(*mutex.Lock) { leading[i].Store(true) },
				Released: func() { leading[i].Store(false) },
				Error:    func(err error) { t.Errorf("lead %d: %v", i, err) },
			}, func(context.Context) { works[i].Add(1) })
		}()
		return cancel, done
	}
	stop1, done1 := run(0, l1)
	waitFor(t, func() bool { return works[0].Load() >= 3 })
	stop2, done2 := run(1, l2)
	defer func() { stop2(); <-done2 }()
	time.Sleep(200 * time.Millisecond)
	if works[1].Load() != 0 || leading[1].Load() {
		t.Fatalf("the second loop worked %d times while the first led", works[1].Load())
	}
	stop1()
	<-done1
	if leading[0].Load() {
		t.Error("the first loop did not report letting go")
	}
	waitFor(t, func() bool { return works[1].Load() >= 2 })
	if !leading[1].Load() {
		t.Error("the second loop works without saying it leads")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
	}
}
