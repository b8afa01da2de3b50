package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/redis/go-redis/v9"

	"github.com/allot/allot/pkg/service"
)

// readiness mirrors the JSON body of /healthz and /readyz.
type readiness struct {
	Status  string            `json:"status"`
	Reason  string            `json:"reason,omitempty"`
	Failing map[string]string `json:"failing,omitempty"`
}

// serve sends one request to h and returns the status and body.
func serve(t *testing.T, h http.Handler, ctx context.Context, method, path string) (int, http.Header, string) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequestWithContext(ctx, method, path, nil))
	return w.Code, w.Header(), w.Body.String()
}

func TestHTTPRoutes(t *testing.T) {
	s := service.NewHTTPServer("127.0.0.1:0", service.NewRegistry(), nil)
	s.Handle("GET /extra", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "extra")
	}))
	s.SetReady(true)
	tests := []struct {
		method, path string
		wantCode     int
		wantBody     []string // each must appear
	}{
		{"GET", "/healthz", 200, []string{`{"status":"ok"}`}},
		{"HEAD", "/healthz", 200, nil},
		{"GET", "/readyz", 200, []string{`{"status":"ready"}`}},
		{"GET", "/metrics", 200, []string{"go_goroutines", "process_start_time_seconds", "promhttp_metric_handler_requests_total"}},
		{"GET", "/extra", 200, []string{"extra"}},
		{"POST", "/healthz", 405, nil},
		{"DELETE", "/metrics", 405, nil},
		{"GET", "/", 404, nil},
		{"GET", "/nope", 404, nil},
		{"GET", "/healthz/more", 404, nil},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			code, _, body := serve(t, s, t.Context(), tt.method, tt.path)
			if code != tt.wantCode {
				t.Errorf("status = %d, want %d; body %q", code, tt.wantCode, body)
			}
			for _, w := range tt.wantBody {
				if !strings.Contains(body, w) {
					t.Errorf("body lacks %q:\n%s", w, body)
				}
			}
		})
	}
}

func TestHTTPReadiness(t *testing.T) {
	ok := func(context.Context) error { return nil }
	down := func(context.Context) error { return errors.New("connection refused") }
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	stuck := func(context.Context) error { <-release; return nil } // ignores its ctx

	type namedCheck struct {
		name string
		fn   func(context.Context) error
	}
	tests := []struct {
		name     string
		ready    bool
		checks   []namedCheck
		wantCode int
		want     readiness
	}{
		{"not marked ready", false, []namedCheck{{"nats", ok}}, 503,
			readiness{Status: "not ready", Reason: "starting or shutting down"}},
		{"ready without checks", true, nil, 200, readiness{Status: "ready"}},
		{"every check passes", true, []namedCheck{{"nats", ok}, {"redis", ok}}, 200, readiness{Status: "ready"}},
		{"one check fails", true, []namedCheck{{"nats", ok}, {"redis", down}}, 503,
			readiness{Status: "not ready", Failing: map[string]string{"redis": "connection refused"}}},
		{"replaced check", true, []namedCheck{{"redis", down}, {"redis", ok}}, 200, readiness{Status: "ready"}},
		{"a check that never returns", true, []namedCheck{{"redis", stuck}, {"nats", ok}}, 503,
			readiness{Status: "not ready", Failing: map[string]string{
				"redis": "service: check abandoned: context deadline exceeded",
			}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := service.NewHTTPServer("127.0.0.1:0", service.NewRegistry(), nil)
			for _, c := range tt.checks {
				s.AddCheck(c.name, c.fn)
			}
			s.SetReady(tt.ready)
			// The request's deadline, shorter than the server's own, keeps
			// the timeout case fast.
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			code, header, body := serve(t, s, ctx, "GET", "/readyz")
			if code != tt.wantCode {
				t.Errorf("status = %d, want %d", code, tt.wantCode)
			}
			if ct := header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			var got readiness
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHTTPServerListens(t *testing.T) {
	rec, log := newLogRecorder()
	s := service.NewHTTPServer("127.0.0.1:0", service.NewRegistry(), log)
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	addr := s.Addr()
	if strings.HasSuffix(addr, ":0") {
		t.Fatalf("Addr() = %q, want the real port", addr)
	}
	if got := rec.waitFor(t, "http listening").Attrs["addr"]; got != addr {
		t.Errorf("logged addr %q, want %q", got, addr)
	}
	if err := s.Start(); err == nil || !strings.Contains(err.Error(), "already started") {
		t.Errorf("second Start = %v, want already started", err)
	}
	busy := service.NewHTTPServer(addr, service.NewRegistry(), nil)
	if err := busy.Start(); err == nil || !strings.Contains(err.Error(), "service: http: listen on "+addr) {
		t.Errorf("Start on a busy port = %v, want an error naming %s", err, addr)
	}

	get := func(path string) (int, error) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	tests := []struct {
		path  string
		ready bool
		want  int
	}{
		{"/healthz", false, 200},
		{"/readyz", false, 503},
		{"/readyz", true, 200},
		{"/metrics", true, 200},
		{"/missing", true, 404},
	}
	for _, tt := range tests {
		s.SetReady(tt.ready)
		if got, err := get(tt.path); err != nil || got != tt.want {
			t.Errorf("GET %s (ready %v) = %d, %v; want %d", tt.path, tt.ready, got, err, tt.want)
		}
	}

	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := get("/healthz"); err == nil {
		t.Error("GET after Shutdown succeeded, want connection refused")
	}
	code, _, _ := serve(t, s, t.Context(), "GET", "/readyz")
	if code != 503 {
		t.Errorf("readyz after Shutdown = %d, want 503", code)
	}
}

func TestHTTPShutdownBeforeStart(t *testing.T) {
	s := service.NewHTTPServer(":0", service.NewRegistry(), nil)
	if err := s.Shutdown(t.Context()); err != nil {
		t.Errorf("Shutdown before Start = %v, want nil", err)
	}
	if got := s.Addr(); got != ":0" {
		t.Errorf("Addr() before Start = %q, want the configured :0", got)
	}
}

func TestNATSCheck(t *testing.T) {
	s := runNATS(t, server.Options{})
	nc, err := service.ConnectNATS(t.Context(), natsConfig(s.ClientURL()), nil)
	if err != nil {
		t.Fatalf("ConnectNATS: %v", err)
	}
	t.Cleanup(nc.Close)
	check := service.NATSCheck(nc)
	if err := check(t.Context()); err != nil {
		t.Errorf("check while connected = %v, want nil", err)
	}
	s.Shutdown()
	s.WaitForShutdown()
	deadline := time.Now().Add(5 * time.Second)
	for check(t.Context()) == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := check(t.Context()); err == nil || !strings.Contains(err.Error(), "service: nats: ") {
		t.Errorf("check with the server down = %v, want a service: nats: error", err)
	}
	nc.Close()
	if err := check(t.Context()); err == nil || !strings.Contains(err.Error(), "CLOSED") {
		t.Errorf("check after Close = %v, want CLOSED", err)
	}
}

func TestRedisCheck(t *testing.T) {
	m := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr(), MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	check := service.RedisCheck(rdb)
	if err := check(t.Context()); err != nil {
		t.Errorf("check while up = %v, want nil", err)
	}
	m.Close()
	if err := check(t.Context()); err == nil || !strings.Contains(err.Error(), "service: redis: ping: ") {
		t.Errorf("check with Redis down = %v, want a service: redis: ping: error", err)
	}
}

// allot_dependency_up runs the readiness checks at each scrape: 1 for
// Redis while it answers, 0 once it is gone (what the outage alerts
// read), whether or not the service is marked ready.
func TestDependencyUp(t *testing.T) {
	m := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr(), MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	s := service.NewHTTPServer("127.0.0.1:0", service.NewRegistry(), nil)
	s.AddCheck("redis", service.RedisCheck(rdb))
	s.AddCheck("nats", func(context.Context) error { return errors.New("service: nats: CLOSED") })
	up := func() map[string]float64 {
		t.Helper()
		got := map[string]float64{}
		families, err := s.Gatherer().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() != "allot_dependency_up" {
				continue
			}
			for _, m := range f.GetMetric() {
				got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
			}
		}
		return got
	}
	if diff := cmp.Diff(map[string]float64{"redis": 1, "nats": 0}, up()); diff != "" {
		t.Errorf("allot_dependency_up with Redis up (-want +got):\n%s", diff)
	}
	m.Close()
	if diff := cmp.Diff(map[string]float64{"redis": 0, "nats": 0}, up()); diff != "" {
		t.Errorf("allot_dependency_up with Redis down (-want +got):\n%s", diff)
	}
	// /metrics serves the same.
	_, _, body := serve(t, s, t.Context(), "GET", "/metrics")
	if !strings.Contains(body, `allot_dependency_up{dependency="redis"} 0`) {
		t.Errorf("/metrics lacks allot_dependency_up{dependency=\"redis\"} 0:\n%s", body)
	}
}
