// Package meter is allot's meter service: it turns usage events into exact
// grant, counter and gauge state in Redis, and answers credit, authorize
// and grants requests over NATS. Its binary (cmd/meter) and "allot dev"
// both run it through Start.
package meter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/mutex"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/meter/internal/store"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Deps are the connections and registries the meter runs on.
type Deps struct {
	NATS  *nats.Conn
	Redis redis.UniversalClient
	// Registerer receives the meter's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Log receives what happens; nil discards it.
	Log *slog.Logger
	// Now overrides Redis TIME as the clock of grant periods (tests).
	Now func() time.Time
}

// Meter is a running meter: the event worker and the endpoints.
type Meter struct {
	cfg       Config
	subj      events.Subjects
	log       *slog.Logger
	nc        *nats.Conn
	js        jetstream.JetStream
	store     *store.Store
	metrics   *metrics
	endpoints *service.Endpoints
	replier   service.Replier
	grants    grantNames // the grants meter.grants may set

	rdb    redis.UniversalClient
	locker *mutex.Locker // the rebuild lock; nil when meter.loss_check is 0
	lost   atomic.Bool   // Redis lacks the epoch marker: the state is lost or being rebuilt
	// heldSince is the marker's held_since in ms (0: none): the state
	// holds usage only since then (a rebuild from a stream that had lost
	// its oldest events); credit replies say so (countedSince).
	heldSince atomic.Int64
	// checking serializes checkEpoch: the watcher's tick and the rebuild
	// lock holder's check run in goroutines of their own, and a check
	// that read the markers before another dropped one must not set lost
	// back to false after it.
	checking sync.Mutex

	// consumers are the usage stream's durable consumers: one, or one per
	// partition (partitions.go); runCtx is the one they run under.
	consumers []*usageConsumer
	runCtx    context.Context
	replicaID string         // this meter among the partitioned replicas
	stopping  sync.WaitGroup // partitions being given up (balance)

	stopWatch  func()
	stopEpoch  func()
	stopFollow func()
	stopOnce   sync.Once
}

// Start checks the configuration, creates the streams and the durable
// consumer, starts the endpoints and the worker, and returns. Stop ends
// them.
func Start(ctx context.Context, cfg Config, deps Deps) (*Meter, error) {
	if deps.NATS == nil || deps.Redis == nil {
		return nil, errors.New("meter: NATS and Redis are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("meter: %w", err)
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("service", "meter")
	guard := cfg.Meter.LossCheck > 0
	st, err := store.New(ctx, deps.Redis, store.Options{Keys: keys.New(cfg.Redis.KeyPrefix), DedupTTL: cfg.Meter.DedupTTL, Now: deps.Now, Guard: guard,
		StreamDedup: !cfg.Meter.DedupIDs, Partitions: cfg.Streams.Partitions, WaitReplicas: cfg.Meter.WaitReplicas, WaitTimeout: cfg.Meter.WaitTimeout})
	if err != nil {
		return nil, fmt.Errorf("meter: %w", err)
	}
	js, err := jetstream.New(deps.NATS)
	if err != nil {
		return nil, fmt.Errorf("meter: %w", err)
	}
	if err := events.EnsureStreams(ctx, js, cfg.Subjects, cfg.Streams); err != nil {
		return nil, fmt.Errorf("meter: %w", err)
	}
	m := &Meter{
		cfg:   cfg,
		subj:  cfg.Subjects,
		log:   log,
		nc:    deps.NATS,
		js:    js,
		store: st,
		rdb:   deps.Redis,
	}
	m.grants = newGrantNames(cfg)
	m.replicaID = newReplicaID(cfg.Instance)
	if m.metrics, err = newMetrics(deps.Registerer, m); err != nil {
		return nil, fmt.Errorf("meter: %w", err)
	}
	if guard {
		if err := m.adoptOrCheckEpoch(ctx); err != nil {
			return nil, fmt.Errorf("meter: %w", err)
		}
		if m.locker, err = mutex.New(deps.Redis, mutex.Options{Prefix: cfg.Redis.KeyPrefix, Registerer: deps.Registerer}); err != nil {
			return nil, fmt.Errorf("meter: %w", err)
		}
	}
	if err := m.createConsumers(ctx); err != nil {
		return nil, err
	}
	m.replier = service.Replier{Requests: m.metrics.requests, Log: log, Classify: func(err error) *events.ServiceError {
		if errors.Is(err, store.ErrRedis) {
			return events.NewServiceError(events.CodeUnavailable, "", "redis unavailable: %v", err)
		}
		return nil
	}}
	if err := m.startEndpoints(deps.Registerer); err != nil {
		return nil, err
	}
	cm, err := service.NewConsumerMetrics(deps.Registerer, "allot_meter", "Usage events")
	if err != nil {
		return nil, fmt.Errorf("meter: %w", err)
	}
	var stopWatches []func()
	m.stopWatch = func() {
		for _, stop := range stopWatches {
			stop()
		}
	}
	for _, uc := range m.consumers {
		cc := cfg.Meter.ConsumerConfig(uc.name)
		cc.Ready, cc.Metrics = st.Ping, cm
		if cfg.Meter.Ordered {
			cc.PriorityGroup = PriorityGroup
		}
		if guard {
			cc.Ready = m.rebuildingReady
		}
		cc.PendingFromInfo = cfg.Streams.Partitions > 0 // the sum, set by followConsumers
		cc.DeadLetters = &service.DeadLetters{Subject: m.deadSubject, Stream: cfg.Streams.Usage, Counted: m.deadCounted}
		uc.cc = cc
		stop, err := service.WatchMaxDeliveries(js, service.MaxDeliveries{
			Stream: cfg.Streams.Usage, Consumer: uc.name, DeadLetters: cc.DeadLetters, Counted: cm.MaxDeliveryCounted,
		}, log)
		if err != nil {
			m.stopWatch()
			m.stopEndpoints()
			return nil, fmt.Errorf("meter: %w", err)
		}
		stopWatches = append(stopWatches, stop)
	}
	m.runCtx = ctx
	for _, uc := range m.consumers {
		if err := m.pull(uc); err != nil {
			m.stopConsumers(ctx)
			m.stopWatch()
			m.stopEndpoints()
			return nil, fmt.Errorf("meter: %w", err)
		}
	}
	m.stopFollow = func() {}
	if !cfg.Meter.DedupIDs || cfg.Meter.Ordered || cfg.Streams.Partitions > 0 {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { defer close(done); m.followConsumers(fctx, cm) }()
		m.stopFollow = func() { cancel(); <-done }
	}
	m.stopEpoch = func() {}
	if guard {
		ectx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { defer close(done); m.watchEpoch(ectx) }()
		m.stopEpoch = func() { cancel(); <-done }
	}
	log.Info("meter started", "stream", cfg.Streams.Usage, "consumer", cfg.Meter.Consumer, "partitions", cfg.Streams.Partitions, "ordered", cfg.Meter.Ordered,
		"metrics", len(cfg.Usage.Metrics), "handlers", cfg.Meter.Handlers)
	return m, nil
}

// followEvery is how often a meter reads its consumers' state: the ack
// floors, below which a meter deduplicating by stream position can drop
// records, who holds each pin (meter.ordered), and, partitioned and
// ordered, how many meters share the partitions.
const followEvery = 2 * time.Second

// followConsumers tells the store each usage consumer's ack floor (when
// deduplicating by stream position), sets the pinned and pending gauges,
// and with partitions and meter.ordered shares them out among the
// replicas (balance), until ctx ends. A floor read late only keeps
// records a little longer.
func (m *Meter) followConsumers(ctx context.Context, cm *service.ConsumerMetrics) {
	t := time.NewTicker(followEvery)
	defer t.Stop()
	held := make([]bool, len(m.consumers))
	balancing := m.cfg.Meter.Ordered && m.cfg.Streams.Partitions > 0
	last := ""
	for {
		var pending uint64
		known := true
		for i, uc := range m.consumers {
			cctx, cancel := context.WithTimeout(ctx, followEvery)
			info, err := uc.cons.Info(cctx)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					m.log.Debug("reading a usage consumer's state", "consumer", uc.name, "err", err)
				}
				known = false
				continue
			}
			if !m.cfg.Meter.DedupIDs {
				m.store.SetAckFloor(uc.index, info.AckFloor.Stream)
			}
			held[i] = uc.holds(info)
			pending += info.NumPending
		}
		n := 0
		for _, h := range held {
			if h {
				n++
			}
		}
		if m.cfg.Meter.Ordered {
			m.metrics.pinned.Set(float64(n))
		}
		if m.cfg.Meter.Ordered || m.cfg.Streams.Partitions > 0 {
			cm.SetPending(pending) // a standby's would stay at its last chunk's
		}
		if balancing && known {
			if replicas, err := m.heartbeat(ctx); err == nil {
				if now := fmt.Sprint(partitionsHeld(held)); now != last {
					m.log.Info("usage partitions held", "partitions", now, "replicas", replicas, "share", FairShare(len(m.consumers), replicas))
					last = now
				}
				m.balance(ctx, held, replicas)
			} else if ctx.Err() == nil {
				m.log.Debug("meters' heartbeat", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// stopConsumers stops every usage consumer gracefully, the ones being
// given up included, and returns the first error.
func (m *Meter) stopConsumers(ctx context.Context) error {
	var first error
	for _, uc := range m.consumers {
		if err := m.stopPulling(ctx, uc, 0); err != nil && first == nil {
			first = err
		}
	}
	m.stopping.Wait()
	return first
}

// boolGauge is a gauge's value for b: 1 or 0.
func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Stop stops taking requests, lets the worker finish the events it holds
// (acking them) and returns when it has, or when ctx ends.
func (m *Meter) Stop(ctx context.Context) error {
	var err error
	m.stopOnce.Do(func() {
		m.stopEndpoints()
		m.stopEpoch()
		m.stopFollow() // no balancing once the consumers stop
		err = m.stopConsumers(ctx)
		if m.cfg.Meter.Ordered && m.cfg.Streams.Partitions > 0 {
			m.leave(context.WithoutCancel(ctx))
		}
		m.metrics.pinned.Set(0)
		m.stopWatch()
		if err == nil {
			m.log.Info("meter stopped")
		}
	})
	return err
}

func (m *Meter) startEndpoints(reg prometheus.Registerer) error {
	eps, err := service.StartEndpoints(m.nc, service.EndpointsConfig{
		Name:        "meter",
		Description: "allot meter: credit, authorize and grants",
		Group:       m.subj.Meter,
		Instance:    m.cfg.Instance,
		Registerer:  reg,
		Handlers:    m.cfg.Meter.Handlers,
		Pipelines:   m.cfg.Meter.Pipelines,
		ObserveBatch: func(endpoint string, n int) {
			m.metrics.requestBatch.WithLabelValues(endpoint).Observe(float64(n))
		},
	}, []service.Endpoint{
		{Name: "credit", Subject: "credit.*", Batch: m.handleCredits, Many: "credit_many"},
		{Name: "authorize", Subject: "authorize.*", Batch: m.handleAuthorizes, Many: "authorize_many"},
		{Name: "grants", Subject: "grants.*", Handler: m.handleGrants},
	}, m.log)
	if err != nil {
		return err
	}
	m.endpoints = eps
	return nil
}

func (m *Meter) stopEndpoints() {
	if m.endpoints != nil {
		m.endpoints.Stop()
	}
}

// Run is the service.StartFunc of the meter's binary: it reads the meter's
// sections of d's file (LoadConfig) and starts it with them on d.
func Run(ctx context.Context, d service.Deps) (func(context.Context) error, error) {
	return service.Loaded(LoadConfig, RunWith)(ctx, d)
}

// RunWith is the service.StartFunc that starts the meter with cfg on d's
// connections, as "allot dev" does with its one configuration; it returns
// the meter's Stop.
func RunWith(cfg Config) service.StartFunc {
	return service.Starting(func(ctx context.Context, d service.Deps) (*Meter, error) {
		return Start(ctx, cfg, Deps{NATS: d.NATS, Redis: d.Redis, Registerer: d.Registry, Log: d.Log})
	})
}

// deadSubject is where the refusal of an event that came on subject goes:
// usage.dead.<uid>, or usage.dead._ when the subject had no valid uid.
func (m *Meter) deadSubject(subject string) string {
	uid, err := m.subj.ParseUsage(subject)
	if err != nil {
		uid = "_"
	}
	return m.subj.DeadFor(uid)
}
