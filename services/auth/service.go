// Package auth is allot's auth service: it answers nats-server's auth
// callout for every client connection, verifying the client's API key and
// handing back the NATS permissions of the key's role, which the server
// then enforces on every message; it serves the key endpoints
// (auth.keys.*) and disconnects a key's connections when the key changes.
// Its binary (cmd/auth) and "allot dev" both run it through Start.
package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Deps are what the service runs on.
type Deps struct {
	// NATS is the service's own connection, as a user the callout does
	// not apply to (auth_users in the server's auth_callout block).
	NATS *nats.Conn
	// Sys is its connection as a system-account user, to find and kick a
	// key's connections.
	Sys   *nats.Conn
	Redis redis.UniversalClient
	// KeyPrefix prefixes the backend's Redis keys (redis.key_prefix).
	KeyPrefix string
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Instance names this process in the keys endpoints' micro metadata
	// (the runtime's instance); empty, the hostname.
	Instance string
	Log      *slog.Logger
	// Now is the clock of key expiry and adjustments (tests).
	Now func() time.Time
	// Backends and Validators extend or replace the shipped ones by name.
	Backends   Backends
	Validators Validators
}

// Service is a running auth service.
type Service struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	now     func() time.Time
	backend Backend
	metrics *metrics
	replier service.Replier
	kick    *kicker

	subs      []*nats.Subscription
	endpoints *service.Endpoints
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	stopOnce  sync.Once
}

// Start opens the backend, makes sure the static keys exist, and starts
// answering the callout, the key endpoints and change events.
func Start(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if deps.NATS == nil || deps.Sys == nil {
		return nil, errors.New("auth: the service's own and system-account NATS connections are required")
	}
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("service", "auth")
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	backends, validators := DefaultBackends(), DefaultValidators()
	for n, f := range deps.Backends {
		backends[n] = f
	}
	for n, v := range deps.Validators {
		validators[n] = v
	}
	chain, err := newChain(cfg.Validators, validators)
	if err != nil {
		return nil, err
	}
	for _, skipped := range []string{"expiry", "revocation"} {
		for name, r := range cfg.Roles {
			if slices.Contains(r.Skip, skipped) || !slices.Contains(cfg.Validators, skipped) {
				log.Warn("a key check is off", "validator", skipped, "role", name)
			}
		}
	}
	issuer, err := cfg.Issuer()
	if err != nil {
		return nil, fmt.Errorf("auth: issuer_seed: %w", err)
	}
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, err
	}
	be, err := backends.Open(cfg.Backend.Name, cfg.Backend.Options, BackendDeps{Redis: deps.Redis, KeyPrefix: deps.KeyPrefix, Log: log})
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, deps: deps, log: log, now: now, backend: be, metrics: m,
		kick: &kicker{sys: deps.Sys, gather: 250 * time.Millisecond, log: log}}
	s.replier = service.Replier{Requests: m.requests, Log: log, Classify: classify}
	fail := func(err error) (*Service, error) {
		_ = s.Stop(context.Background())
		return nil, err
	}
	if err := m.watchReloads(deps.Registerer, be); err != nil {
		return fail(err)
	}
	if err := ensureStaticKeys(ctx, be, staticKeys(cfg), cfg.Roles, now()); err != nil {
		return fail(err)
	}
	d := &decider{backend: be, roles: cfg.Roles, chain: chain, now: now, log: log}
	callout, err := NewCallout(issuer, GlobalAccount, d, m, log)
	if err != nil {
		return fail(err)
	}
	// Each subscription is served in turn; several in one queue group
	// decide connections at once, and replicas share the load.
	for range cfg.Handlers {
		sub, err := deps.NATS.QueueSubscribe(CalloutSubject, "allot-auth", callout.Handle)
		if err != nil {
			return fail(fmt.Errorf("auth: subscribe to %s: %w", CalloutSubject, err))
		}
		s.subs = append(s.subs, sub)
	}
	sub, err := deps.NATS.QueueSubscribe(ChangedSubject("*"), "allot-auth", s.onChanged)
	if err != nil {
		return fail(fmt.Errorf("auth: subscribe to key changes: %w", err))
	}
	s.subs = append(s.subs, sub)
	if s.endpoints, err = service.StartEndpoints(deps.NATS, service.EndpointsConfig{
		Name: "auth", Description: "allot auth: API keys", Group: events.KeysPrefix, Handlers: 1,
		Instance: deps.Instance, Registerer: deps.Registerer,
	}, s.keyEndpoints(), log); err != nil {
		return fail(err)
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	be.Watch(wctx, s.changed)
	if err := deps.NATS.Flush(); err != nil {
		return fail(fmt.Errorf("auth: %w", err))
	}
	log.Info("auth started", "backend", cfg.Backend.Name, "roles", roleNames(cfg.Roles), "validators", cfg.Validators, "handlers", cfg.Handlers)
	return s, nil
}

// Stop stops answering and closes the backend.
func (s *Service) Stop(context.Context) error {
	var err error
	s.stopOnce.Do(func() {
		if s.endpoints != nil {
			s.endpoints.Stop()
		}
		for _, sub := range s.subs {
			_ = sub.Unsubscribe()
		}
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		err = s.backend.Close()
		s.log.Info("auth stopped")
	})
	return err
}

// changed announces that key id changed, so one replica disconnects its
// connections (they reconnect and are decided anew).
func (s *Service) changed(id string) {
	if err := s.deps.NATS.Publish(ChangedSubject(id), nil); err != nil {
		s.log.Warn("key change not announced; its connections keep their permissions until they reconnect or expire", "key", id, "err", err)
	}
}

func (s *Service) onChanged(msg *nats.Msg) {
	id := strings.TrimPrefix(msg.Subject, ChangedSubject(""))
	if events.ValidateKeyID(id) != nil {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n, err := s.kick.Kick(ctx, id)
		s.metrics.kicks.WithLabelValues("kicked").Add(float64(n))
		if err != nil {
			s.metrics.kicks.WithLabelValues("failed").Inc()
			s.log.Warn("a changed key's connections could not be kicked", "key", id, "err", err)
			return
		}
		if n > 0 {
			s.log.Info("connections of a changed key disconnected", "key", id, "connections", n)
		}
	}()
}

// Run is the service.StartFunc of the auth service, for its binary: it
// loads the auth section, connects as the system user, and starts.
func Run(ctx context.Context, d service.Deps) (func(context.Context) error, error) {
	cfg, err := LoadConfig(d.ConfigPath, d.Getenv)
	if err != nil {
		return nil, err
	}
	sysCfg := d.Config.NATS
	sysCfg.User, sysCfg.Password, sysCfg.Token, sysCfg.CredsFile = cfg.SysUser, cfg.SysPassword, "", ""
	sysCfg.Name = "allot-auth-sys"
	sys, err := service.ConnectNATS(ctx, sysCfg, d.Log)
	if err != nil {
		return nil, fmt.Errorf("auth: the system user: %w", err)
	}
	s, err := Start(ctx, cfg, Deps{NATS: d.NATS, Sys: sys, Redis: d.Redis, KeyPrefix: d.Config.Redis.KeyPrefix, Registerer: d.Registry, Instance: d.Config.Instance, Log: d.Log})
	if err != nil {
		sys.Close()
		return nil, err
	}
	return func(ctx context.Context) error {
		err := s.Stop(ctx)
		sys.Close()
		return err
	}, nil
}

func staticKeys(cfg Config) []string {
	out := make([]string, len(cfg.StaticKeys))
	for i, k := range cfg.StaticKeys {
		out[i] = k.Reveal()
	}
	return out
}

func roleNames(roles map[string]Role) string {
	names := make([]string, 0, len(roles))
	for n := range roles {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
