package service_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/allot/allot/pkg/service"
)

// natsConfig is a NATS section with short timeouts for tests.
func natsConfig(url string) service.NATSConfig {
	cfg := service.Default().NATS
	cfg.URL = service.URL(url)
	cfg.Name = "allot-test"
	cfg.ConnectTimeout = time.Second
	cfg.ReconnectWait = 50 * time.Millisecond
	return cfg
}

func TestConnectNATS(t *testing.T) {
	tests := []struct {
		name   string
		server server.Options
		cfg    func(url string) service.NATSConfig
	}{
		{"no auth", server.Options{}, natsConfig},
		{"user and password", server.Options{Username: "meter", Password: "s3cret"}, func(url string) service.NATSConfig {
			cfg := natsConfig(url)
			cfg.User, cfg.Password = "meter", "s3cret"
			return cfg
		}},
		{"token", server.Options{Authorization: "t0ken"}, func(url string) service.NATSConfig {
			cfg := natsConfig(url)
			cfg.Token = "t0ken"
			return cfg
		}},
		{"password in url", server.Options{Username: "meter", Password: "s3cret"}, func(url string) service.NATSConfig {
			return natsConfig(strings.Replace(url, "nats://", "nats://meter:s3cret@", 1))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := runNATS(t, tt.server)
			rec, log := newLogRecorder()
			nc, err := service.ConnectNATS(t.Context(), tt.cfg(s.ClientURL()), log)
			if err != nil {
				t.Fatalf("ConnectNATS: %v", err)
			}
			t.Cleanup(nc.Close)
			if err := nc.Publish("test.subject", []byte("hi")); err != nil {
				t.Fatalf("Publish: %v", err)
			}
			connz, err := s.Connz(nil)
			if err != nil {
				t.Fatalf("Connz: %v", err)
			}
			if len(connz.Conns) != 1 || connz.Conns[0].Name != "allot-test" {
				t.Errorf("server sees connections %+v, want one named allot-test", connz.Conns)
			}
			if got := rec.waitFor(t, "nats connected").Attrs["url"]; strings.Contains(got, "s3cret") {
				t.Errorf("logged url %q reveals the password", got)
			}
		})
	}
}

func TestConnectNATSFailsFast(t *testing.T) {
	s := runNATS(t, server.Options{Username: "meter", Password: "s3cret"})
	closed := closedPort(t)
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()

	tests := []struct {
		name    string
		ctx     context.Context
		cfg     service.NATSConfig
		want    []string
		wantIs  error
		wantNot string
	}{
		{
			name:    "closed port",
			ctx:     t.Context(),
			cfg:     natsConfig("nats://meter:hunter2@" + closed),
			want:    []string{"service: nats: connect to nats://meter:xxxxx@" + closed, "connection refused"},
			wantIs:  nats.ErrNoServers,
			wantNot: "hunter2",
		},
		{
			name: "wrong password",
			ctx:  t.Context(),
			cfg: func() service.NATSConfig {
				cfg := natsConfig(s.ClientURL())
				cfg.User, cfg.Password = "meter", "hunter2"
				return cfg
			}(),
			want:    []string{"service: nats: connect to " + s.ClientURL(), "Authorization Violation"},
			wantIs:  nats.ErrAuthorization,
			wantNot: "hunter2",
		},
		{
			name:   "cancelled",
			ctx:    cancelled,
			cfg:    natsConfig(s.ClientURL()),
			want:   []string{"service: nats: connect to " + s.ClientURL(), "context canceled"},
			wantIs: context.Canceled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			nc, err := service.ConnectNATS(tt.ctx, tt.cfg, nil)
			if err == nil {
				nc.Close()
				t.Fatal("ConnectNATS succeeded, want an error")
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("ConnectNATS took %s to fail", d)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if !errors.Is(err, tt.wantIs) {
				t.Errorf("error %q is not %v", err, tt.wantIs)
			}
			if tt.wantNot != "" && strings.Contains(err.Error(), tt.wantNot) {
				t.Errorf("error %q reveals %q", err, tt.wantNot)
			}
		})
	}
}

func TestConnectNATSReconnects(t *testing.T) {
	s := runNATS(t, server.Options{})
	port := portOf(t, s.Addr().String())
	rec, log := newLogRecorder()
	nc, err := service.ConnectNATS(t.Context(), natsConfig(s.ClientURL()), log)
	if err != nil {
		t.Fatalf("ConnectNATS: %v", err)
	}

	s.Shutdown()
	s.WaitForShutdown()
	if got := rec.waitFor(t, "nats disconnected"); got.Attrs["error"] == "" {
		t.Errorf("disconnect logged without its error: %+v", got)
	}

	runNATS(t, server.Options{Port: port})
	if got := rec.waitFor(t, "nats reconnected"); got.Attrs["url"] != fmt.Sprintf("nats://127.0.0.1:%d", port) {
		t.Errorf("reconnect logged url %q, want the server's", got.Attrs["url"])
	}
	if err := nc.FlushTimeout(time.Second); err != nil {
		t.Errorf("Flush after reconnect: %v", err)
	}

	nc.Close()
	rec.waitFor(t, "nats connection closed")
}

// redisConfig is a Redis section pointing at url with short timeouts.
func redisConfig(url string) service.RedisConfig {
	cfg := service.Default().Redis
	cfg.URL = service.URL(url)
	cfg.DialTimeout = time.Second
	cfg.ReadTimeout = time.Second
	cfg.WriteTimeout = time.Second
	return cfg
}

func TestConnectRedis(t *testing.T) {
	tests := []struct {
		name  string
		setup func(m *miniredis.Miniredis)
		cfg   func(addr string) service.RedisConfig
		db    int
	}{
		{"url", nil, func(addr string) service.RedisConfig {
			return redisConfig("redis://" + addr + "/0")
		}, 0},
		{"url with db", nil, func(addr string) service.RedisConfig {
			return redisConfig("redis://" + addr + "/3")
		}, 3},
		{"password in url", func(m *miniredis.Miniredis) { m.RequireAuth("s3cret") }, func(addr string) service.RedisConfig {
			return redisConfig("redis://:s3cret@" + addr + "/0")
		}, 0},
		{"password field over url", func(m *miniredis.Miniredis) { m.RequireAuth("s3cret") }, func(addr string) service.RedisConfig {
			cfg := redisConfig("redis://:stale@" + addr + "/0")
			cfg.Password = "s3cret"
			return cfg
		}, 0},
		{"user and password", func(m *miniredis.Miniredis) { m.RequireUserAuth("meter", "s3cret") }, func(addr string) service.RedisConfig {
			return redisConfig("redis://meter:s3cret@" + addr)
		}, 0},
		{"one addr with db and pool", nil, func(addr string) service.RedisConfig {
			cfg := redisConfig("")
			cfg.Addrs, cfg.DB, cfg.PoolSize = []string{addr}, 2, 4
			return cfg
		}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := miniredis.RunT(t)
			if tt.setup != nil {
				tt.setup(m)
			}
			rdb, err := service.ConnectRedis(t.Context(), tt.cfg(m.Addr()))
			if err != nil {
				t.Fatalf("ConnectRedis: %v", err)
			}
			t.Cleanup(func() { _ = rdb.Close() })
			if _, ok := rdb.(*redis.Client); !ok {
				t.Errorf("ConnectRedis = %T, want *redis.Client", rdb)
			}
			if err := rdb.Set(t.Context(), "k", "v", 0).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}
			if got, err := m.DB(tt.db).Get("k"); err != nil || got != "v" {
				t.Errorf("db %d holds k = %q, %v; want v", tt.db, got, err)
			}
		})
	}
}

func TestConnectRedisCluster(t *testing.T) {
	m1, m2 := miniredis.RunT(t), miniredis.RunT(t)
	cfg := redisConfig("")
	cfg.Addrs = []string{m1.Addr(), m2.Addr()}
	rdb, err := service.ConnectRedis(t.Context(), cfg)
	if err != nil {
		t.Fatalf("ConnectRedis: %v", err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	if _, ok := rdb.(*redis.ClusterClient); !ok {
		t.Errorf("ConnectRedis = %T, want *redis.ClusterClient", rdb)
	}
	if err := rdb.Set(t.Context(), "{u1}k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
}

func TestConnectRedisFails(t *testing.T) {
	m := miniredis.RunT(t)
	m.RequireAuth("s3cret")
	closed := closedPort(t)
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	short := func(cfg service.RedisConfig) service.RedisConfig {
		cfg.DialTimeout, cfg.ReadTimeout, cfg.WriteTimeout = 200*time.Millisecond, 200*time.Millisecond, 200*time.Millisecond
		return cfg
	}

	tests := []struct {
		name string
		ctx  context.Context
		cfg  service.RedisConfig
		want []string
	}{
		{"closed port", t.Context(), redisConfig("redis://:hunter2@" + closed + "/0"),
			[]string{"service: redis: ping redis://:xxxxx@" + closed + "/0", "connection refused"}},
		{"wrong password", t.Context(), redisConfig("redis://:hunter2@" + m.Addr() + "/0"),
			[]string{"service: redis: ping redis://:xxxxx@" + m.Addr() + "/0", "WRONGPASS"}},
		{"cluster", t.Context(), func() service.RedisConfig {
			cfg := redisConfig("")
			cfg.Addrs = []string{closed, closed}
			return cfg
		}(), []string{"service: redis: ping cluster " + closed + "," + closed}},
		{"sentinel", t.Context(), func() service.RedisConfig {
			cfg := redisConfig("")
			cfg.Addrs, cfg.MasterName = []string{closed}, "main"
			return cfg
		}(), []string{`service: redis: ping master "main" via sentinels ` + closed}},
		{"bad url", t.Context(), redisConfig("redis://:hunter2@h:1/x"),
			[]string{`service: redis: url redis://:xxxxx@h:1/x: invalid database number: "x"`}},
		{"no address", t.Context(), redisConfig(""),
			[]string{"service: redis: neither url nor addrs is set"}},
		{"cancelled", cancelled, redisConfig("redis://" + m.Addr()),
			[]string{"service: redis: ping redis://" + m.Addr(), "context canceled"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			rdb, err := service.ConnectRedis(tt.ctx, short(tt.cfg))
			if err == nil {
				_ = rdb.Close()
				t.Fatal("ConnectRedis succeeded, want an error")
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("ConnectRedis took %s to fail", d)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q reveals the password", err)
			}
		})
	}
}
