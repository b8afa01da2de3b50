//go:build integration

package service

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
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

// A service refuses a NATS older than MinNATSVersion with one line naming
// both versions. It runs where an old nats-server binary is present
// (ALLOT_TEST_OLD_NATS_BIN, default Debian's /usr/sbin/nats-server, 2.9),
// started here on a port of its own.
func TestIntegrationRefusesOldNATS(t *testing.T) {
	bin := envOr("ALLOT_TEST_OLD_NATS_BIN", "/usr/sbin/nats-server")
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Skipf("no old nats-server to test against: %s --version: %v", bin, err)
	}
	// "nats-server: v2.9.10"
	fields := strings.Fields(string(out))
	if len(fields) == 0 {
		t.Fatalf("%s --version printed nothing", bin)
	}
	version := strings.TrimPrefix(fields[len(fields)-1], "v")
	if CheckNATSVersion(version) == nil {
		t.Skipf("%s is nats-server %s, which is supported: nothing old to refuse", bin, version)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	srv := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port))
	if err := srv.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %s within 10s", bin, addr)
		}
		time.Sleep(20 * time.Millisecond)
	}

	cfg := Default().NATS
	cfg.URL = URL("nats://" + addr)
	cfg.ConnectTimeout = 2 * time.Second
	nc, err := ConnectNATS(t.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		nc.Close()
		t.Fatalf("ConnectNATS to nats-server %s succeeded; want it refused", version)
	}
	if !errors.Is(err, ErrNATSVersion) || !strings.Contains(err.Error(), version) || !strings.Contains(err.Error(), MinNATSVersion) {
		t.Errorf("ConnectNATS to nats-server %s = %v; want ErrNATSVersion naming %s and %s", version, err, version, MinNATSVersion)
	}
	t.Logf("refused as it should be: %v", err)
}
