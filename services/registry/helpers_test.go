package registry

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

const testKey = "test-key-0123456789abcdef"

// fakeClock is Redis's clock in the tests, passed to the scripts as now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func testLog() *slog.Logger {
	if os.Getenv("ALLOT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// backend is a Redis for the behaviour tests: its client, a key prefix of
// the test's own, and how to let time pass on it (Redis expires keys on
// its own clock).
type backend struct {
	rdb     redis.UniversalClient
	prefix  string
	elapse  func(time.Duration)
	breakIt func() // makes Redis unreachable; nil if the backend cannot
}

type backendFunc func(t *testing.T) backend

func miniBackend(t *testing.T) backend {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	return backend{rdb: rdb, prefix: "allot:", elapse: mr.FastForward, breakIt: mr.Close}
}

func natsURL(t *testing.T) string {
	t.Helper()
	return testenv.EmbeddedCoreNATS(t)
}

// env is one registry (or several sharing a backend) with a client.
type env struct {
	t      *testing.T
	b      backend
	nc     *nats.Conn
	client *events.Client
	clock  *fakeClock
	url    string
}

func newEnv(t *testing.T, bf backendFunc) *env {
	t.Helper()
	e := &env{t: t, b: bf(t), clock: &fakeClock{t: time.Now().Truncate(time.Second)}, url: natsURL(t)}
	e.nc = e.connect()
	c, err := events.NewClient(e.nc, events.ClientOptions{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e.client = c
	return e
}

func (e *env) connect() *nats.Conn {
	e.t.Helper()
	nc, err := nats.Connect(e.url)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	return nc
}

func (e *env) config(keys ...string) Config {
	cfg := DefaultConfig()
	cfg.Instance = "test"
	cfg.Redis.KeyPrefix = e.b.prefix
	cfg.Registry.TTL = 2 * time.Second // short: the real Redis waits it out
	cfg.Registry.Heartbeat = time.Second
	cfg.Registry.ReapInterval = 2 * time.Second // the tests mostly reap by hand
	cfg.Registry.FindCache = 0
	cfg.Registry.Handlers = 2
	for _, k := range keys {
		cfg.Registry.Keys = append(cfg.Registry.Keys, service.Secret(k))
	}
	return cfg
}

// start starts a registry on its own NATS connection.
func (e *env) start(cfg Config, reg prometheus.Registerer) *Registry {
	e.t.Helper()
	r, err := Start(e.t.Context(), cfg, Deps{NATS: e.connect(), Redis: e.b.rdb, Registerer: reg, Log: testLog(), Now: e.clock.Now})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = r.Stop(context.Background()) })
	return r
}

// elapse lets d pass on the test clock and on Redis.
func (e *env) elapse(d time.Duration) {
	e.clock.Add(d)
	e.b.elapse(d)
}

// changes subscribes to every change event.
func (e *env) changes() <-chan events.RegistryChange {
	e.t.Helper()
	ch := make(chan events.RegistryChange, 64)
	sub, err := e.nc.Subscribe(events.DefaultSubjects().RegistryChanged("*"), func(m *nats.Msg) {
		var c events.RegistryChange
		if err := json.Unmarshal(m.Data, &c); err != nil {
			e.t.Errorf("change event %q: %v", m.Data, err)
			return
		}
		ch <- c
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := e.nc.Flush(); err != nil {
		e.t.Fatal(err)
	}
	return ch
}

// next returns the next change event, or fails after a second.
func next(t *testing.T, ch <-chan events.RegistryChange) events.RegistryChange {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(2 * time.Second):
		t.Fatal("no change event")
		return events.RegistryChange{}
	}
}

// none fails if a change event arrives within 100ms.
func none(t *testing.T, ch <-chan events.RegistryChange) {
	t.Helper()
	select {
	case c := <-ch:
		t.Fatalf("unexpected change event %+v", c)
	case <-time.After(100 * time.Millisecond):
	}
}

func serviceError(err error) *events.ServiceError {
	var serr *events.ServiceError
	if errors.As(err, &serr) {
		return serr
	}
	return nil
}

func redisZ(at time.Time, member string) redis.Z {
	return redis.Z{Score: float64(at.UnixMilli()), Member: member}
}
