//go:build integration

package service

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"
)

// envOr returns the environment variable, or def when it is unset.
func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// The connections and the readiness checks work against the real servers
// CI runs (ALLOT_TEST_NATS_URL, ALLOT_TEST_REDIS_URL). Without them the
// test skips, unless ALLOT_REQUIRE_INTEGRATION=1.
func TestIntegrationConnectAndReady(t *testing.T) {
	cfg := Default()
	cfg.NATS.URL = URL(envOr("ALLOT_TEST_NATS_URL", "nats://127.0.0.1:4222"))
	cfg.Redis.URL = URL(envOr("ALLOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
	cfg.NATS.ConnectTimeout = 2 * time.Second
	cfg.Redis.DialTimeout = 2 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nc, err := ConnectNATS(t.Context(), cfg.NATS, log)
	if err != nil {
		if os.Getenv("ALLOT_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("real NATS: %v", err)
		}
		t.Skipf("no real NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	rdb, err := ConnectRedis(t.Context(), cfg.Redis)
	if err != nil {
		if os.Getenv("ALLOT_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("real Redis: %v", err)
		}
		t.Skipf("no real Redis: %v", err)
	}
	t.Cleanup(func() { _ = rdb.Close() })

	srv := NewHTTPServer("127.0.0.1:0", NewRegistry(), log)
	srv.AddCheck("nats", NATSCheck(nc))
	srv.AddCheck("redis", RedisCheck(rdb))
	srv.SetReady(true)
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("/readyz = %d %s, want 200 against the real servers", rec.Code, rec.Body)
	}
}
