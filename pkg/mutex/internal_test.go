package mutex

import (
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
)

func TestLockKeys(t *testing.T) {
	tests := []struct {
		prefix, name    string
		wantLock, wantF string
	}{
		{"allot:", "job", "allot:lock:{job}", "allot:lock:{job}:fence"},
		{"", "a b", "lock:{a b}", "lock:{a b}:fence"},
		{"x:", "}:fence", "x:lock:{}:fence}", "x:lock:{}:fence}:fence"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lock, fence := lockKeys(tt.prefix, tt.name)
			if diff := cmp.Diff([]string{tt.wantLock, tt.wantF}, []string{lock, fence}); diff != "" {
				t.Errorf("lockKeys(%q, %q) (-want +got):\n%s", tt.prefix, tt.name, diff)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	const lo, hi = 8 * time.Millisecond, 512 * time.Millisecond
	tests := []struct {
		attempt int
		bound   time.Duration
	}{
		{0, 8 * time.Millisecond},
		{1, 16 * time.Millisecond},
		{5, 256 * time.Millisecond},
		{6, 512 * time.Millisecond},
		{7, 512 * time.Millisecond},
		{63, 512 * time.Millisecond},
		{1 << 20, 512 * time.Millisecond},
	}
	for _, tt := range tests {
		for range 100 {
			if d := backoff(tt.attempt, lo, hi); d < tt.bound/2 || d >= tt.bound {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v)", tt.attempt, d, tt.bound/2, tt.bound)
			}
		}
	}

	// Huge bounds: lo<<attempt would overflow into a negative wait.
	for attempt := range 70 {
		if d := backoff(attempt, time.Hour, 1<<62); d < time.Hour/2 {
			t.Fatalf("backoff(%d, 1h, 1<<62) = %v, want >= 30m", attempt, d)
		}
	}
	// The smallest bounds still give a wait.
	if d := backoff(0, 1, 1); d != 0 {
		t.Errorf("backoff(0, 1ns, 1ns) = %v, want 0", d)
	}
}

func TestLockOptionsDefaults(t *testing.T) {
	tests := []struct {
		name     string
		in, want LockOptions
	}{
		{"Zero", LockOptions{TTL: time.Second}, LockOptions{TTL: time.Second, MinRetry: defaultMinRetry, MaxRetry: defaultMaxRetry}},
		{"OnlyMax", LockOptions{TTL: time.Second, MaxRetry: time.Millisecond}, LockOptions{TTL: time.Second, MinRetry: time.Millisecond, MaxRetry: time.Millisecond}},
		{"OnlyMin", LockOptions{TTL: time.Second, MinRetry: time.Second}, LockOptions{TTL: time.Second, MinRetry: time.Second, MaxRetry: time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in
			if err := got.check(); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("check() (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTokensDiffer: tokens are 22 characters and do not repeat.
func TestTokensDiffer(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		tok := newToken()
		if len(tok) != 22 || seen[tok] {
			t.Fatalf("token %q: repeated or not 22 characters", tok)
		}
		seen[tok] = true
	}
}

// TestAcquireScriptIsIdempotent: go-redis resends a command whose reply was
// lost; the resent acquire must report the lock as taken, with the same
// fencing token, rather than as held by someone else.
func TestAcquireScriptIsIdempotent(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	l, err := New(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	lk := l.newLock("job", time.Minute)
	var got []int64
	for range 2 {
		n, err := l.scripts.acquire.run(t.Context(), c, lk.keys[:], lk.token, lk.ttlArg)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
	}
	other := l.newLock("job", time.Minute)
	n, err := l.scripts.acquire.run(t.Context(), c, other.keys[:], other.token, other.ttlArg)
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, n)
	// The third is another holder: refused, told the remaining 60000ms.
	if diff := cmp.Diff([]int64{1, 1, -1 - 60000}, got); diff != "" {
		t.Errorf("acquire twice with one token, then with another (-want +got):\n%s", diff)
	}
}
