// Package ratelimit is allot's rate limiter: it answers
// ratelimit.check.<uid> (may this call go ahead?) and
// ratelimit.reset.<uid> over NATS, keeping its windows in Redis. Its
// binary (cmd/ratelimit) and "allot dev" both run it through Run.
//
// # Limits
//
// A check naming no service spends the uid's own limit: its "ratelimit"
// grant (default grants.ratelimit, 500) per ratelimit.interval. A check
// naming a service spends that service's limit, configured under
// ratelimit.services with its own interval and mode; without a configured
// limit the uid's "ratelimit" grant applies. A uid's grant
// "ratelimit_<service>" overrides both. Grants live in the meter's grants
// hash, so meter.grants sets them and every replica sees a change at once.
//
// # Modes
//
// Windows are epoch-aligned: window k of an interval I covers
// [k*I, (k+1)*I) of Redis's clock, in milliseconds. Two keys per (uid,
// service) hold the windows of even and odd k, as in apicrud; each stores
// k beside its count, so a key left from window k-2 counts as empty.
//
// fixed admits a call when the current window's count plus its cost is
// at most the limit L. Each window admits at most L, exactly; any span of
// one interval that straddles a boundary can hold up to 2L (L at the end
// of one window, L at the start of the next).
//
// sliding admits a call at elapsed time e (ms) into window k when
//
//	c[k-1]*(I-e)/I + a + cost <= L
//
// where c[k-1] is the whole previous window's count and a what window k
// has admitted so far. The previous window's weight decays linearly, so
// the boundary burst above passes L, not 2L: a burst lasting d ms across
// a boundary passes at most L + L*(d-1)/I.
//
// The bound for sliding, proved: any span [s, s+I) holds at most
//
//	L + floor(L*(I-2)/I)   (< 2L; I in ms)
//
// admitted. Proof: if s = k*I the span is window k, which holds at most L
// (its last admission had a*I <= L*I). Otherwise s = k*I + x with
// 1 <= x <= I-1, and the span holds the calls of window k at elapsed >= x
// (c[k] - A, where A are those before x) and those of window k+1 at
// elapsed <= x-1 (H). At the last admission of window k+1 in the span, at
// elapsed e <= x-1, the rule gives c[k]*(I-e) + H*I <= L*I, so
// H <= L - c[k]*(I-x+1)/I. Then c[k] - A + H <= L + c[k]*(x-1)/I - A
// <= L + L*(I-2)/I, since c[k] <= L, A >= 0 and x <= I-1; counts are
// integers, hence the floor. The bound is reached: L at the last ms of a
// window that follows an empty one, then whatever passes in the next
// window up to 2 ms before its end (L*(I-2)/I). So sliding is not a 2x
// guarantee against a patient client: it stops bursts, and over any run
// of windows it admits at most L per window on average, like fixed.
//
// # One clock
//
// Every decision is made inside Redis, by Lua that reads Redis TIME, the
// limit and both windows, decides and records within one script call: no
// worker passes its own time, so workers whose clocks differ by seconds
// still share window boundaries exactly. A refused call records nothing.
// A window's key expires one interval after the window ends (sliding
// reads it until then).
//
// # Hits from usage events
//
// A service with a `metric` (a per-user counter) also counts that
// metric's usage events as hits: each adds its value to the uid's window
// of the time the usage stream stored it (its JetStream timestamp, as the
// meter judges grant periods; not the event's own time field, which the
// app sets), once per service however often it is delivered, through a
// durable consumer of its own (ratelimit.consumer, new events only) and
// a dedup record set in the same script, as the meter does. Hits may
// pass the limit (events are facts); checks are then refused until the
// window lets them in. The stream's clock, not Redis's at the moment of
// counting, is what lets a replay of the stream put every event back in
// its window after Redis lost them (loss.go, rebuild.go); the price is
// that windows of hits follow the NATS servers' clock, and checks
// Redis's: a skew between the two moves a hit across a boundary by that
// much. An event counted more than an interval late lands in a window
// that may be gone (then it changes nothing).
//
// # Batches
//
// Checks are served in batches: those that arrive while the pipelines are
// busy queue up, and the next batch takes them all (up to 256) and sends
// them to Redis in one round trip, ratelimit.pipelines batches at once
// (default 2). On a single Redis node the batch is one script call
// (check_many.lua), which reads Redis TIME once and decides the checks in
// the order they arrived, at that time, each as a call of its own would
// be: a check sees the checks of its (uid, service) before it, and one
// that fails (a key of the wrong type) fails alone. On a Redis Cluster, where
// a batch's keys live in many slots, each check is a script call of its
// own (check.lua), all in one pipeline, in the same order. Either way
// batching changes no decision; it saves the round trips, which are what
// limits a small machine, and on a single node some of Redis's work per
// check (a script call and a clock reading each). Checks that are invalid
// or refused by the cache are answered without Redis.
// ratelimit.timeout bounds a batch's round trip from the start of the
// batch, so a batch that Redis does not answer fails open or closed
// together. allot_ratelimit_batch_size counts the checks per batch.
//
// # Shadow mode, Redis trouble, the cache
//
// A shadow service (or ratelimit.shadow) decides and counts but never
// denies; its would-be denials are counted and consume nothing, so the
// counts are those enforcing would produce. When Redis does not answer
// within ratelimit.timeout, a fail_open service allows the call and any
// other answers 503; both are counted. A service with cache on remembers
// (uid, service) pairs found over the limit until their retry time, on the
// local monotonic clock, and refuses them without asking Redis.
package ratelimit

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
	"github.com/allot/allot/services/ratelimit/internal/store"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Deps are the connections and registries the rate limiter runs on.
type Deps struct {
	NATS  *nats.Conn
	Redis redis.UniversalClient
	// Registerer receives the rate limiter's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Log receives what happens; nil discards it.
	Log *slog.Logger
	// Now overrides Redis TIME as the clock of the windows (tests).
	Now func() time.Time
	// Clock is the local clock of the cache; nil is time.Now. Only
	// durations are measured on it, so its offset does not matter.
	Clock func() time.Time

	// oneScriptPerCheck sends each check of a batch as a script call of
	// its own, as on a Redis Cluster (tests: store.Options).
	oneScriptPerCheck bool
}

// Limiter is a running rate limiter.
type Limiter struct {
	cfg       Config
	log       *slog.Logger
	nc        *nats.Conn
	store     *store.Store
	metrics   *metrics
	cache     *cache
	clock     func() time.Time
	failOpen  failOpenLog
	endpoints *service.Endpoints
	grpc      *grpcFront // the Envoy gRPC front (grpc.go)
	stopOnce  sync.Once

	// The hit worker, when some service counts usage events.
	stopHits        func(context.Context) error
	consumerMetrics *service.ConsumerMetrics

	// The loss of the windows of hits (loss.go), when some service counts
	// hits and ratelimit.loss_check is on.
	rdb        redis.UniversalClient
	registerer prometheus.Registerer
	usage      jetstream.Stream
	epoch      service.Epoch
	locker     *mutex.Locker // the rebuild lock
	lost       atomic.Bool   // Redis lacks the epoch marker: the windows of hits are lost or being rebuilt
}

// New checks the configuration and loads the script; it starts no
// endpoints (Start does). deps.NATS may be nil.
func New(ctx context.Context, cfg Config, deps Deps) (*Limiter, error) {
	if deps.Redis == nil {
		return nil, errors.New("ratelimit: Redis is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, err := store.New(ctx, deps.Redis, store.Options{Keys: keys.New(cfg.Redis.KeyPrefix), Now: deps.Now, OneScriptPerCheck: deps.oneScriptPerCheck,
		Guard: guards(cfg)})
	if err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	l := &Limiter{
		cfg:   cfg,
		log:   log.With("service", "ratelimit"),
		nc:    deps.NATS,
		store: st,
		cache: newCache(maxCached),
		clock: deps.Clock,
		rdb:   deps.Redis,

		registerer: deps.Registerer,
	}
	if l.clock == nil {
		l.clock = time.Now
	}
	if !contextTimeouts(deps.Redis) {
		l.log.Warn("the Redis client ignores context deadlines: ratelimit.timeout cannot bound a decision (service.ConnectRedis sets ContextTimeoutEnabled)")
	}
	if l.metrics, err = newMetrics(deps.Registerer); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if l.grpc, err = newGRPCFront(l, deps.Registerer); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if len(cfg.RateLimit.HitServices()) > 0 {
		if l.consumerMetrics, err = service.NewConsumerMetrics(deps.Registerer, "allot_ratelimit_hits", "Usage events counted as hits"); err != nil {
			return nil, fmt.Errorf("ratelimit: %w", err)
		}
	}
	return l, nil
}

// Start starts the rate limiter and its endpoints. Stop ends them.
func Start(ctx context.Context, cfg Config, deps Deps) (*Limiter, error) {
	if deps.NATS == nil {
		return nil, errors.New("ratelimit: NATS and Redis are required")
	}
	l, err := New(ctx, cfg, deps)
	if err != nil {
		return nil, err
	}
	if err := l.startEndpoints(deps.Registerer); err != nil {
		l.stopEndpoints()
		return nil, err
	}
	if err := l.grpc.start(); err != nil {
		l.stopEndpoints()
		return nil, err
	}
	if err := l.startHits(ctx); err != nil {
		l.grpc.stop()
		l.stopEndpoints()
		return nil, err
	}
	l.log.Info("rate limiter started", "services", len(cfg.RateLimit.Services), "handlers", cfg.RateLimit.Handlers, "pipelines", cfg.RateLimit.Pipelines,
		"interval", cfg.RateLimit.Interval, "mode", cfg.RateLimit.Mode)
	return l, nil
}

// Stop stops taking requests (requests being answered finish) and lets
// the hit worker count and ack what it holds, returning when it has or
// when ctx ends.
func (l *Limiter) Stop(ctx context.Context) error {
	var err error
	l.stopOnce.Do(func() {
		l.grpc.stop()
		l.stopEndpoints()
		if l.stopHits != nil {
			err = l.stopHits(ctx)
		}
		l.log.Info("rate limiter stopped")
	})
	return err
}

// Run is the service.StartFunc of the rate limiter's binary: it reads the rate limiter's
// sections of d's file (LoadConfig) and starts it with them on d.
func Run(ctx context.Context, d service.Deps) (func(context.Context) error, error) {
	return service.Loaded(LoadConfig, RunWith)(ctx, d)
}

// RunWith is the service.StartFunc that starts the rate limiter with cfg
// on d's connections, as "allot dev" does with its one configuration; it
// returns the rate limiter's Stop.
func RunWith(cfg Config) service.StartFunc {
	return service.Starting(func(ctx context.Context, d service.Deps) (*Limiter, error) {
		return Start(ctx, cfg, Deps{NATS: d.NATS, Redis: d.Redis, Registerer: d.Registry, Log: d.Log})
	})
}

// limitOf returns the rule of service ("" : the uid's own limit), or a
// 404 naming the service.
func (l *Limiter) limitOf(name string) (Service, store.Limit, error) {
	rl, ok := l.cfg.RateLimit.RateLimitFor(name)
	if !ok {
		return rl, store.Limit{}, events.NewServiceError(events.CodeNotFound, "service", "unknown service %q", name)
	}
	def, _ := l.cfg.Usage.DefaultGrant(Grant)
	lim := store.Limit{Service: name, Interval: rl.Interval, Mode: rl.Mode, Configured: -1, DefaultGrant: int64(def)}
	if rl.Limit != nil {
		lim.Configured = *rl.Limit
	}
	return rl, lim, nil
}

// Check decides whether uid's call may go ahead; a denial is a reply with
// Allowed false, not an error. Errors are *events.ServiceError (400, 404,
// 503) or, for a bug, anything else. It is a batch of one.
func (l *Limiter) Check(ctx context.Context, uid string, req events.CheckRequest) (events.CheckReply, error) {
	out := l.checkMany(ctx, []checkCall{{uid: uid, req: req}})
	return out[0].reply, out[0].err
}

// checkCall is one check of a batch, and checkResult its answer.
type checkCall struct {
	uid string
	req events.CheckRequest
}

type checkResult struct {
	reply events.CheckReply
	err   error
}

// pending is a valid check: its rule and how it is counted.
type pending struct {
	uid, service string
	rl           Service
	lim          store.Limit
	cost         int64
	label        string
}

// checkMany decides calls as Check decides each, answering calls[i] in
// out[i]: the invalid ones and those the cache refuses without Redis,
// the rest in one pipelined round trip that ratelimit.timeout, counted
// from the start of the batch, bounds.
func (l *Limiter) checkMany(ctx context.Context, calls []checkCall) []checkResult {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, l.cfg.RateLimit.Timeout)
	defer cancel()
	out := make([]checkResult, len(calls))
	ps := make([]pending, len(calls))
	ops := make([]store.CheckOp, 0, len(calls))
	asked := make([]int, 0, len(calls)) // the calls in ops, in order
	for i, c := range calls {
		p, err := l.prepare(c.uid, c.req)
		if err != nil {
			out[i].err = err
			continue
		}
		if reply, ok := l.fromCache(p); ok {
			out[i].reply = reply
			l.metrics.latency.Observe(time.Since(start).Seconds())
			continue
		}
		if p.rl.Metric != "" && l.lost.Load() {
			out[i].reply, out[i].err = l.failed(p, l.rebuildingError())
			l.metrics.latency.Observe(time.Since(start).Seconds())
			continue
		}
		ps[i] = p
		ops = append(ops, store.CheckOp{UID: p.uid, Limit: p.lim, Cost: p.cost})
		asked = append(asked, i)
	}
	if len(ops) == 0 {
		return out
	}
	ds, errs := l.store.CheckMany(ctx, ops)
	cancel()
	for j, i := range asked {
		out[i].reply, out[i].err = l.decided(ps[i], ds[j], errs[j])
		l.metrics.latency.Observe(time.Since(start).Seconds())
	}
	return out
}

// prepare validates a check and finds its rule: a 400 naming the field,
// or a 404 naming the service.
func (l *Limiter) prepare(uid string, req events.CheckRequest) (pending, error) {
	if err := l.cfg.Subjects.ValidateUID("uid", uid); err != nil {
		return pending{}, events.BadRequest(err)
	}
	if err := req.Validate(); err != nil {
		return pending{}, events.BadRequest(err)
	}
	rl, lim, err := l.limitOf(req.Service)
	if err != nil {
		return pending{}, err
	}
	return pending{uid: uid, service: req.Service, rl: rl, lim: lim, cost: req.CostOrDefault(), label: serviceLabel(req.Service)}, nil
}

// fromCache answers p with the cached refusal of its (uid, service), if
// its service caches and one is cached, counting it.
func (l *Limiter) fromCache(p pending) (events.CheckReply, bool) {
	if !p.rl.Cache || p.rl.Shadow {
		return events.CheckReply{}, false
	}
	now := l.clock()
	e, ok := l.cache.get(p.uid, p.service, now)
	if !ok {
		return events.CheckReply{}, false
	}
	l.metrics.cacheHits.WithLabelValues(p.label).Inc()
	l.count(p.label, p.cost, "denied", true)
	return events.CheckReply{Allowed: false, Limit: e.limit, RetryAfterMs: ceilMs(e.retryAt.Sub(now)), ResetAfterMs: ceilMs(max(0, e.resetAt.Sub(now)))}, true
}

// decided turns the store's decision of p, or its error, into p's reply,
// counting it: Redis not answering fails open or closed, shadow mode
// allows what it counts as denied, and a cached service remembers a
// refusal.
func (l *Limiter) decided(p pending, d store.Decision, err error) (events.CheckReply, error) {
	if err != nil {
		if !errors.Is(err, store.ErrRedis) {
			return events.CheckReply{}, err
		}
		return l.failed(p, events.NewServiceError(events.CodeUnavailable, "", "redis unavailable: %v", err))
	}
	reply := events.CheckReply{
		Allowed:      d.Allowed,
		Limit:        d.Limit,
		Remaining:    d.Remaining,
		ResetAfterMs: ceilMs(d.ResetAfter),
		RetryAfterMs: ceilMs(d.RetryAfter),
	}
	result := "allowed"
	switch {
	case d.Allowed:
	case p.rl.Shadow:
		result = "shadow_denied"
		reply.Allowed, reply.RetryAfterMs = true, 0
	default:
		result = "denied"
		if p.rl.Cache && p.cost <= 1 && d.Remaining == 0 {
			now := l.clock()
			l.cache.put(p.uid, p.service, cacheEntry{limit: d.Limit, retryAt: now.Add(d.RetryAfter), resetAt: now.Add(d.ResetAfter)}, now)
		}
	}
	l.count(p.label, p.cost, result, !d.Allowed)
	if d.Limit > 0 && d.Used*100 >= 80*d.Limit {
		l.metrics.nearLimit.WithLabelValues(p.label).Inc()
	}
	return reply, nil
}

// failed answers p when its window cannot be read: Redis did not answer,
// or lost the windows of hits, which are being rebuilt (closed, the
// *events.ServiceError closed). A fail_open service allows the call,
// any other answers closed (a 503).
func (l *Limiter) failed(p pending, closed error) (events.CheckReply, error) {
	if p.rl.FailOpen {
		l.count(p.label, p.cost, "failed_open", false)
		l.failOpen.note(l.log, l.clock(), p, closed)
		reply := events.CheckReply{Allowed: true}
		if p.lim.Configured >= 0 {
			reply.Limit = p.lim.Configured
		}
		return reply, nil
	}
	l.count(p.label, p.cost, "failed_closed", false)
	return events.CheckReply{}, closed
}

// count records one decision; a peek (cost 0) is counted apart.
func (l *Limiter) count(label string, cost int64, result string, over bool) {
	if cost == 0 {
		l.metrics.peeks.WithLabelValues(label).Inc()
		return
	}
	l.metrics.decisions.WithLabelValues(label, result).Inc()
	if over {
		l.metrics.overLimit.WithLabelValues(label).Inc()
	}
}

// Reset clears uid's windows for service ("" : the uid's own limit).
func (l *Limiter) Reset(ctx context.Context, uid string, req events.ResetRequest) error {
	if err := l.cfg.Subjects.ValidateUID("uid", uid); err != nil {
		return events.BadRequest(err)
	}
	if err := req.Validate(); err != nil {
		return events.BadRequest(err)
	}
	if _, _, err := l.limitOf(req.Service); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, max(l.cfg.RateLimit.Timeout, time.Second))
	defer cancel()
	if err := l.store.Reset(ctx, uid, req.Service); err != nil {
		if errors.Is(err, store.ErrRedis) {
			return events.NewServiceError(events.CodeUnavailable, "", "redis unavailable: %v", err)
		}
		return err
	}
	l.cache.drop(uid, req.Service)
	l.log.Info("window reset", "uid", uid, "service", req.Service)
	return nil
}

// contextTimeouts reports whether rdb bounds its network waits by a
// request's context, which the decision budget relies on.
func contextTimeouts(rdb redis.UniversalClient) bool {
	switch c := rdb.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled
	}
	return true
}

// ceilMs rounds d up to whole milliseconds.
func ceilMs(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// serviceLabel is the service label of the metrics: the service, or
// "(uid)" for the uid's own limit (no token contains parentheses).
func serviceLabel(name string) string {
	if name == "" {
		return "(uid)"
	}
	return name
}
