package mutex

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
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
