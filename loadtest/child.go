package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/allot/allot/cmd/allot/devstack"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/redis/go-redis/v9"
)

// The harness runs the stack under test, and the baselines, in child
// processes of its own binary: their CPU and memory are then theirs
// alone, and the simulated apps do not share their scheduler or garbage
// collector, as real apps would not. A child is told what to do by
// childEnv (a JSON childSpec), answers one JSON line (childReady) on
// stdout once it serves, and stops when its stdin closes: the harness
// dying takes its children with it.
const childEnv = "ALLOT_LOADTEST_CHILD"

// Child roles.
const (
	roleStack    = "stack"
	roleBaseline = "baseline"
	roleService  = "service" // one allot service, as its own binary runs it (the fault suite)
)

type childSpec struct {
	Role     string `json:"role"`
	NATSURL  string `json:"nats_url,omitempty"`  // empty: embedded (stack only)
	RedisURL string `json:"redis_url,omitempty"` // empty: miniredis (stack only)
	// RedisAddrs, instead, names a Redis Cluster's nodes.
	RedisAddrs []string `json:"redis_addrs,omitempty"`
	// The run's registry key and token secret, the same in every stack
	// process, as replicas of one deployment share them (the reaper's
	// lock is named after the key).
	RegistryKey string              `json:"registry_key,omitempty"`
	TokenSecret string              `json:"token_secret,omitempty"`
	Prefix      string              `json:"key_prefix"`
	Subjects    events.Subjects     `json:"subjects"`
	Streams     events.StreamConfig `json:"streams"`
	Instance    string              `json:"instance"`
	Verbose     bool                `json:"verbose,omitempty"`
	// Baseline only.
	RawStream   string `json:"raw_stream,omitempty"`
	RawConsumer string `json:"raw_consumer,omitempty"`
	RawReply    string `json:"raw_reply,omitempty"`  // subject prefix of the raw responder: <prefix>.<uid>
	BareReply   string `json:"bare_reply,omitempty"` // subject prefix of the bare responder, which does no work
	Handlers    int    `json:"handlers,omitempty"`
	// Service only: which service, its allot.yaml and where its
	// /metrics, /healthz and /readyz listen.
	Service    string `json:"service,omitempty"`
	ConfigPath string `json:"config_path,omitempty"`
	HTTPAddr   string `json:"http_addr,omitempty"`
	LogLevel   string `json:"log_level,omitempty"` // over the config file's`
}

type childReady struct {
	Error    string   `json:"error,omitempty"`
	NATSURL  string   `json:"nats_url,omitempty"`
	RedisURL string   `json:"redis_url,omitempty"`
	HTTPURL  string   `json:"http_url,omitempty"`
	GRPCAddr string   `json:"grpc_addr,omitempty"` // the rate limiter's Envoy RLS front
	Services []string `json:"services,omitempty"`
	Notes    []string `json:"notes,omitempty"`
}

// childMain runs a child from its environment and returns its exit code.
func childMain() int {
	var spec childSpec
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "loadtest child: bad %s: %v\n", childEnv, err)
		return 2
	}
	level := slog.LevelWarn
	if spec.Verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("process", spec.Role)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Stdin closing (the harness ending, however it ends) stops us too.
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel(errors.New("the harness closed stdin"))
	}()
	if err := runChild(ctx, spec, os.Stdout, log); err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	return 0
}

func runChild(ctx context.Context, spec childSpec, stdout io.Writer, log *slog.Logger) error {
	ready := func(r childReady) error {
		b, _ := json.Marshal(r)
		_, err := fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	var stopFn func(context.Context) error
	var r childReady
	var err error
	switch spec.Role {
	case roleStack:
		stopFn, r, err = startStack(ctx, spec, log)
	case roleBaseline:
		stopFn, r, err = startBaseline(ctx, spec, log)
	case roleService:
		stopFn, r, err = startService(ctx, spec)
	default:
		err = fmt.Errorf("unknown role %q", spec.Role)
	}
	if err != nil {
		_ = ready(childReady{Error: err.Error()})
		return err
	}
	if err := ready(r); err != nil {
		_ = stopFn(context.Background())
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return stopFn(sctx)
}

// runTag is the run's tag ("lt<run id>") from its key prefix
// "allot-<tag>:".
func runTag(prefix string) string {
	return strings.TrimSuffix(strings.TrimPrefix(prefix, "allot-"), ":")
}

// asynqPattern matches every asynq key of the run's notifier queues.
func asynqPattern(prefix string) string { return "asynq:{" + runTag(prefix) + "-*" }

// stackConfig is the allot configuration the stack child runs: the
// defaults, under the run's own subjects, streams, key prefix and queues.
func stackConfig(spec childSpec) (service.Config, devstack.Sections) {
	cfg, sec := service.Default(), devstack.DefaultSections()
	cfg.Instance = spec.Instance
	cfg.Log.Level = "warn"
	cfg.Redis.KeyPrefix = spec.Prefix
	cfg.Subjects = spec.Subjects
	cfg.Streams = spec.Streams
	// asynq's keys take no prefix: the notifier's queues carry the run's
	// tag instead, so a run on a shared Redis can remove them.
	tag := runTag(spec.Prefix)
	sec.Notifier.Queues = map[string]int{tag + "-critical": 6, tag + "-default": 3, tag + "-low": 1}
	sec.Notifier.ConfirmQueue, sec.Notifier.UsageQueue, sec.Notifier.RefreshQueue = tag+"-critical", tag+"-default", tag+"-low"
	cfg.HTTP.Addr = "127.0.0.1:0"
	if spec.NATSURL != "" {
		cfg.NATS.URL = service.URL(spec.NATSURL)
	}
	if spec.RedisURL != "" {
		cfg.Redis.URL = service.URL(spec.RedisURL)
	}
	if len(spec.RedisAddrs) > 0 {
		cfg.Redis.URL, cfg.Redis.Addrs = "", spec.RedisAddrs
	}
	if spec.RegistryKey != "" {
		sec.Registry.Keys = []service.Secret{service.Secret(spec.RegistryKey)}
	}
	if spec.TokenSecret != "" {
		sec.Notifier.TokenSecrets = []service.Secret{service.Secret(spec.TokenSecret)}
	}
	return cfg, sec
}

func startStack(ctx context.Context, spec childSpec, log *slog.Logger) (func(context.Context) error, childReady, error) {
	cfg, sec := stackConfig(spec)
	if err := sec.Validate(cfg); err != nil {
		return nil, childReady{}, err
	}
	st, err := devstack.Start(ctx, devstack.Options{
		Config:        cfg,
		Sections:      &sec,
		ExternalNATS:  spec.NATSURL != "",
		ExternalRedis: spec.RedisURL != "" || len(spec.RedisAddrs) > 0,
		NATSAddr:      "127.0.0.1:0",
		HTTPAddr:      "127.0.0.1:0",
		SMTPAddr:      "127.0.0.1:0",
		GRPCAddr:      "127.0.0.1:0", // never allot dev's 8081: a run beside it must not take it
		Log:           log,
	})
	if err != nil {
		return nil, childReady{}, err
	}
	redisURL := spec.RedisURL
	if redisURL == "" && len(spec.RedisAddrs) == 0 {
		c, ok := st.Redis.(*redis.Client)
		if !ok {
			_ = st.Close(context.Background())
			return nil, childReady{}, fmt.Errorf("devstack's Redis is a %T, not a single node", st.Redis)
		}
		redisURL = "redis://" + c.Options().Addr + "/0"
	}
	return st.Close, childReady{NATSURL: st.NATSURL, RedisURL: redisURL, HTTPURL: st.HTTPURL, GRPCAddr: st.GRPCAddr, Services: st.Services, Notes: st.Notes}, nil
}

// child is a running child process.
type child struct {
	role   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	ready  childReady
	exited chan struct{}
	mu     sync.Mutex
	err    error // how it exited
}

// spawn starts a child of this binary and waits (bounded) until it serves.
func spawn(ctx context.Context, spec childSpec) (*child, error) {
	return spawnTo(ctx, spec, os.Stderr)
}

// spawnTo is spawn with the child's stderr going to stderr.
func spawnTo(ctx context.Context, spec childSpec, stderr io.Writer) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start the %s process: %w", spec.Role, err)
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the %s process: %w", spec.Role, err)
	}
	c := &child{role: spec.Role, cmd: cmd, stdin: stdin, exited: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		err := cmd.Wait()
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(c.exited)
	}()
	timer := time.NewTimer(45 * time.Second)
	defer timer.Stop()
	select {
	case line, ok := <-lines:
		if !ok {
			<-c.exited
			return nil, fmt.Errorf("the %s process exited before it was ready: %v", spec.Role, c.exitErr())
		}
		if err := json.Unmarshal([]byte(line), &c.ready); err != nil {
			c.kill()
			return nil, fmt.Errorf("the %s process said %q: %w", spec.Role, line, err)
		}
		if c.ready.Error != "" {
			c.stop(5 * time.Second)
			return nil, fmt.Errorf("the %s process could not start: %s", spec.Role, c.ready.Error)
		}
		return c, nil
	case <-timer.C:
		c.kill()
		return nil, fmt.Errorf("the %s process was not ready within 45s", spec.Role)
	case <-ctx.Done():
		c.kill()
		return nil, fmt.Errorf("start the %s process: %w", spec.Role, context.Cause(ctx))
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// metricsURL is where the child serves its Prometheus metrics.
func (c *child) metricsURL() string { return strings.TrimSuffix(c.ready.HTTPURL, "/") + "/metrics" }

func (c *child) exitErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// stop closes the child's stdin and waits up to d for it to exit, then
// kills it.
func (c *child) stop(d time.Duration) {
	_ = c.stdin.Close()
	select {
	case <-c.exited:
	case <-time.After(d):
		c.kill()
	}
}

func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}
