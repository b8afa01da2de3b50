package mutex_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/allot/allot/pkg/mutex"
)

// miniBackend runs a miniredis server for the test. Its clock moves only by
// FastForward, which is what advance does.
func miniBackend(t *testing.T) (backend, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	return backend{
		newClient: func(t *testing.T) *redis.Client {
			t.Helper()
			// miniredis starts a new Lua interpreter for every script call:
			// slow under -race on a busy machine, hence the read timeout.
			c := redis.NewClient(&redis.Options{Addr: mr.Addr(), ReadTimeout: 30 * time.Second})
			t.Cleanup(func() { _ = c.Close() })
			return c
		},
		advance: func(t *testing.T, d time.Duration) { mr.FastForward(d) },
	}, mr
}

func TestMiniredis(t *testing.T) {
	b, _ := miniBackend(t)
	runBehaviours(t, b)
}

// TestScriptsReloadAfterFlush: after SCRIPT FLUSH (or a server restart) the
// scripts go out again as EVAL and everything works.
func TestScriptsReloadAfterFlush(t *testing.T) {
	b, _ := miniBackend(t)
	raw := b.newClient(t)
	l := b.locker(t, b.keyPrefix(t))
	for i := range 2 {
		if err := raw.ScriptFlush(t.Context()).Err(); err != nil {
			t.Fatalf("SCRIPT FLUSH: %v", err)
		}
		lk := mustAcquire(t, l, "job", mutex.LockOptions{TTL: time.Minute})
		if err := raw.ScriptFlush(t.Context()).Err(); err != nil {
			t.Fatalf("SCRIPT FLUSH: %v", err)
		}
		if _, err := lk.TTL(t.Context()); err != nil {
			t.Fatalf("round %d: TTL: %v", i, err)
		}
		if err := lk.Refresh(t.Context(), time.Minute); err != nil {
			t.Fatalf("round %d: Refresh: %v", i, err)
		}
		mustRelease(t, lk)
	}
}

// TestKeysUseHashTags checks the key layout in Redis: both keys of a lock
// carry the name as their hash tag, under the configured prefix.
func TestKeysUseHashTags(t *testing.T) {
	tests := []struct {
		name   string
		prefix string
		want   []string
	}{
		{"DefaultPrefix", "", []string{"allot:lock:{job}", "allot:lock:{job}:fence"}},
		{"OwnPrefix", "tenant1:", []string{"tenant1:lock:{job}", "tenant1:lock:{job}:fence"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, mr := miniBackend(t)
			l, err := mutex.New(b.newClient(t), mutex.Options{Prefix: tt.prefix})
			if err != nil {
				t.Fatal(err)
			}
			lk := mustAcquire(t, l, "job", mutex.LockOptions{TTL: time.Minute})
			if diff := cmp.Diff(tt.want, mr.Keys()); diff != "" {
				t.Errorf("keys (-want +got):\n%s", diff)
			}
			mustRelease(t, lk)
			if diff := cmp.Diff(tt.want[1:], mr.Keys()); diff != "" {
				t.Errorf("keys after Release (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBadInput: every bad argument is an error matching ErrInvalid, never a
// panic, and says what is wrong.
func TestBadInput(t *testing.T) {
	b, _ := miniBackend(t)
	client := b.newClient(t)

	t.Run("New", func(t *testing.T) {
		var nilClient *redis.Client
		var nilUniversal redis.UniversalClient
		tests := []struct {
			name    string
			client  mutex.Scripter
			opts    mutex.Options
			wantMsg string
		}{
			{"NilClient", nil, mutex.Options{}, "nil client"},
			{"TypedNilClient", nilClient, mutex.Options{}, "nil client"},
			{"NilUniversalClient", nilUniversal, mutex.Options{}, "nil client"},
			{"PrefixWithBrace", client, mutex.Options{Prefix: "a{b}:"}, "prefix"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				l, err := mutex.New(tt.client, tt.opts)
				if !errors.Is(err, mutex.ErrInvalid) || !strings.Contains(err.Error(), tt.wantMsg) {
					t.Fatalf("New = %v, %v; want ErrInvalid mentioning %q", l, err, tt.wantMsg)
				}
				if !strings.HasPrefix(err.Error(), "mutex: ") {
					t.Errorf("message %q lacks the mutex: prefix", err)
				}
			})
		}
	})

	l, err := mutex.New(client, mutex.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ok := mutex.LockOptions{TTL: time.Second}
	tests := []struct {
		name    string
		lock    string
		opts    mutex.LockOptions
		wantMsg string
	}{
		{"EmptyName", "", ok, "empty lock name"},
		{"OversizedName", strings.Repeat("x", mutex.MaxNameLen+1), ok, "201 bytes"},
		{"HugeName", strings.Repeat("x", 1<<20), ok, "1048576 bytes"},
		{"ZeroTTL", "job", mutex.LockOptions{}, "ttl 0s"},
		{"NegativeTTL", "job", mutex.LockOptions{TTL: -time.Second}, "ttl -1s"},
		{"SubMillisecondTTL", "job", mutex.LockOptions{TTL: 999 * time.Microsecond}, "ttl 999µs is under 1ms"},
		{"NegativeMaxWait", "job", mutex.LockOptions{TTL: time.Second, MaxWait: -1}, "negative max wait"},
		{"NegativeRetry", "job", mutex.LockOptions{TTL: time.Second, MinRetry: -1}, "negative retry"},
		{"MinRetryOverMax", "job", mutex.LockOptions{TTL: time.Second, MinRetry: time.Second, MaxRetry: time.Millisecond}, "more than max retry"},
	}
	calls := []struct {
		name string
		call func(ctx context.Context, name string, opts mutex.LockOptions) error
	}{
		{"Acquire", func(ctx context.Context, name string, opts mutex.LockOptions) error {
			_, err := l.Acquire(ctx, name, opts)
			return err
		}},
		{"TryAcquire", func(ctx context.Context, name string, opts mutex.LockOptions) error {
			_, err := l.TryAcquire(ctx, name, opts)
			return err
		}},
		{"WithLock", func(ctx context.Context, name string, opts mutex.LockOptions) error {
			return l.WithLock(ctx, name, opts, func(context.Context) error {
				return errors.New("fn must not run")
			})
		}},
	}
	for _, call := range calls {
		for _, tt := range tests {
			t.Run(call.name+"/"+tt.name, func(t *testing.T) {
				err := call.call(t.Context(), tt.lock, tt.opts)
				var e *mutex.Error
				if !errors.Is(err, mutex.ErrInvalid) || !errors.As(err, &e) || e.Name != tt.lock {
					t.Fatalf("got %v; want an *Error for the lock matching ErrInvalid", err)
				}
				if msg := err.Error(); !strings.HasPrefix(msg, "mutex: acquire ") || !strings.Contains(msg, tt.wantMsg) || len(msg) > 400 {
					t.Errorf("message %q: want it short, prefixed \"mutex: acquire\" and mentioning %q", msg, tt.wantMsg)
				}
			})
		}
	}

	t.Run("RefreshTTL", func(t *testing.T) {
		lk := mustAcquire(t, l, "refresh-ttl", ok)
		defer mustRelease(t, lk)
		for _, ttl := range []time.Duration{0, -time.Second, time.Microsecond} {
			if err := lk.Refresh(t.Context(), ttl); !errors.Is(err, mutex.ErrInvalid) {
				t.Errorf("Refresh(%v) = %v, want ErrInvalid", ttl, err)
			}
		}
	})
}

// TestRedisDown: an unreachable server is an error that is neither
// ErrNotAcquired nor ErrNotHeld, and the Lock can be released once the
// server is back.
func TestRedisDown(t *testing.T) {
	b, mr := miniBackend(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = client.Close() })
	l, err := mutex.New(client, mutex.Options{Prefix: b.keyPrefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	lk := mustAcquire(t, l, "job", mutex.LockOptions{TTL: time.Minute})
	addr := mr.Addr()
	mr.Close()

	_, err = l.TryAcquire(t.Context(), "job", mutex.LockOptions{TTL: time.Minute})
	var e *mutex.Error
	if err == nil || errors.Is(err, mutex.ErrNotAcquired) || !errors.As(err, &e) || e.Name != "job" {
		t.Errorf("TryAcquire with Redis down = %v; want a Redis error naming the lock", err)
	}
	err = lk.Release(t.Context())
	if err == nil || errors.Is(err, mutex.ErrNotHeld) {
		t.Errorf("Release with Redis down = %v; want a Redis error", err)
	}
	if lk.Err() != nil {
		t.Errorf("a failed Release ended the lock: %v", lk.Err())
	}

	if err := mr.StartAddr(addr); err != nil {
		t.Fatalf("restart miniredis: %v", err)
	}
	mustRelease(t, lk)
}

// gathered returns the value of every counter and the sample count of every
// histogram in reg, keyed by name and labels.
func gathered(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, lp := range m.GetLabel() {
				key += "{" + lp.GetName() + "=" + lp.GetValue() + "}"
			}
			switch {
			case m.GetCounter() != nil:
				got[key] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				got[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return got
}

func TestMetrics(t *testing.T) {
	b, mr := miniBackend(t)
	reg := prometheus.NewRegistry()
	prefix := b.keyPrefix(t)
	newLocker := func(t *testing.T) *mutex.Locker {
		t.Helper()
		l, err := mutex.New(b.newClient(t), mutex.Options{Prefix: prefix, Registerer: reg})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		return l
	}
	// Two Lockers on one registry share the series.
	first, second := newLocker(t), newLocker(t)

	want := map[string]float64{
		"allot_mutex_acquisitions_total{result=acquired}":     0,
		"allot_mutex_acquisitions_total{result=not_acquired}": 0,
		"allot_mutex_acquisitions_total{result=error}":        0,
		"allot_mutex_wait_seconds_count":                      0,
		"allot_mutex_lost_total":                              0,
	}
	check := func(t *testing.T, step string) {
		t.Helper()
		if diff := cmp.Diff(want, gathered(t, reg)); diff != "" {
			t.Errorf("after %s (-want +got):\n%s", step, diff)
		}
	}
	check(t, "New")

	held := mustAcquire(t, first, "job", mutex.LockOptions{TTL: 100 * time.Millisecond})
	want["allot_mutex_acquisitions_total{result=acquired}"]++
	check(t, "an acquire")

	if _, err := second.TryAcquire(t.Context(), "job", mutex.LockOptions{TTL: time.Second}); !errors.Is(err, mutex.ErrNotAcquired) {
		t.Fatalf("TryAcquire: %v", err)
	}
	want["allot_mutex_acquisitions_total{result=not_acquired}"]++
	check(t, "a TryAcquire on a held lock")

	if _, err := second.Acquire(t.Context(), "job", mutex.LockOptions{TTL: time.Second, MaxWait: 20 * time.Millisecond}); !errors.Is(err, mutex.ErrNotAcquired) {
		t.Fatalf("Acquire: %v", err)
	}
	want["allot_mutex_acquisitions_total{result=not_acquired}"]++
	want["allot_mutex_wait_seconds_count"]++
	check(t, "an Acquire that gave up")

	mr.FastForward(time.Second)
	if err := held.Refresh(t.Context(), time.Second); !errors.Is(err, mutex.ErrNotHeld) {
		t.Fatalf("Refresh of an expired lock: %v", err)
	}
	if err := held.Release(t.Context()); !errors.Is(err, mutex.ErrNotHeld) {
		t.Fatalf("Release of a lost lock: %v", err)
	}
	want["allot_mutex_lost_total"]++ // once per lock
	check(t, "a lost lock")

	mr.SetError("LOADING Redis is loading the dataset in memory")
	if _, err := first.TryAcquire(t.Context(), "job", mutex.LockOptions{TTL: time.Second}); err == nil || errors.Is(err, mutex.ErrNotAcquired) {
		t.Fatalf("TryAcquire on a failing server: %v", err)
	}
	mr.SetError("")
	want["allot_mutex_acquisitions_total{result=error}"]++
	check(t, "a failed acquire")

	t.Run("NilRegistererRecordsNothing", func(t *testing.T) {
		l := b.locker(t, prefix)
		mustRelease(t, mustAcquire(t, l, "other", mutex.LockOptions{TTL: time.Second}))
		check(t, "an acquire without metrics")
	})
}

func TestMetricsRegistrationConflict(t *testing.T) {
	b, _ := miniBackend(t)
	reg := prometheus.NewRegistry()
	// Someone else owns allot_mutex_lost_total, with another meaning.
	if err := reg.Register(prometheus.NewGauge(prometheus.GaugeOpts{Name: "allot_mutex_lost_total", Help: "not ours"})); err != nil {
		t.Fatal(err)
	}
	l, err := mutex.New(b.newClient(t), mutex.Options{Registerer: reg})
	if err == nil || !strings.HasPrefix(err.Error(), "mutex: register metrics: ") {
		t.Fatalf("New = %v, %v; want a registration error", l, err)
	}
	// Nothing half-registered is left behind.
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	if diff := cmp.Diff([]string{"allot_mutex_lost_total"}, names); diff != "" {
		t.Errorf("registered families (-want +got):\n%s", diff)
	}
}
