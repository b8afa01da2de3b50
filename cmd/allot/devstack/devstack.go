// Package devstack runs the whole of allot in one process: an embedded
// nats-server with JetStream, an embedded Redis (miniredis), the streams,
// one HTTP server for metrics and health, and every allot service that
// exists, through the same code paths as their own binaries. "allot dev"
// and the load-test harness both start it.
package devstack

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/auth"
	"github.com/allot/allot/services/meter"
	"github.com/allot/allot/services/notifier"
	"github.com/allot/allot/services/ratelimit"
	"github.com/allot/allot/services/registry"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Options says what to start.
type Options struct {
	// Config is the runtime's configuration; its NATS and Redis URLs are
	// used only when ExternalNATS or ExternalRedis is set.
	Config service.Config
	// Sections are the services' own sections; nil runs their defaults.
	Sections *Sections
	// ExternalNATS connects to Config.NATS.URL instead of embedding a
	// server (allot dev does so when NATS_URL is set).
	ExternalNATS bool
	// ExternalRedis connects to Config.Redis instead of miniredis.
	ExternalRedis bool
	// NATSAddr is where the embedded NATS listens (default 127.0.0.1:4222);
	// when it is taken, a free port is used and Notes says so.
	NATSAddr string
	// StoreDir holds the embedded JetStream's files; empty means a temporary
	// directory removed by Close.
	StoreDir string
	// HTTPAddr is where /metrics, /healthz and /readyz listen (default
	// 127.0.0.1:8080, with the same fallback as NATSAddr).
	HTTPAddr string
	// ExternalSMTP sends the notifier's mail to Sections.Notifier.SMTP;
	// otherwise a mail sink (devmail) takes it, logs it and shows it at
	// /dev/mail.
	ExternalSMTP bool
	// SMTPAddr is where the mail sink listens (default 127.0.0.1:1025,
	// with the same fallback as NATSAddr).
	SMTPAddr string
	// GRPCAddr is where the rate limiter's Envoy RLS front listens
	// (default ratelimit.grpc.listen when set, else 127.0.0.1:8081, with
	// the same fallback as NATSAddr; port 0 picks a free one).
	GRPCAddr string
	// Auth, when set, turns access control on for the embedded NATS: the
	// server hands every connection to the auth service (auth callout),
	// which runs here with this config; the services connect with a key
	// of role service, and an admin and an app key are made for the run
	// (Stack.AdminKey, Stack.AppKey). Its issuer seed and system password
	// must be set. With ExternalNATS it is ignored: that server's
	// configuration decides.
	Auth *auth.Config
	// Log receives what happens; nil discards it.
	Log *slog.Logger
}

// Stack is a running allot.
type Stack struct {
	NATSURL  string // the URL apps and the CLI connect to
	RedisURL string // redacted when it carries a password
	HTTPURL  string // base URL of /metrics, /healthz, /readyz
	StoreDir string // the JetStream directory, when embedded
	SMTPAddr string // the mail sink's address; empty with ExternalSMTP
	Asynqmon bool   // asynqmon is mounted at HTTPURL/asynqmon/
	GRPCAddr string // the rate limiter's Envoy RLS front (gRPC)
	Notes    []string

	NATS     *nats.Conn
	Redis    redis.UniversalClient
	Registry *prometheus.Registry
	HTTP     *service.HTTPServer
	Services []string // names of the allot services running

	// AdminKey and AppKey are the keys made for the run when Auth is on:
	// an admin key (everything, keys included) and an app key (for every
	// uid).
	AdminKey, AppKey string

	closers *service.Stack
}

// Start starts the stack. On error, whatever was started is stopped.
func Start(ctx context.Context, opts Options) (st *Stack, err error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Stack{closers: service.NewStack(log), Registry: service.NewRegistry()}
	defer func() {
		if err != nil {
			closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = s.closers.Close(closeCtx)
		}
	}()
	cfg := opts.Config
	sec := DefaultSections()
	if opts.Sections != nil {
		sec = *opts.Sections
	}

	// NATS: embedded with JetStream, or the one configured.
	var callout *auth.ServerConfig
	if opts.ExternalNATS {
		s.NATSURL = cfg.NATS.URL.String()
	} else {
		if opts.Auth != nil {
			if callout, err = calloutConfig(*opts.Auth); err != nil {
				return nil, err
			}
		}
		url, err := s.startNATS(opts, callout, log)
		if err != nil {
			return nil, err
		}
		cfg.NATS.URL = service.URL(url)
		s.NATSURL = url
	}

	// Redis: miniredis, or the one configured.
	if !opts.ExternalRedis {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("devstack: start miniredis: %w", err)
		}
		s.closers.Push("miniredis", func(context.Context) error { mr.Close(); return nil })
		cfg.Redis = service.RedisConfig{
			URL:          service.URL("redis://" + mr.Addr() + "/0"),
			KeyPrefix:    cfg.Redis.KeyPrefix,
			DialTimeout:  cfg.Redis.DialTimeout,
			ReadTimeout:  cfg.Redis.ReadTimeout,
			WriteTimeout: cfg.Redis.WriteTimeout,
		}
	}
	rdb, err := service.ConnectRedis(ctx, cfg.Redis)
	if err != nil {
		return nil, err
	}
	s.Redis = rdb
	s.RedisURL = redisDisplay(cfg.Redis)
	if !opts.ExternalRedis {
		s.RedisURL += " (miniredis, in memory)"
	}
	s.closers.Push("redis client", func(context.Context) error { return rdb.Close() })

	// Access control first: every other connection goes through it.
	if callout != nil {
		serviceKey, err := s.startAuth(ctx, *opts.Auth, *callout, cfg, rdb, log)
		if err != nil {
			return nil, err
		}
		cfg.NATS.User, cfg.NATS.Password, cfg.NATS.Token, cfg.NATS.CredsFile = "", "", "", ""
		cfg.NATS.Key = service.Secret(serviceKey)
	}
	nc, err := service.ConnectNATS(ctx, cfg.NATS, log)
	if err != nil {
		return nil, err
	}
	s.NATS = nc
	s.closers.Push("nats connection", func(context.Context) error { return nc.Drain() })

	// The streams every service needs.
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("devstack: %w", err)
	}
	if err := events.EnsureStreams(ctx, js, cfg.Subjects, cfg.Streams); err != nil {
		return nil, err
	}

	// One HTTP server for the whole process.
	httpAddr := opts.HTTPAddr
	if httpAddr == "" {
		httpAddr = "127.0.0.1:8080"
	}
	httpAddr, note := freeAddr(httpAddr, "HTTP")
	if note != "" {
		s.Notes = append(s.Notes, note)
	}
	s.HTTP = service.NewHTTPServer(httpAddr, s.Registry, log)
	s.HTTP.AddCheck("nats", service.NATSCheck(nc))
	s.HTTP.AddCheck("redis", service.RedisCheck(rdb))
	if err := s.HTTP.Start(); err != nil {
		return nil, err
	}
	s.HTTPURL = "http://" + s.HTTP.Addr()
	s.closers.Push("http server", s.HTTP.Shutdown)

	// The registry seals its entries; a laptop has no key, so make one up
	// for this run (entries left in an external Redis by an earlier run
	// are then skipped, and expire).
	if len(sec.Registry.Keys) == 0 {
		key, err := randomSecret(32)
		if err != nil {
			return nil, fmt.Errorf("devstack: registry key: %w", err)
		}
		sec.Registry.Keys = []service.Secret{service.Secret(key)}
		log.Warn("registry.keys is not set: using a random registry key for this run; set registry.keys (or ALLOT_REGISTRY_KEYS) outside allot dev")
		s.Notes = append(s.Notes, "registry: registry.keys is not set; using a random key for this run")
	}

	// The notifier signs tokens; a laptop has no secret either.
	if len(sec.Notifier.TokenSecrets) == 0 {
		secret, err := randomSecret(48)
		if err != nil {
			return nil, fmt.Errorf("devstack: token secret: %w", err)
		}
		sec.Notifier.TokenSecrets = []service.Secret{service.Secret(secret)}
		log.Warn("notifier.token_secrets is not set: using a random secret for this run (tokens die with it); set notifier.token_secrets (or ALLOT_NOTIFIER_TOKEN_SECRETS) outside allot dev")
		s.Notes = append(s.Notes, "notifier: notifier.token_secrets is not set; using a random secret for this run")
	}
	// The default confirmation page is this process's /confirm.
	if sec.Notifier.ConfirmURL == notifier.DefaultSettings().ConfirmURL {
		sec.Notifier.ConfirmURL = s.HTTPURL + "/confirm"
	}
	if !opts.ExternalSMTP {
		if err := s.startMailSink(opts, &sec.Notifier.SMTP, log); err != nil {
			return nil, err
		}
	}
	s.mountAsynqmon(cfg, opts, log)

	// The rate limiter's Envoy RLS front is on in dev, on envoyproxy/
	// ratelimit's usual port unless the config names another.
	grpcAddr := opts.GRPCAddr
	switch {
	case grpcAddr != "":
	case sec.RateLimit.GRPC.Listen != "":
		grpcAddr = sec.RateLimit.GRPC.Listen
	default:
		grpcAddr = "127.0.0.1:8081"
	}
	grpcAddr, note = freeAddr(grpcAddr, "gRPC")
	if _, port, err := net.SplitHostPort(grpcAddr); err == nil && port == "0" {
		// The banner names the port: pick it now.
		if l, err := net.Listen("tcp", grpcAddr); err == nil {
			grpcAddr = l.Addr().String()
			_ = l.Close()
		}
	}
	if note != "" {
		s.Notes = append(s.Notes, note)
	}
	sec.RateLimit.GRPC.Listen, s.GRPCAddr = grpcAddr, grpcAddr

	// The allot services, each through the same start its own binary's
	// Run calls, with this process's configuration.
	deps := service.Deps{Config: cfg, NATS: nc, Redis: rdb, Registry: s.Registry, HTTP: s.HTTP, Log: log}
	for _, svc := range []struct {
		name  string
		start service.StartFunc
	}{
		{"registry", registry.RunWith(sec.registry(cfg))},
		{"meter", meter.RunWith(sec.meter(cfg))},
		{"ratelimit", ratelimit.RunWith(sec.ratelimit(cfg))},
		{"notifier", notifier.RunWith(sec.notifier(cfg))},
	} {
		stop, err := svc.start(ctx, deps)
		if err != nil {
			return nil, fmt.Errorf("devstack: start %s: %w", svc.name, err)
		}
		s.closers.Push(svc.name, stop)
		s.Services = append(s.Services, svc.name)
	}

	// Each service registers itself, as service.Run does for a binary;
	// they share one instance name here, so the id carries the service's.
	if cfg.Registry.SelfRegister {
		for _, name := range s.Services {
			sr, err := service.StartSelfRegistration(nc, cfg, service.Registration{
				Name: name, ID: service.InstanceID(cfg.Instance + "-" + name), Addr: s.HTTP.Addr()}, log.With("service", name))
			if err != nil {
				return nil, fmt.Errorf("devstack: %w", err)
			}
			s.closers.Push(name+" self-registration", sr.Stop)
		}
	}

	s.HTTP.SetReady(true)
	log.Info("allot dev stack started", "nats", s.NATSURL, "redis", s.RedisURL, "http", s.HTTPURL)
	return s, nil
}

// randomSecret returns n random bytes in base64.
func randomSecret(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// freeAddr returns addr when it can be listened on, else the same host
// with a free port and a note saying so.
func freeAddr(addr, what string) (string, string) {
	l, err := net.Listen("tcp", addr)
	if err == nil {
		_ = l.Close()
		return addr, ""
	}
	host, _, splitErr := net.SplitHostPort(addr)
	if splitErr != nil {
		return addr, "" // let the server report the bad address
	}
	l, err2 := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err2 != nil {
		return addr, ""
	}
	free := l.Addr().String()
	_ = l.Close()
	return free, fmt.Sprintf("%s: %s is taken (%v); using %s instead", what, addr, err, free)
}

func redisDisplay(c service.RedisConfig) string {
	switch {
	case len(c.Addrs) > 0 && c.MasterName != "":
		return fmt.Sprintf("sentinel %s %v", c.MasterName, c.Addrs)
	case len(c.Addrs) > 0:
		return fmt.Sprintf("cluster %v", c.Addrs)
	}
	return c.URL.String()
}

// Close stops everything in the reverse order of Start.
func (s *Stack) Close(ctx context.Context) error {
	if s.HTTP != nil {
		s.HTTP.SetReady(false)
	}
	return s.closers.Close(ctx)
}
