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

	stopConsumer func(context.Context) error
	stopWatch    func()
	stopEpoch    func()
	stopFollow   func()
	stopOnce     sync.Once
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
		StreamDedup: !cfg.Meter.DedupIDs, WaitReplicas: cfg.Meter.WaitReplicas, WaitTimeout: cfg.Meter.WaitTimeout})
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
	ccfg := jetstream.ConsumerConfig{
		Durable:     cfg.Meter.Consumer,
		Description: "allot meter: applies usage events to Redis",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     cfg.Meter.AckWait,
		// Past it the server gives up on an event; WatchMaxDeliveries
		// dead-letters it (service.MaxDeliverOutlasts: hours of Redis away).
		MaxDeliver:    cfg.Meter.MaxDeliver,
		MaxAckPending: cfg.Meter.MaxAckPending,
		FilterSubject: cfg.Subjects.UsageStreamSubject(),
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if cfg.Meter.Ordered {
		ccfg = service.PinnedConsumer(ccfg, PriorityGroup, cfg.Meter.EffectivePinTTL())
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.Streams.Usage, ccfg)
	if err != nil {
		return nil, fmt.Errorf("meter: consumer %s on %s: %w", cfg.Meter.Consumer, cfg.Streams.Usage, err)
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
	cc := cfg.Meter.ConsumerConfig(cfg.Meter.Consumer)
	cc.Ready, cc.Metrics = st.Ping, cm
	if cfg.Meter.Ordered {
		cc.PriorityGroup = PriorityGroup
	}
	if guard {
		cc.Ready = m.rebuildingReady
	}
	cc.DeadLetters = &service.DeadLetters{Subject: m.deadSubject, Stream: cfg.Streams.Usage, Counted: m.deadCounted}
	consumer, err := service.NewConsumer(cons, js, applier{m}, cc, log)
	if err != nil {
		return nil, fmt.Errorf("meter: %w", err)
	}
	m.stopWatch, err = service.WatchMaxDeliveries(js, service.MaxDeliveries{
		Stream: cfg.Streams.Usage, Consumer: cfg.Meter.Consumer, DeadLetters: cc.DeadLetters, Counted: cm.MaxDeliveryCounted,
	}, log)
	if err != nil {
		return nil, fmt.Errorf("meter: %w", err)
	}
	m.stopConsumer = consumer.Start(ctx)
	m.stopFollow = func() {}
	if !cfg.Meter.DedupIDs || cfg.Meter.Ordered {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { defer close(done); m.followConsumer(fctx, cons, consumer, cm) }()
		m.stopFollow = func() { cancel(); <-done }
	}
	m.stopEpoch = func() {}
	if guard {
		ectx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { defer close(done); m.watchEpoch(ectx) }()
		m.stopEpoch = func() { cancel(); <-done }
	}
	log.Info("meter started", "stream", cfg.Streams.Usage, "consumer", cfg.Meter.Consumer, "ordered", cfg.Meter.Ordered,
		"metrics", len(cfg.Usage.Metrics), "handlers", cfg.Meter.Handlers)
	return m, nil
}

// followEvery is how often a meter reads its consumer's state: the ack
// floor, below which a meter deduplicating by stream position can drop
// records, and who holds the pin (meter.ordered).
const followEvery = 2 * time.Second

// followConsumer tells the store the usage consumer's ack floor (when
// deduplicating by stream position) and sets the pinned and pending
// gauges (when ordered) until ctx ends. A floor read late only keeps records a little
// longer.
func (m *Meter) followConsumer(ctx context.Context, cons jetstream.Consumer, consumer *service.Consumer, cm *service.ConsumerMetrics) {
	t := time.NewTicker(followEvery)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, followEvery)
		info, err := cons.Info(cctx)
		cancel()
		if err == nil {
			if !m.cfg.Meter.DedupIDs {
				m.store.SetAckFloor(info.AckFloor.Stream)
			}
			if m.cfg.Meter.Ordered {
				m.metrics.pinned.Set(boolGauge(consumer.HoldsPin(info)))
				cm.SetPending(info.NumPending) // a standby's would stay at its last chunk's
			}
		} else if ctx.Err() == nil {
			m.log.Debug("reading the usage consumer's state", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
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
		err = m.stopConsumer(ctx)
		m.stopFollow()
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
