package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/meter"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// clientConns is how many NATS connections the simulated apps share.
const clientConns = 4

// target is the allot under test and what the harness holds of it.
type target struct {
	runID    string
	kind     string
	cfg      service.Config // subjects, streams and key prefix of the stack
	meter    meter.Settings // the stack's meter: its consumer and handlers
	keys     keys.Keys
	natsURL  string
	redisURL string

	ctl   *nats.Conn // admin: streams, consumers, probes
	js    jetstream.JetStream
	conns []*nats.Conn // the apps'
	rdb   redis.UniversalClient

	stack    *child    // nil for an external target
	more     []*child  // the other stack processes (-stacks)
	caps     []*cpuCap // the stack processes' CPU caps (-stack-cpu), removed at the end
	grpcAddr string    // the stack's Envoy RLS front; empty for an external target
	baseline *child

	// The baselines' own names.
	rawSubjects events.Subjects // Usage is the raw stream's subject prefix
	rawStream   string
	rawConsumer string
	rawReply    string
	bareReply   string          // the bare responder's subject prefix
	pubSubjects events.Subjects // the publish-only stream: Usage for the AsyncPublisher
	pubRaw      string          // ... and the raw publisher's subject prefix
	pubStream   string

	log *slog.Logger
}

func newRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// uid returns the run's i-th uid: "lt-<run>-<i>".
func (t *target) uid(i int) string { return fmt.Sprintf("lt-%s-%d", t.runID, i) }

func (t *target) uidPrefix() string { return "lt-" + t.runID + "-" }

// meterConsumers are the meter's durable consumers of the usage stream:
// one, or one per partition.
func (t *target) meterConsumers() []string {
	return meter.ConsumerNames(t.meter.Consumer, t.cfg.Streams.Partitions)
}

// setUp starts or reaches the target and the baseline process. On error
// what was started is torn down.
func setUp(ctx context.Context, o Options, log *slog.Logger) (t *target, err error) {
	t = &target{runID: newRunID(), kind: o.Target, log: log}
	defer func() {
		if err != nil {
			t.tearDown(o, log)
		}
	}()
	tag := "lt" + t.runID
	if o.GRPC != "" && o.has("grpc") {
		// Before anything starts: a wrong address or domain is the
		// likeliest mistake of a run against someone else's front.
		if err := t.probeGRPC(ctx, o, o.GRPC); err != nil {
			return t, err
		}
	}
	switch o.Target {
	case targetInProcess:
		// Fresh names for everything, so a run on real servers touches
		// nothing of anyone else's.
		cfg := service.Default()
		cfg.Redis.KeyPrefix = "allot-" + tag + ":"
		cfg.Subjects = events.Subjects{Usage: tag + ".usage", Dead: tag + ".usage.dead", Meter: tag + ".meter", RateLimit: tag + ".ratelimit", Registry: tag + ".registry", Notify: tag + ".notify"}
		up := strings.ToUpper(tag)
		cfg.Streams.Usage, cfg.Streams.Dead, cfg.Streams.Notify = up+"_USAGE", up+"_USAGE_DEAD", up+"_NOTIFY"
		cfg.Streams.MaxAge, cfg.Streams.DeadMaxAge, cfg.Streams.NotifyMaxAge = 24*time.Hour, 24*time.Hour, 24*time.Hour
		cfg.Streams.Replicas = o.Replicas
		cfg.Streams.Partitions = o.Partitions
		var secrets [2][32]byte
		for i := range secrets {
			if _, err := rand.Read(secrets[i][:]); err != nil {
				return t, err
			}
		}
		spec := childSpec{Role: roleStack, NATSURL: o.NATSURL, RedisURL: o.RedisURL, RedisAddrs: o.RedisAddrs, Prefix: cfg.Redis.KeyPrefix,
			RegistryKey: hex.EncodeToString(secrets[0][:]), TokenSecret: hex.EncodeToString(secrets[1][:]),
			Subjects: cfg.Subjects, Streams: cfg.Streams, Instance: "loadtest-" + t.runID, Verbose: o.Verbose}
		where := "embedded NATS and miniredis"
		if o.NATSURL != "" || o.RedisURL != "" || len(o.RedisAddrs) > 0 {
			where = fmt.Sprintf("NATS %s, Redis %s", orText(o.NATSURL, "embedded"), redisText(o))
		}
		log.Info("starting the stack (cmd/allot/devstack) in a child process", "on", where)
		t.stack, err = spawn(ctx, spec)
		if err != nil {
			return t, err
		}
		if err := t.capStack(o, t.stack, 1, log); err != nil {
			return t, err
		}
		for i := 2; i <= o.Stacks; i++ {
			s := spec
			s.Instance = fmt.Sprintf("%s-%d", spec.Instance, i)
			c, err := spawn(ctx, s)
			if err != nil {
				return t, fmt.Errorf("stack process %d of %d: %w", i, o.Stacks, err)
			}
			t.more = append(t.more, c)
			if err := t.capStack(o, c, i, log); err != nil {
				return t, err
			}
			log.Info("another stack process ready", "pid", c.pid(), "instance", s.Instance)
		}
		for _, n := range t.stack.ready.Notes {
			log.Info("stack: " + n)
		}
		t.cfg, t.meter, t.natsURL, t.redisURL = cfg, meter.DefaultSettings(), t.stack.ready.NATSURL, t.stack.ready.RedisURL
		t.grpcAddr = t.stack.ready.GRPCAddr
		log.Info("stack ready", "pid", t.stack.pid(), "nats", t.natsURL, "redis", redact(t.redisURL), "services", strings.Join(t.stack.ready.Services, ","))
	case targetExternal:
		getenv := func(k string) string {
			switch k {
			case "NATS_URL":
				return o.NATSURL
			case "REDIS_URL":
				return o.RedisURL
			}
			return os.Getenv(k)
		}
		cfg, err := service.Load(o.Config, getenv)
		if err != nil {
			return t, err
		}
		mcfg, err := meter.LoadConfig(cfg, o.Config, getenv)
		if err != nil {
			return t, err
		}
		t.cfg, t.meter, t.natsURL, t.redisURL = cfg, mcfg.Meter, o.NATSURL, o.RedisURL
	}
	t.keys = keys.New(t.cfg.Redis.KeyPrefix)

	// Connections: one for control, a few for the apps.
	t.ctl, err = connectNATS(ctx, t.natsURL, "allot-loadtest-control")
	if err != nil {
		return t, err
	}
	for i := range clientConns {
		nc, err := connectNATS(ctx, t.natsURL, fmt.Sprintf("allot-loadtest-apps-%d", i))
		if err != nil {
			return t, err
		}
		t.conns = append(t.conns, nc)
	}
	rcfg := t.cfg.Redis
	if t.kind == targetInProcess {
		rcfg.URL, rcfg.Addrs, rcfg.MasterName = service.URL(t.redisURL), nil, ""
		if len(o.RedisAddrs) > 0 {
			rcfg.URL, rcfg.Addrs = "", o.RedisAddrs
		}
	}
	rcfg.PoolSize = 32
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	t.rdb, err = service.ConnectRedis(rctx, rcfg)
	if err != nil {
		return t, fmt.Errorf("cannot reach Redis at %s: %w", redact(t.redisURL), err)
	}
	if t.js, err = jetstream.New(t.ctl); err != nil {
		return t, err
	}
	if _, err := t.js.Stream(rctx, t.cfg.Streams.Usage); err != nil {
		return t, fmt.Errorf("the target has no stream %s on %s (%w): is allot running there, and does -config name its streams?", t.cfg.Streams.Usage, t.natsURL, err)
	}

	// The baselines' stream and streams of their own.
	up := strings.ToUpper(tag)
	t.rawStream, t.rawConsumer, t.rawReply, t.bareReply = up+"_RAW", "raw", tag+".rawget", tag+".bare"
	t.rawSubjects = events.DefaultSubjects()
	t.rawSubjects.Usage = tag + ".raw"
	t.pubStream = up + "_PUB"
	t.pubSubjects = events.DefaultSubjects()
	t.pubSubjects.Usage = tag + ".pub"
	t.pubRaw = tag + ".pubraw"
	sc := events.DefaultStreamConfig()
	sc.MaxAge = 24 * time.Hour
	for _, s := range []jetstream.StreamConfig{
		{Name: t.rawStream, Subjects: []string{t.rawSubjects.Usage + ".*"}, Duplicates: sc.Duplicates, MaxAge: sc.MaxAge, Storage: jetstream.FileStorage, Replicas: o.Replicas},
		{Name: t.pubStream, Subjects: []string{t.pubSubjects.Usage + ".*", t.pubRaw + ".*"}, Duplicates: sc.Duplicates, MaxAge: sc.MaxAge, Storage: jetstream.FileStorage, Replicas: o.Replicas},
	} {
		if _, err := t.js.CreateStream(rctx, s); err != nil {
			return t, fmt.Errorf("create the baseline stream %s: %w", s.Name, err)
		}
	}
	t.baseline, err = spawn(ctx, childSpec{Role: roleBaseline, NATSURL: t.natsURL, RedisURL: t.redisURL, RedisAddrs: o.RedisAddrs, Prefix: t.cfg.Redis.KeyPrefix + tag + ":",
		Instance: "loadtest-" + t.runID, RawStream: t.rawStream, RawConsumer: t.rawConsumer, RawReply: t.rawReply, BareReply: t.bareReply,
		Handlers: t.meter.Handlers, Verbose: o.Verbose})
	if err != nil {
		return t, err
	}
	log.Info("baseline process ready", "pid", t.baseline.pid())
	return t, t.checkServices(ctx, o)
}

// checkServices makes sure the services the scenarios need answer.
func (t *target) checkServices(ctx context.Context, o Options) error {
	c, err := events.NewClient(t.ctl, events.ClientOptions{Subjects: t.cfg.Subjects, Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	check := func(name string, call func() error) error {
		err := call()
		if errors.Is(err, events.ErrNoResponders) || errors.Is(err, events.ErrTimeout) {
			return fmt.Errorf("the %s service does not answer on %s: %w", name, t.natsURL, err)
		}
		return nil // a service error is an answer
	}
	if err := check("meter", func() error { _, err := c.Credit(ctx, t.uid(0), "photo_daily_total"); return err }); err != nil {
		return err
	}
	if o.has("ratelimit") || o.has("mixed") {
		if err := check("ratelimit", func() error { _, err := c.Check(ctx, t.uid(0), events.CheckRequest{Cost: events.Cost(0)}); return err }); err != nil {
			return err
		}
	}
	if o.has("grpc") && t.grpcAddr != "" {
		// The stack's own front serves the default domain, allot, whose
		// descriptor uid is the uid's own limit.
		so := o
		so.GRPCDomain, so.GRPCDescriptor = "allot", "uid"
		if o.GRPC == "" {
			so = o
		}
		if err := t.probeGRPC(ctx, so, t.grpcAddr); err != nil {
			return err
		}
	}
	if o.has("registry") || o.has("mixed") {
		if err := check("registry", func() error { _, err := c.Find(ctx, "lt"+t.runID); return err }); err != nil {
			return err
		}
	}
	return nil
}

func connectNATS(ctx context.Context, url, name string) (*nats.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, err := service.ConnectNATS(cctx, service.NATSConfig{URL: service.URL(url), Name: name, ConnectTimeout: 5 * time.Second, ReconnectWait: 500 * time.Millisecond, RequestTimeout: 2 * time.Second}, nil)
	if err != nil {
		return nil, fmt.Errorf("cannot reach NATS at %s: %w", url, err)
	}
	return nc, nil
}

// health reports why the target looks gone, or nil: a child process that
// exited, NATS not connected, Redis not answering.
func (t *target) health(ctx context.Context) error {
	for _, c := range append([]*child{t.stack, t.baseline}, t.more...) {
		if c == nil {
			continue
		}
		select {
		case <-c.exited:
			if err := c.exitErr(); err != nil {
				return fmt.Errorf("the %s process (pid %d) exited: %w", c.role, c.pid(), err)
			}
			return fmt.Errorf("the %s process (pid %d) exited", c.role, c.pid())
		default:
		}
	}
	if !t.ctl.IsConnected() {
		return fmt.Errorf("NATS at %s is not connected (%v)", t.natsURL, t.ctl.Status())
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := t.rdb.Ping(pctx).Err(); err != nil {
		return fmt.Errorf("Redis at %s does not answer: %w", redact(t.redisURL), err)
	}
	return nil
}

// tearDown removes what the run created (unless -keep) and stops the
// children, each step bounded.
func (t *target) tearDown(o Options, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if t.baseline != nil {
		t.baseline.stop(10 * time.Second)
	}
	for _, c := range t.more {
		c.stop(15 * time.Second)
	}
	if t.stack != nil {
		t.stack.stop(15 * time.Second)
	}
	for _, c := range t.caps {
		if err := c.remove(); err != nil {
			log.Warn("stack CPU cap left behind", "err", err)
		}
	}
	if !o.Keep && t.js != nil {
		streams := []string{t.rawStream, t.pubStream}
		if t.kind == targetInProcess && t.stack != nil && o.NATSURL != "" {
			streams = append(streams, t.cfg.Streams.Usage, t.cfg.Streams.Dead, t.cfg.Streams.Notify)
		}
		for _, s := range streams {
			if s != "" && t.ctl.IsConnected() {
				dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				err := t.js.DeleteStream(dctx, s)
				cancel()
				if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
					log.Warn("could not delete a stream of this run", "stream", s, "err", err)
				}
			}
		}
	}
	if !o.Keep && t.rdb != nil {
		prefix := t.cfg.Redis.KeyPrefix + "lt" + t.runID + ":" // the baselines' keys
		patterns := []string{prefix + "*", t.keys.Prefix() + "{" + t.uidPrefix() + "*"}
		if t.kind == targetInProcess && o.RedisURL != "" {
			// The whole prefix is this run's, and so are the notifier's
			// queues.
			patterns = []string{t.cfg.Redis.KeyPrefix + "*", asynqPattern(t.cfg.Redis.KeyPrefix)}
		}
		if t.kind == targetExternal || o.RedisURL != "" {
			if t.kind == targetInProcess {
				// asynq lists every queue it has seen in one set.
				tag := runTag(t.cfg.Redis.KeyPrefix)
				t.rdb.SRem(ctx, "asynq:queues", tag+"-critical", tag+"-default", tag+"-low")
			}
			n, err := deleteKeys(ctx, t.rdb, patterns)
			if err != nil {
				log.Warn("could not delete every key of this run", "deleted", n, "err", err)
			} else {
				log.Info("deleted this run's keys", "keys", n)
			}
		}
	}
	for _, nc := range t.conns {
		nc.Close()
	}
	if t.ctl != nil {
		t.ctl.Close()
	}
	if t.rdb != nil {
		_ = t.rdb.Close()
	}
}

// deleteKeys removes the keys matching patterns, on every master of a
// Cluster.
func deleteKeys(ctx context.Context, rdb redis.UniversalClient, patterns []string) (int, error) {
	var n atomic.Int64 // ForEachMaster runs del on the masters at once
	del := func(ctx context.Context, c *redis.Client) error {
		for _, p := range patterns {
			iter := c.Scan(ctx, 0, p, 1000).Iterator()
			var batch []string
			for iter.Next(ctx) {
				batch = append(batch, iter.Val())
				if len(batch) == 500 {
					n.Add(int64(len(batch)))
					if err := unlinkEach(ctx, c, batch); err != nil {
						return err
					}
					batch = batch[:0]
				}
			}
			if err := iter.Err(); err != nil {
				return err
			}
			n.Add(int64(len(batch)))
			if err := unlinkEach(ctx, c, batch); err != nil {
				return err
			}
		}
		return nil
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err := cc.ForEachMaster(ctx, del)
		return int(n.Load()), err
	}
	if c, ok := rdb.(*redis.Client); ok {
		err := del(ctx, c)
		return int(n.Load()), err
	}
	return 0, fmt.Errorf("cannot scan a %T", rdb)
}

// unlinkEach deletes keys one command each, pipelined, so keys of
// different slots never meet in one command.
func unlinkEach(ctx context.Context, c *redis.Client, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	pipe := c.Pipeline()
	for _, k := range keys {
		pipe.Del(ctx, k)
	}
	_, err := pipe.Exec(ctx)
	return err
}

func orText(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// redact masks a password in a URL.
func redact(u string) string {
	if u == "" {
		return ""
	}
	return service.URL(u).String()
}

// baselinePrefix is where the baseline process writes its keys.
func (t *target) baselinePrefix() string { return t.cfg.Redis.KeyPrefix + "lt" + t.runID + ":" }

// capStack caps stack process number i at -stack-cpu cores, if set.
func (t *target) capStack(o Options, c *child, i int, log *slog.Logger) error {
	if o.StackCPU == 0 {
		return nil
	}
	cc, err := capCPU(cgroupRoot, c.pid(), o.StackCPU, fmt.Sprintf("allot-loadtest-%s-%d", t.runID, i))
	if err != nil {
		return fmt.Errorf("-stack-cpu: capping stack process %d: %w", i, err)
	}
	t.caps = append(t.caps, cc)
	log.Info("stack process capped", "pid", c.pid(), "cores", o.StackCPU, "cgroup", cc.dir)
	return nil
}
