// Package registry is allot's service registry: instances register
// themselves on registry.register with a TTL and renew it by registering
// again (the heartbeat); registry.find[.<name>] lists the live ones with
// the URL serving each top-level resource; registry.changed.<name> says
// when one appears, changes, is deregistered or expires, each change of
// a name numbered (seq) by the script that makes it, so a client's
// events.RegistryWatch can tell it missed one. Its binary (cmd/registry) and
// "allot dev" both run it through Run.
//
// # Storage
//
// An instance is one Redis STRING under {registry}, sealed with
// AES-256-GCM (internal/crypt) and expiring after registry.ttl, plus its
// member in a sorted set of expiry times, an id -> name index and the
// current ciphertext in a hash, all written by one script on Redis's
// clock. Sealing is deterministic, so the script sees whether a heartbeat
// changed anything by comparing ciphertexts. Entries no configured key
// opens (another cluster sharing the Redis, a rotated-out key, corruption)
// are skipped and counted, never fatal.
//
// # Expiry
//
// Redis expires the entry by itself; the reaper publishes the expiry. One
// replica at a time reaps, holding the pkg/mutex lock
// "registry-reaper-<key id>" with its watchdog: every
// registry.reap_interval it reads the members whose expiry has passed,
// removes those whose entry key is really gone (one script) and publishes
// "expired" for each. It does not rely on keyspace notifications. It
// reaps only entries it can open, or any that expired more than ten TTLs
// ago, so two clusters sharing a Redis each announce their own.
//
// # Finds
//
// The decrypted instances and each encoded reply are kept in memory for
// registry.find_cache (default 1s) and dropped at once when a change
// event (from any replica) arrives on NATS. A find whose request carries
// the header Accept-Encoding: gzip is answered gzipped, with
// Content-Encoding: gzip, unless the reply is under 1 KiB; the gzipped
// form is made by the first such find and kept beside the plain one
// (compress.go). A find without the header gets plain JSON.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/mutex"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/registry/internal/crypt"
	"github.com/allot/allot/services/registry/internal/store"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// ErrNoKey: the registry has no key to seal entries with.
var ErrNoKey = errors.New(`registry: no encryption key: set registry.keys in the config (or ALLOT_REGISTRY_KEYS), e.g. the output of "openssl rand -base64 32"; "allot dev" makes one up`)

// foreignGrace is how long, in TTLs, an expired entry this registry cannot
// open is left for the reaper of the cluster that can.
const foreignGrace = 10

// reapBatch is the most expired entries one reaper round handles.
const reapBatch = 1000

// Deps are the connections and registries the registry runs on.
type Deps struct {
	NATS  *nats.Conn
	Redis redis.UniversalClient
	// Registerer receives the registry's metrics (and the lock's); nil
	// registers none.
	Registerer prometheus.Registerer
	// Log receives what happens; nil discards it.
	Log *slog.Logger
	// Now overrides Redis TIME (tests).
	Now func() time.Time
	// Clock is the local clock of the find cache; nil is time.Now.
	Clock func() time.Time
}

// Registry is a running registry.
type Registry struct {
	cfg       Config
	log       *slog.Logger
	nc        *nats.Conn
	store     *store.Store
	sealer    *crypt.Sealer
	locker    *mutex.Locker
	metrics   *metrics
	clock     func() time.Time
	endpoints *service.Endpoints
	sub       *nats.Subscription
	cache     cache

	cancel   context.CancelFunc
	done     chan struct{}
	stopOnce sync.Once
}

// Start checks the configuration and the keys, loads the scripts, and
// starts the endpoints and the reaper. Stop ends them.
func Start(ctx context.Context, cfg Config, deps Deps) (*Registry, error) {
	if deps.NATS == nil || deps.Redis == nil {
		return nil, errors.New("registry: NATS and Redis are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	if len(cfg.Registry.Keys) == 0 {
		return nil, ErrNoKey
	}
	secrets := make([]string, len(cfg.Registry.Keys))
	for i, k := range cfg.Registry.Keys {
		if strings.HasPrefix(k.Reveal(), "CHANGE-ME-") {
			return nil, fmt.Errorf("registry: registry.keys: key %d is the placeholder of deploy/k8s/base/secrets.yaml: put a random key in Secret allot-registry", i)
		}
		secrets[i] = k.Reveal()
	}
	sealer, err := crypt.New(secrets...)
	if err != nil {
		return nil, fmt.Errorf("registry: registry.keys: %w", err)
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, err := store.New(ctx, deps.Redis, store.Options{Keys: keys.New(cfg.Redis.KeyPrefix), Now: deps.Now})
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	locker, err := mutex.New(deps.Redis, mutex.Options{Prefix: cfg.Redis.KeyPrefix, Registerer: deps.Registerer})
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	r := &Registry{
		cfg:    cfg,
		log:    log.With("service", "registry"),
		nc:     deps.NATS,
		store:  st,
		sealer: sealer,
		locker: locker,
		clock:  deps.Clock,
		done:   make(chan struct{}),
	}
	if r.clock == nil {
		r.clock = time.Now
	}
	if r.metrics, err = newMetrics(deps.Registerer); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	// Any replica's change event drops the find cache.
	if r.sub, err = deps.NATS.Subscribe(cfg.Subjects.RegistryChanged("*"), func(*nats.Msg) { r.cache.invalidate() }); err != nil {
		return nil, fmt.Errorf("registry: subscribe to changes: %w", err)
	}
	if err := r.startEndpoints(deps.Registerer); err != nil {
		r.stopEndpoints()
		return nil, err
	}
	// The endpoints answer once the server has them: a service that
	// registers right after Start must find them.
	if err := deps.NATS.FlushTimeout(cfg.NATS.RequestTimeout); err != nil {
		r.stopEndpoints()
		return nil, fmt.Errorf("registry: %w", err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.reapLoop(rctx)
	}()
	r.log.Info("registry started", "ttl", cfg.Registry.TTL, "handlers", cfg.Registry.Handlers,
		"keys", len(cfg.Registry.Keys), "key_id", sealer.KeyID())
	return r, nil
}

// Stop stops taking requests, stops the reaper (releasing its lock) and
// returns when it has, or when ctx ends.
func (r *Registry) Stop(ctx context.Context) error {
	var err error
	r.stopOnce.Do(func() {
		r.stopEndpoints()
		r.cancel()
		select {
		case <-r.done:
			r.log.Info("registry stopped")
		case <-ctx.Done():
			err = fmt.Errorf("registry: reaper still busy at shutdown deadline: %w", ctx.Err())
		}
	})
	return err
}

func (r *Registry) startEndpoints(reg prometheus.Registerer) error {
	eps, err := service.StartEndpoints(r.nc, service.EndpointsConfig{
		Name:        "registry",
		Description: "allot registry: register, deregister, find, refresh",
		Group:       r.cfg.Subjects.RegistryGroup(),
		Instance:    r.cfg.Instance,
		Registerer:  reg,
		Handlers:    r.cfg.Registry.Handlers,
	}, []service.Endpoint{
		{Name: "register", Subject: "register", Handler: r.handleRegister},
		{Name: "deregister", Subject: "deregister", Handler: r.handleDeregister},
		{Name: "find", Subject: "find", Handler: r.handleFind},
		{Name: "find_name", Subject: "find.*", Handler: r.handleFind},
		{Name: "refresh", Subject: "refresh", Handler: r.handleRefresh},
	}, r.log)
	if err != nil {
		return err
	}
	r.endpoints = eps
	return nil
}

func (r *Registry) stopEndpoints() {
	if r.sub != nil {
		_ = r.sub.Unsubscribe()
	}
	if r.endpoints != nil {
		r.endpoints.Stop()
	}
}

// publish announces a change on registry.changed.<name>. Core NATS: a
// subscriber that is away misses it and asks registry.find.
func (r *Registry) publish(change string, name, id string, seq uint64, inst *events.Instance) {
	r.cache.invalidate()
	data, err := json.Marshal(events.RegistryChange{Name: name, ID: id, Change: change, Instance: inst, Seq: seq})
	if err == nil {
		err = r.nc.Publish(r.cfg.Subjects.RegistryChanged(name), data)
	}
	if err != nil {
		r.metrics.publishErrors.Inc()
		r.log.Warn("publishing a registry change", "name", name, "id", id, "change", change, "err", err)
		return
	}
	r.metrics.changes.WithLabelValues(change).Inc()
}

// Run is the service.StartFunc of the registry's binary: it reads the registry's
// sections of d's file (LoadConfig) and starts it with them on d.
func Run(ctx context.Context, d service.Deps) (func(context.Context) error, error) {
	return service.Loaded(LoadConfig, RunWith)(ctx, d)
}

// RunWith is the service.StartFunc that starts the registry with cfg on
// d's connections, as "allot dev" does with its one configuration; it
// returns the registry's Stop.
func RunWith(cfg Config) service.StartFunc {
	return service.Starting(func(ctx context.Context, d service.Deps) (*Registry, error) {
		return Start(ctx, cfg, Deps{NATS: d.NATS, Redis: d.Redis, Registerer: d.Registry, Log: d.Log})
	})
}
