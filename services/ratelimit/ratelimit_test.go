package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/testenv"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// fakeClock is a settable clock: Redis's in the tests (passed to the
// script as "now"), or a worker's local one.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// windowStart returns the start of a window of d an hour after the real
// time. The script sets expiry times on the test clock, but Redis (and
// miniredis) expires keys on the real one: starting an hour ahead keeps
// every key alive however slowly a loaded machine runs the test.
func windowStart(d time.Duration) time.Time {
	return time.Now().Add(time.Hour).Truncate(d).Add(d)
}

func ptr(n int64) *int64 { return &n }

func testLog() *slog.Logger {
	if os.Getenv("ALLOT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Instance = "test"
	cfg.RateLimit.Handlers = 2
	cfg.RateLimit.Timeout = 200 * time.Millisecond
	cfg.RateLimit.Services = map[string]Service{
		"upload":  {Limit: ptr(3), Interval: time.Minute},
		"search":  {Mode: ModeSliding, Interval: 10 * time.Second},
		"preview": {Limit: ptr(1), Interval: time.Minute, Shadow: true},
		"avatar":  {Limit: ptr(1), Interval: time.Minute, FailOpen: true},
		"feed":    {Limit: ptr(2), Interval: time.Minute, Cache: true},
	}
	return cfg
}

// env is a rate limiter on an embedded NATS and miniredis, with a fake
// Redis clock.
type env struct {
	t      *testing.T
	cfg    Config
	mr     *miniredis.Miniredis
	rdb    *redis.Client
	nc     *nats.Conn
	reg    *prometheus.Registry
	clock  *fakeClock
	local  *fakeClock
	lim    *Limiter
	client *events.Client
}

func startNATS(t testing.TB) string {
	t.Helper()
	return testenv.EmbeddedCoreNATS(t)
}

func startEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	return startEnvVia(t, cfg, nil)
}

// startEnvVia starts an env whose Redis client reaches miniredis through
// proxy, when not nil.
func startEnvVia(t *testing.T, cfg Config, proxy *hangProxy) *env {
	t.Helper()
	nc, err := nats.Connect(startNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	mr := miniredis.RunT(t)
	addr := mr.Addr()
	if proxy != nil {
		addr = proxy.start(t, mr.Addr())
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	return startEnvOn(t, cfg, nc, rdb, mr)
}

// startEnvOn starts a rate limiter on nc and rdb, under
// cfg.Redis.KeyPrefix; mr is rdb's miniredis, or nil for a real Redis.
func startEnvOn(t *testing.T, cfg Config, nc *nats.Conn, rdb *redis.Client, mr *miniredis.Miniredis) *env {
	t.Helper()
	var err error
	start := windowStart(time.Minute)
	e := &env{t: t, cfg: cfg, mr: mr, rdb: rdb, nc: nc, reg: prometheus.NewRegistry(),
		clock: &fakeClock{t: start}, local: &fakeClock{t: start.Add(-1500 * time.Millisecond)}}
	e.lim, err = Start(t.Context(), cfg, Deps{NATS: nc, Redis: rdb, Registerer: e.reg, Log: testLog(), Now: e.clock.Now, Clock: e.local.Now})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = e.lim.Stop(context.Background()) })
	e.client, _ = events.NewClient(nc, events.ClientOptions{Timeout: 2 * time.Second})
	return e
}

// advance moves Redis's clock and the local one together.
func (e *env) advance(d time.Duration) { e.clock.Add(d); e.local.Add(d) }

func (e *env) check(uid, svc string, cost *int64) events.CheckReply {
	e.t.Helper()
	r, err := e.client.Check(e.t.Context(), uid, events.CheckRequest{Service: svc, Cost: cost})
	if err != nil {
		e.t.Fatalf("check %s %s: %v", uid, svc, err)
	}
	return r
}

func (e *env) decisions(svc, result string) float64 {
	return testutil.ToFloat64(e.lim.metrics.decisions.WithLabelValues(serviceLabel(svc), result))
}

func TestCheckAndResetOverNATS(t *testing.T) {
	e := startEnv(t, testConfig())
	var got []events.CheckReply
	for range 4 {
		got = append(got, e.check("u-1", "upload", nil))
	}
	want := []events.CheckReply{
		{Allowed: true, Limit: 3, Remaining: 2, ResetAfterMs: 60000},
		{Allowed: true, Limit: 3, Remaining: 1, ResetAfterMs: 60000},
		{Allowed: true, Limit: 3, Remaining: 0, ResetAfterMs: 60000},
		{Allowed: false, Limit: 3, Remaining: 0, ResetAfterMs: 60000, RetryAfterMs: 60000},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decisions (-want +got):\n%s", diff)
	}
	// No service: the uid's own ratelimit grant, 500 per 300s.
	if r := e.check("u-1", "", events.Cost(0)); r.Limit != 500 || r.Remaining != 500 || !r.Allowed {
		t.Errorf("own limit: %+v", r)
	}
	if err := e.client.Reset(t.Context(), "u-1", "upload"); err != nil {
		t.Fatal(err)
	}
	if r := e.check("u-1", "upload", nil); !r.Allowed || r.Remaining != 2 {
		t.Errorf("after reset: %+v", r)
	}
	if e.decisions("upload", "allowed") != 4 || e.decisions("upload", "denied") != 1 {
		t.Errorf("decision counts: allowed %v denied %v", e.decisions("upload", "allowed"), e.decisions("upload", "denied"))
	}
	if n := testutil.ToFloat64(e.lim.metrics.overLimit.WithLabelValues("upload")); n != 1 {
		t.Errorf("over-limit count %v, want 1", n)
	}
	// The 3rd call (3 of 3) and the refused 4th were at or past 80%.
	if n := testutil.ToFloat64(e.lim.metrics.nearLimit.WithLabelValues("upload")); n != 2 {
		t.Errorf("near-limit count %v, want 2", n)
	}
	if n := testutil.ToFloat64(e.lim.metrics.peeks.WithLabelValues("(uid)")); n != 1 {
		t.Errorf("peeks %v, want 1", n)
	}
	if n := testutil.CollectAndCount(e.reg, "allot_ratelimit_decision_seconds"); n != 1 {
		t.Errorf("latency histogram series %d", n)
	}
	// One instance answers, saying how many handlers it runs.
	info, err := e.nc.Request("$SRV.INFO.ratelimit", nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var si micro.Info
	_ = json.Unmarshal(info.Data, &si)
	if si.Name != "ratelimit" || si.ID != e.lim.endpoints.ID() || si.Metadata["handlers"] != strconv.Itoa(e.cfg.RateLimit.Handlers) {
		t.Errorf("service %q, id %q, metadata %v", si.Name, si.ID, si.Metadata)
	}
}

// A uid's grants set through meter.grants (the grants hash) apply at once.
func TestGrantOverrides(t *testing.T) {
	e := startEnv(t, testConfig())
	grants := e.lim.store.Keys().Grants("u-1")
	e.mr.HSet(grants, "ratelimit", "2")
	e.mr.HSet(grants, "ratelimit_upload", "5")
	for svc, want := range map[string]int64{"": 2, "search": 2, "upload": 5} {
		if r := e.check("u-1", svc, events.Cost(0)); r.Limit != want {
			t.Errorf("%q: limit %d, want %d", svc, r.Limit, want)
		}
	}
}

func TestBadRequests(t *testing.T) {
	e := startEnv(t, testConfig())
	subj := e.cfg.Subjects
	for _, tc := range []struct {
		name, subject, body string
		status              string
		field               string
	}{
		{"negative cost", subj.Check("u-1"), `{"service":"upload","cost":-1}`, "400", "cost"},
		{"huge cost", subj.Check("u-1"), `{"service":"upload","cost":1000001}`, "400", "cost"},
		{"cost not a number", subj.Check("u-1"), `{"service":"upload","cost":"1"}`, "400", "cost"},
		{"fractional cost", subj.Check("u-1"), `{"service":"upload","cost":1.5}`, "400", "cost"},
		{"bad uid", subj.Check("u!1"), `{"service":"upload"}`, "400", "uid"},
		{"uid too long", subj.Check(strings.Repeat("u", 129)), `{}`, "400", "uid"},
		{"bad service name", subj.Check("u-1"), `{"service":"up load"}`, "400", "service"},
		{"unknown field", subj.Check("u-1"), `{"service":"upload","costs":1}`, "400", "costs"},
		{"not JSON", subj.Check("u-1"), `{`, "400", "request"},
		{"unknown service", subj.Check("u-1"), `{"service":"video"}`, "404", "service"},
		{"reset: unknown service", subj.Reset("u-1"), `{"service":"video"}`, "404", "service"},
		{"reset: bad uid", subj.Reset("u!1"), `{}`, "400", "uid"},
		{"reset: bad service", subj.Reset("u-1"), `{"service":"*"}`, "400", "service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, err := e.nc.Request(tc.subject, []byte(tc.body), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var body events.ErrorBody
			if err := json.Unmarshal(msg.Data, &body); err != nil {
				t.Fatalf("body %q: %v", msg.Data, err)
			}
			got := []string{msg.Header.Get(micro.ErrorCodeHeader), body.Error.Field}
			if diff := cmp.Diff([]string{tc.status, tc.field}, got); diff != "" {
				t.Errorf("status and field (-want +got):\n%s\nbody %s", diff, msg.Data)
			}
		})
	}
	if keys := e.mr.Keys(); len(keys) != 0 {
		t.Errorf("bad requests changed state: %v", keys)
	}
}

// evenOrOdd returns the window key of (uid, svc) now.
func evenOrOdd(e *env, uid, svc string) string {
	rl, _ := e.cfg.RateLimit.RateLimitFor(svc)
	even, odd := e.lim.store.Keys().RateLimit(uid, svc)
	if e.clock.Now().UnixMilli()/rl.Interval.Milliseconds()%2 == 1 {
		return odd
	}
	return even
}

func TestShadow(t *testing.T) {
	for _, global := range []bool{false, true} {
		cfg := testConfig()
		svc := "preview"
		if global {
			cfg.RateLimit.Shadow = true
			svc = "upload"
		}
		e := startEnv(t, cfg)
		limit := e.check("u-1", svc, events.Cost(0)).Limit
		for i := range limit + 3 {
			if r := e.check("u-1", svc, nil); !r.Allowed || r.RetryAfterMs != 0 {
				t.Errorf("global %v: call %d refused in shadow mode: %+v", global, i, r)
			}
		}
		if got := e.decisions(svc, "shadow_denied"); got != 3 {
			t.Errorf("global %v: shadow_denied %v, want 3", global, got)
		}
		// Would-be denials consume nothing: the window holds the limit.
		if r := e.check("u-1", svc, events.Cost(0)); r.Remaining != 0 || !r.Allowed {
			t.Errorf("global %v: peek after shadow denials: %+v", global, r)
		}
		if used := e.mr.HGet(evenOrOdd(e, "u-1", svc), "n"); used != fmt.Sprint(limit) {
			t.Errorf("global %v: window holds %q, want the limit %d", global, used, limit)
		}
	}
}

// hangProxy forwards to Redis until hang is set; then it swallows every
// request: a Redis that stops answering. While hold is set it keeps
// requests back and sends them when it is cleared: a slow Redis.
type hangProxy struct {
	hang atomic.Bool
	hold atomic.Bool
}

func (p *hangProxy) start(t *testing.T, upstream string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				_ = c.Close()
				continue
			}
			go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
			go func() {
				defer u.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					for p.hold.Load() {
						time.Sleep(time.Millisecond)
					}
					if !p.hang.Load() {
						if _, err := u.Write(buf[:n]); err != nil {
							return
						}
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestRedisUnavailable(t *testing.T) {
	cfg := testConfig()
	cfg.RateLimit.Timeout = 50 * time.Millisecond
	proxy := &hangProxy{}
	e := startEnvVia(t, cfg, proxy)
	e.check("u-1", "upload", nil)
	proxy.hang.Store(true) // Redis stops answering

	for _, tc := range []struct {
		svc    string
		result string
	}{{"avatar", "failed_open"}, {"upload", "failed_closed"}, {"", "failed_closed"}} {
		start := time.Now()
		r, err := e.lim.Check(t.Context(), "u-1", events.CheckRequest{Service: tc.svc})
		took := time.Since(start)
		if took > cfg.RateLimit.Timeout+150*time.Millisecond { // slack for a loaded machine; without the budget it is seconds
			t.Errorf("%q: answered after %v, budget %v", tc.svc, took, cfg.RateLimit.Timeout)
		}
		switch tc.result {
		case "failed_open":
			if err != nil || !r.Allowed || r.Limit != 1 {
				t.Errorf("%q: %+v, %v; want allowed", tc.svc, r, err)
			}
		default:
			if !errors.Is(err, events.ErrUnavailable) {
				t.Errorf("%q: %v, want a 503", tc.svc, err)
			}
		}
		if e.decisions(tc.svc, tc.result) != 1 {
			t.Errorf("%q: %s not counted", tc.svc, tc.result)
		}
	}
	// Over NATS a closed failure is a 503.
	_, err := e.client.Check(t.Context(), "u-1", events.CheckRequest{Service: "upload"})
	var serr *events.ServiceError
	if !errors.As(err, &serr) || serr.Status != 503 {
		t.Errorf("over NATS: %v, want a 503", err)
	}
}

func TestCacheShedsLoad(t *testing.T) {
	e := startEnv(t, testConfig())
	e.check("u-1", "feed", nil)
	e.check("u-1", "feed", nil)
	first := e.check("u-1", "feed", nil)
	if first.Allowed {
		t.Fatalf("3rd of 2 allowed: %+v", first)
	}
	// Redis gone: refusals still come, from the cache, until retry time.
	e.mr.Close()
	e.advance(30 * time.Second)
	r := e.check("u-1", "feed", nil)
	if r.Allowed || r.RetryAfterMs != 30000 || r.Limit != 2 {
		t.Errorf("cached refusal: %+v", r)
	}
	if n := testutil.ToFloat64(e.lim.metrics.cacheHits.WithLabelValues("feed")); n != 1 {
		t.Errorf("cache hits %v, want 1", n)
	}
	// Past the retry time the cache lets the call through to Redis,
	// which is down: a 503 (feed fails closed).
	e.advance(30 * time.Second)
	if _, err := e.client.Check(t.Context(), "u-1", events.CheckRequest{Service: "feed"}); !errors.Is(err, events.ErrUnavailable) {
		t.Errorf("after the retry time: %v, want Redis asked (503)", err)
	}
}

func TestCacheDroppedOnReset(t *testing.T) {
	e := startEnv(t, testConfig())
	for range 3 {
		e.check("u-1", "feed", nil)
	}
	if err := e.client.Reset(t.Context(), "u-1", "feed"); err != nil {
		t.Fatal(err)
	}
	if r := e.check("u-1", "feed", nil); !r.Allowed {
		t.Errorf("refused after reset: %+v", r)
	}
}

func TestCacheBounded(t *testing.T) {
	c := newCache(2)
	now := time.Now()
	c.put("a", "s", cacheEntry{retryAt: now.Add(time.Second)}, now)
	c.put("b", "s", cacheEntry{retryAt: now.Add(time.Minute)}, now)
	c.put("c", "s", cacheEntry{retryAt: now.Add(time.Minute)}, now) // full: not cached
	if _, ok := c.get("c", "s", now); ok {
		t.Error("an entry past the bound was cached")
	}
	later := now.Add(2 * time.Second)
	c.put("c", "s", cacheEntry{retryAt: later.Add(time.Minute)}, later) // a's entry expired: swept
	if _, ok := c.get("c", "s", later); !ok {
		t.Error("expired entries were not swept")
	}
}

func TestStartNeedsConnections(t *testing.T) {
	if _, err := Start(t.Context(), testConfig(), Deps{}); err == nil {
		t.Error("Start without NATS and Redis succeeded")
	}
	cfg := testConfig()
	cfg.RateLimit.Mode = "leaky"
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	if _, err := New(t.Context(), cfg, Deps{Redis: rdb}); err == nil {
		t.Error("New with a bad config succeeded")
	}
}

// While Redis is away every check of every batch fails open; the log says
// so once a second, with how many it left out, not once per check.
func TestFailingOpenIsLoggedOnceASecond(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var f failOpenLog
	t0 := time.Unix(1_700_000_000, 0)
	p := pending{uid: "u-1", service: "avatar"}
	for i := range 300 {
		// Checks of one batch can read the same time.
		f.note(log, t0.Add(time.Duration(i/2)*time.Millisecond), p, errors.New("down"))
	}
	f.note(log, t0.Add(1100*time.Millisecond), p, errors.New("down"))
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d log lines for 301 checks failing open over 1.1 s, want 2:\n%s", len(lines), buf.String())
	}
	if !strings.Contains(lines[0], "more_since_last_line=0") || !strings.Contains(lines[1], "more_since_last_line=299") {
		t.Errorf("the lines do not count what they left out:\n%s", buf.String())
	}
}
