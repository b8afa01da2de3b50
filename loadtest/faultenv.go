package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/meter"
	"github.com/nats-io/nats.go/jetstream"
)

// faultAckWait is the meter's and the rate limiter's ack wait in the
// fault suite (default 30s): a message a killed process held comes back
// only after it, so it bounds the time to recover from a kill -9.
const faultAckWait = 5 * time.Second

// faultEnv is one fault scenario's world, made fresh for it: a
// nats-server (the pinned binary) and a redis-server of its own on spare
// loopback ports, started by the harness so that it can kill -9 them and
// start them again (NATS on the same store, Redis empty); each allot
// service in a process of its own, reaching NATS and Redis through
// toxiproxy proxies that can delay, cut or reset its links; and an SMTP
// sink counting the notifier's mail. The harness's own connections go to
// the servers directly, so a cut link is the service's alone.
type faultEnv struct {
	dir   string
	nats  *server
	redis *server
	// cl, instead of nats and redis, is a cluster scenario's NATS cluster
	// and Redis Cluster (faultcluster.go); its services reach them
	// directly, through no proxy.
	cl    *clusterSet
	tox   *toxiproxy.ApiServer
	links map[string]*link // "<service>-nats", "<service>-redis"
	mail  *mailSink
	log   *slog.Logger

	config string // the services' allot.yaml
	runID  string

	mu       sync.Mutex
	services map[string]*child
	specs    map[string]childSpec
}

// envSpec is what a scenario asks of its world.
type envSpec struct {
	natsBin, redisBin string
	runID             string
	grant             float64 // photo_daily_total's limit, so notices are crossed mid-run
	keep              bool
	cluster           bool   // a NATS cluster and a Redis Cluster instead of single servers
	meter             string // more of the meter's section, YAML (cluster only)
	hits              bool   // the rate limiter counts hitService's hits (countsHits)
}

// startEnv starts the servers, the proxies and the mail sink, and
// writes the services' configuration. On error what was started is
// stopped.
func startEnv(ctx context.Context, s envSpec, log *slog.Logger) (e *faultEnv, err error) {
	dir, err := os.MkdirTemp("", "allot-faults-"+s.runID+"-")
	if err != nil {
		return nil, err
	}
	e = &faultEnv{dir: dir, tox: newToxiproxy(), links: map[string]*link{}, log: log, runID: s.runID,
		services: map[string]*child{}, specs: map[string]childSpec{}}
	defer func() {
		if err != nil {
			e.close(s.keep)
		}
	}()
	if s.cluster {
		e.cl = &clusterSet{log: log}
		if err := startClusters(ctx, e.cl, dir, s.natsBin, s.redisBin); err != nil {
			return e, err
		}
		if e.mail, err = startMailSink(); err != nil {
			return e, err
		}
		return e, e.writeConfig(s.grant, s.meter, s.hits)
	}
	natsPort, err := freePort()
	if err != nil {
		return e, err
	}
	e.nats, err = newServer("nats-server", s.natsBin,
		[]string{"-a", "127.0.0.1", "-p", strconv.Itoa(natsPort), "-js", "-sd", filepath.Join(dir, "jetstream"), "-n", "allot-faults-" + s.runID},
		natsPort, filepath.Join(dir, "nats.log"))
	if err != nil {
		return e, err
	}
	if err := e.nats.start(ctx); err != nil {
		return e, err
	}
	redisPort, err := freePort()
	if err != nil {
		return e, err
	}
	e.redis, err = newServer("redis-server", s.redisBin,
		[]string{"--port", strconv.Itoa(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir},
		redisPort, filepath.Join(dir, "redis.log"))
	if err != nil {
		return e, err
	}
	if err := e.redis.start(ctx); err != nil {
		return e, err
	}
	for _, svc := range faultServices {
		for _, up := range []struct{ name, addr string }{{"nats", e.natsAddr()}, {"redis", e.redisAddr()}} {
			l, err := newLink(e.tox, svc+"-"+up.name, up.addr)
			if err != nil {
				return e, err
			}
			e.links[l.name] = l
		}
	}
	if e.mail, err = startMailSink(); err != nil {
		return e, err
	}
	return e, e.writeConfig(s.grant, "", s.hits)
}

// startServices starts the processes of svcs at once and waits until
// each is ready. One that fails is started once more: eight processes
// starting at once on a fresh NATS cluster can meet a JetStream request
// that times out (seen once: "ensure stream USAGE: context deadline
// exceeded").
func (e *faultEnv) startServices(ctx context.Context, svcs []string) error {
	var wg sync.WaitGroup
	errs := make([]error, len(svcs))
	for i, svc := range svcs {
		wg.Go(func() {
			if errs[i] = e.startService(ctx, svc); errs[i] != nil && ctx.Err() == nil {
				e.log.Warn("a service did not start; starting it again", "service", svc, "err", errs[i])
				errs[i] = e.startService(ctx, svc)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (e *faultEnv) natsAddr() string { return "127.0.0.1:" + strconv.Itoa(e.nats.port) }

// natsURL is where the harness reaches NATS: the server, or every node of
// the cluster.
func (e *faultEnv) natsURL() string {
	if e.cl != nil {
		return e.cl.natsURLs()
	}
	return "nats://" + e.natsAddr()
}
func (e *faultEnv) redisAddr() string { return "127.0.0.1:" + strconv.Itoa(e.redis.port) }

// writeConfig writes the allot.yaml every service reads: the defaults,
// a photo_daily_total grant that the run's traffic crosses, a short ack
// wait, the registry's key and the notifier's secret for the run, and
// the notifier's mail to the sink, charged to sms_daily_total (which no
// scenario publishes, so the email charges do not mix with the checked
// grants), its tasks retried after 1s doubling up to 10s (default 5s up
// to 10m: a task whose charge met a killed meter would otherwise wait
// minutes). In the cluster scenarios, every stream at R3 and the
// scenario's own meter settings beside the ack wait; with hits, the rate
// limiter counts hitService from metricCounter's events (checkHits).
func (e *faultEnv) writeConfig(grant float64, meterYAML string, hits bool) error {
	var secrets [2][32]byte
	for i := range secrets {
		if _, err := rand.Read(secrets[i][:]); err != nil {
			return err
		}
	}
	host, port, err := splitHostPort(e.mail.addr)
	if err != nil {
		return err
	}
	yaml := fmt.Sprintf(`# written by the load-test harness's fault suite
log: {level: warn}
grants: {photo_daily_total: %s}
meter: {ack_wait: %s}
ratelimit: {hits: {ack_wait: %s}}
registry: {keys: [%q]}
notifier:
  ack_wait: %s
  token_secrets: [%q]
  charge_metric: sms_daily_total
  retry_base: 1s
  retry_max: 10s
  smtp: {host: %q, port: %d, tls: none, auth: none}
`, strconv.FormatFloat(grant, 'f', -1, 64), faultAckWait, faultAckWait, hex.EncodeToString(secrets[0][:]), faultAckWait, hex.EncodeToString(secrets[1][:]), host, port)
	if hits {
		yaml = strings.Replace(yaml, fmt.Sprintf("ratelimit: {hits: {ack_wait: %s}}\n", faultAckWait),
			fmt.Sprintf("ratelimit: {hits: {ack_wait: %s}, services: {%s: {metric: %s, interval: %s}}}\n", faultAckWait, hitService, metricCounter, hitInterval), 1)
	}
	if e.cl != nil {
		// Streams at R3, and the scenario's own meter settings.
		yaml += "streams: {replicas: 3}\n"
		if meterYAML != "" {
			yaml = strings.Replace(yaml, fmt.Sprintf("meter: {ack_wait: %s}\n", faultAckWait), fmt.Sprintf("meter: {ack_wait: %s, %s}\n", faultAckWait, meterYAML), 1)
		}
	}
	e.config = filepath.Join(e.dir, "allot.yaml")
	return os.WriteFile(e.config, []byte(yaml), 0o600)
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	return host, port, err
}

// startService starts svc's process (again, after a kill, with the same
// spec: the same proxies and HTTP port) and waits until it is ready.
func (e *faultEnv) startService(ctx context.Context, svc string) error {
	e.mu.Lock()
	spec, ok := e.specs[svc]
	e.mu.Unlock()
	if !ok {
		port, err := freePort()
		if err != nil {
			return err
		}
		// svc is the service's name, or "<service>.<n>" for another
		// replica of it (the cluster scenarios).
		name, _, _ := strings.Cut(svc, ".")
		spec = childSpec{Role: roleService, Service: name, ConfigPath: e.config, Instance: "faults-" + svc,
			HTTPAddr: "127.0.0.1:" + strconv.Itoa(port)}
		if e.cl != nil {
			spec.NATSURL, spec.RedisAddrs = e.cl.natsURLs(), e.cl.redisAddrs()
		} else {
			spec.NATSURL, spec.RedisURL = "nats://"+e.links[svc+"-nats"].addr(), "redis://"+e.links[svc+"-redis"].addr()+"/0"
		}
		spec.LogLevel = "info" // every email sent, notice crossed, message refused, in the service's log
	}
	logf, err := os.OpenFile(filepath.Join(e.dir, svc+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	c, err := spawnTo(ctx, spec, logf)
	if err != nil {
		_ = logf.Close()
		return fmt.Errorf("%s: %w (its log: %s)", svc, err, logf.Name())
	}
	go func() { <-c.exited; _ = logf.Close() }()
	e.mu.Lock()
	e.services[svc], e.specs[svc] = c, spec
	e.mu.Unlock()
	return nil
}

func (e *faultEnv) service(svc string) *child {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.services[svc]
}

// kill9 kills svc's process with SIGKILL and waits until it is gone.
func (e *faultEnv) kill9(svc string) {
	if c := e.service(svc); c != nil {
		c.kill()
	}
}

// stopService stops svc's process cleanly (stdin closed: the service
// shuts down as on SIGTERM).
func (e *faultEnv) stopService(svc string) {
	if c := e.service(svc); c != nil {
		c.stop(30 * time.Second)
	}
}

// close stops everything and removes the directory (unless keep).
func (e *faultEnv) close(keep bool) {
	e.mu.Lock()
	cs := make([]*child, 0, len(e.services))
	for _, c := range e.services {
		cs = append(cs, c)
	}
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { c.stop(15 * time.Second) })
	}
	wg.Wait()
	for _, l := range e.links {
		l.proxy.Stop()
	}
	if e.mail != nil {
		e.mail.close()
	}
	if e.redis != nil {
		e.redis.close()
	}
	if e.nats != nil {
		e.nats.close()
	}
	if e.cl != nil {
		e.cl.close()
	}
	if keep {
		e.log.Info("kept the scenario's directory (logs, store, config)", "dir", e.dir)
		return
	}
	_ = os.RemoveAll(e.dir)
}

// target connects the harness to the environment's servers directly
// (not through the proxies) and builds the target the publish and
// exactness machinery works on: allot's default subjects, streams and
// key prefix, on servers of the scenario's own.
func (e *faultEnv) target(ctx context.Context, log *slog.Logger) (*target, error) {
	t := &target{runID: e.runID, kind: "faults", log: log, natsURL: e.natsURL()}
	t.cfg = service.Default()
	rcfg := t.cfg.Redis
	if e.cl != nil {
		t.cfg.Streams.Replicas = 3
		rcfg.URL, rcfg.Addrs = "", e.cl.redisAddrs()
		t.redisURL = "cluster " + strings.Join(rcfg.Addrs, ",")
	} else {
		t.redisURL = "redis://" + e.redisAddr() + "/0"
		rcfg.URL = service.URL(t.redisURL)
	}
	t.meter = meter.DefaultSettings()
	t.meter.AckWait = faultAckWait
	t.keys = keys.New(t.cfg.Redis.KeyPrefix)
	var err error
	if t.ctl, err = connectNATS(ctx, t.natsURL, "allot-loadtest-faults-control"); err != nil {
		return t, err
	}
	for i := range clientConns {
		nc, err := connectNATS(ctx, t.natsURL, fmt.Sprintf("allot-loadtest-faults-apps-%d", i))
		if err != nil {
			return t, err
		}
		t.conns = append(t.conns, nc)
	}
	rcfg.PoolSize = 32
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if t.rdb, err = service.ConnectRedis(rctx, rcfg); err != nil {
		return t, fmt.Errorf("cannot reach Redis at %s: %w", t.redisURL, err)
	}
	if t.js, err = jetstream.New(t.ctl); err != nil {
		return t, err
	}
	// The streams, before any service: a service may not be running
	// (the backlog scenario publishes with the meter stopped).
	if err := events.EnsureStreams(rctx, t.js, t.cfg.Subjects, t.cfg.Streams); err != nil {
		return t, err
	}
	return t, nil
}

// closeTarget closes the harness's connections (the servers are the
// environment's).
func closeTarget(t *target) {
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
