// Package notifier is allot's background-job service. It runs an asynq
// server on allot's Redis and does three jobs, each exactly once:
//
//   - Confirmation emails. An app publishes a ConfirmRequest on
//     notify.confirm.<uid>; the notifier mails the address a link with a
//     signed token (internal/token) that expires after notifier.token_ttl
//     and verifies once, on notify.verify. A valid verification records
//     the address as uid's confirmed address.
//   - Usage notices. The meter publishes a UsageNotice on
//     notify.usage.<uid> when a grant crosses a threshold; the notifier
//     mails it to uid's confirmed address.
//   - Registry refresh. One replica, the holder of the pkg/mutex lock
//     "notifier-scheduler", runs asynq's Scheduler with one entry: every
//     notifier.refresh_interval a task that has the registry reap expired
//     instances and rebuild its URL map. The Scheduler lists the entry in
//     Redis, where asynq's tools (asynq cron ls, asynqmon) show it.
//
// # From NATS to a task
//
// A durable JetStream consumer on the NOTIFY stream turns each message
// into an asynq task and acks it only once the task is stored. The task's
// id is derived from the message's id ("confirm:<uid>:<id>",
// "usage:<uid>:<notice id>", or the stream sequence for a message without a
// readable id), so a redelivered or republished notice finds its task
// already there and is dropped. The consumer does not judge the content:
// the task handler does, so bad input and good input take one path.
//
// # Handling a task
//
// The handler decodes and checks the notice, renders its template, charges
// the email to uid's notifier.charge_metric grant through meter.authorize
// (idempotent on an id derived from the task's, so a retry is charged
// once), sends it over SMTP (internal/mail) and marks it sent in Redis for
// notifier.retention. A task that finds its sent mark does nothing, which
// closes the window between the SMTP server's acceptance and asynq's
// bookkeeping. Bad input (an invalid address, an unknown template or
// metric, a missing field), an exhausted grant, a template that fails to
// render and a permanent SMTP refusal (5xx) stop the task with
// asynq.SkipRetry: asynq archives it with the reason (asynq's dead
// letter) and allot_notifier_dead_total counts it. A server that is down
// or answers 4xx is retried with exponential backoff up to
// notifier.max_retry times, then archived the same way.
package notifier

import (
	"context"
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
	"github.com/allot/allot/services/notifier/internal/mail"
	"github.com/allot/allot/services/notifier/internal/templates"
	"github.com/allot/allot/services/notifier/internal/token"
	"github.com/hibiken/asynq"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// ErrNoSecret: the notifier has no secret to sign tokens with.
var ErrNoSecret = errors.New(`notifier: no token secret: set notifier.token_secrets in the config (or ALLOT_NOTIFIER_TOKEN_SECRETS), e.g. the output of "openssl rand -base64 48"; "allot dev" makes one up`)

// Deps are the connections and registries the notifier runs on.
type Deps struct {
	NATS  *nats.Conn
	Redis redis.UniversalClient
	// Registerer receives the notifier's metrics, asynq's queue metrics
	// and the scheduler lock's; nil registers none.
	Registerer prometheus.Registerer
	// Log receives what happens; nil discards it.
	Log *slog.Logger
	// Now is the clock of tokens and latencies; nil is time.Now.
	Now func() time.Time
}

// Notifier is a running notifier.
type Notifier struct {
	cfg      Config
	log      *slog.Logger
	nc       *nats.Conn
	rdb      redis.UniversalClient
	keys     keys.Keys
	client   *events.Client
	signer   *token.Signer
	sender   *mail.Sender
	tmpl     *templates.Set
	locker   *mutex.Locker
	metrics  *metrics
	now      func() time.Time
	markSent *redis.Script
	useToken *redis.Script
	replier  service.Replier

	queue     *asynq.Client
	server    *asynq.Server
	consumer  *consumer
	endpoints *service.Endpoints

	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// Start checks the configuration, the token secrets and the templates,
// then starts the asynq server, the NOTIFY consumer, the notify.verify
// endpoint and the refresh scheduler. Stop ends them.
func Start(ctx context.Context, cfg Config, deps Deps) (_ *Notifier, err error) {
	if deps.NATS == nil || deps.Redis == nil {
		return nil, errors.New("notifier: NATS and Redis are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("notifier: %w", err)
	}
	nc := cfg.Notifier
	if len(nc.TokenSecrets) == 0 {
		return nil, ErrNoSecret
	}
	secrets := make([]string, len(nc.TokenSecrets))
	for i, s := range nc.TokenSecrets {
		if strings.HasPrefix(s.Reveal(), "CHANGE-ME-") {
			return nil, fmt.Errorf("notifier: notifier.token_secrets: secret %d is the placeholder of deploy/k8s/base/secrets.yaml: put a random secret in Secret allot-notifier", i)
		}
		secrets[i] = s.Reveal()
	}
	signer, err := token.New(secrets...)
	if err != nil {
		return nil, fmt.Errorf("notifier: notifier.token_secrets: %w", err)
	}
	for field, v := range map[string]string{"host": nc.SMTP.Host, "username": nc.SMTP.Username, "password": nc.SMTP.Password.Reveal()} {
		if strings.HasPrefix(v, "CHANGE-ME") {
			return nil, fmt.Errorf("notifier: notifier.smtp.%s is the placeholder of deploy/k8s/base/secrets.yaml: put the mail relay in Secret allot-smtp", field)
		}
	}
	tmpl, err := templates.Load(nc.TemplatesDir)
	if err != nil {
		return nil, fmt.Errorf("notifier: notifier.templates_dir: %w", err)
	}
	for _, name := range []string{events.DefaultConfirmTemplate, usageTemplate} {
		if !tmpl.Has(name) {
			return nil, fmt.Errorf("notifier: template %q is missing", name)
		}
	}
	sender, err := mail.New(mailConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("notifier: notifier.smtp: %w", err)
	}
	client, err := events.NewClient(deps.NATS, events.ClientOptions{Subjects: cfg.Subjects, Timeout: cfg.NATS.RequestTimeout})
	if err != nil {
		return nil, fmt.Errorf("notifier: %w", err)
	}
	locker, err := mutex.New(deps.Redis, mutex.Options{Prefix: cfg.Redis.KeyPrefix, Registerer: deps.Registerer})
	if err != nil {
		return nil, fmt.Errorf("notifier: %w", err)
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Notifier{
		cfg:      cfg,
		log:      log.With("service", "notifier"),
		nc:       deps.NATS,
		rdb:      deps.Redis,
		keys:     keys.New(cfg.Redis.KeyPrefix),
		client:   client,
		signer:   signer,
		sender:   sender,
		tmpl:     tmpl,
		locker:   locker,
		now:      deps.Now,
		markSent: redis.NewScript(markSentScript),
		useToken: redis.NewScript(useTokenScript),
	}
	if n.now == nil {
		n.now = time.Now
	}
	if n.metrics, err = newMetrics(deps.Registerer, deps.Redis, nc.Queues); err != nil {
		return nil, fmt.Errorf("notifier: %w", err)
	}
	n.replier = n.newReplier()
	for _, s := range []*redis.Script{n.markSent, n.useToken} {
		if err := s.Load(ctx, deps.Redis).Err(); err != nil {
			return nil, fmt.Errorf("notifier: load script: %w", err)
		}
	}
	defer func() {
		if err != nil {
			n.stop(context.WithoutCancel(ctx))
		}
	}()

	n.queue = asynq.NewClientFromRedisClient(deps.Redis)
	n.server = asynq.NewServerFromRedisClient(deps.Redis, asynq.Config{
		Concurrency:       nc.Concurrency,
		Queues:            nc.Queues,
		RetryDelayFunc:    retryDelay(nc.RetryBase, nc.RetryMax),
		ErrorHandler:      asynq.ErrorHandlerFunc(n.taskFailed),
		Logger:            asynqLogger{n.log.With("component", "asynq")},
		LogLevel:          asynq.WarnLevel,
		ShutdownTimeout:   max(cfg.Shutdown.Timeout/2, time.Second),
		TaskCheckInterval: nc.Poll,
		// Retries and scheduled tasks are moved to their queue at this
		// pace: a retry's backoff is never shorter than it.
		DelayedTaskCheckInterval: min(time.Second, nc.RetryBase),
	})
	if err := n.server.Start(n.mux()); err != nil {
		return nil, fmt.Errorf("notifier: asynq server: %w", err)
	}

	if n.endpoints, err = service.StartEndpoints(deps.NATS, service.EndpointsConfig{
		Name:        "notifier",
		Description: "allot notifier: confirmation token verification",
		Group:       cfg.Subjects.NotifierGroup(),
		Instance:    cfg.Instance,
		Registerer:  deps.Registerer,
		Handlers:    nc.Handlers,
	}, []service.Endpoint{{Name: "verify", Subject: "verify", Handler: n.handleVerify}}, n.log); err != nil {
		return nil, err
	}

	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n.cancel = cancel
	if n.consumer, err = startConsumer(rctx, n); err != nil {
		return nil, err
	}
	if nc.RefreshInterval > 0 {
		n.wg.Go(func() { n.scheduleLoop(rctx) })
	}
	n.log.Info("notifier started", "queues", nc.Queues, "concurrency", nc.Concurrency,
		"smtp", fmt.Sprintf("%s:%d (%s)", nc.SMTP.Host, nc.SMTP.Port, nc.SMTP.TLS), "templates", tmpl.Names(),
		"charge_metric", nc.ChargeMetric, "token_key_id", signer.KeyID(), "refresh_interval", nc.RefreshInterval)
	return n, nil
}

// Stop stops taking notices and requests, lets running tasks finish (up
// to half of shutdown.timeout, after which asynq requeues them) and
// releases the scheduler lock, shutting down asynq's Scheduler if this
// replica ran it.
func (n *Notifier) Stop(ctx context.Context) error {
	var err error
	n.stopOnce.Do(func() {
		err = n.stop(ctx)
		n.log.Info("notifier stopped")
	})
	return err
}

func (n *Notifier) stop(ctx context.Context) error {
	if n.endpoints != nil {
		n.endpoints.Stop()
	}
	if n.cancel != nil {
		n.cancel()
	}
	var errs []error
	if n.consumer != nil {
		n.consumer.stop()
	}
	done := make(chan struct{})
	go func() {
		n.wg.Wait()
		if n.server != nil {
			n.server.Shutdown()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("notifier: tasks still running at the shutdown deadline: %w", ctx.Err()))
	}
	// n.queue shares the Redis client, which its owner closes.
	return errors.Join(errs...)
}

// Run is the service.StartFunc of the notifier's binary: it reads the notifier's
// sections of d's file (LoadConfig) and starts it with them on d.
func Run(ctx context.Context, d service.Deps) (func(context.Context) error, error) {
	return service.Loaded(LoadConfig, RunWith)(ctx, d)
}

// RunWith is the service.StartFunc that starts the notifier with cfg on
// d's connections, as "allot dev" does with its one configuration; it
// returns the notifier's Stop.
func RunWith(cfg Config) service.StartFunc {
	return service.Starting(func(ctx context.Context, d service.Deps) (*Notifier, error) {
		return Start(ctx, cfg, Deps{NATS: d.NATS, Redis: d.Redis, Registerer: d.Registry, Log: d.Log})
	})
}

// mailConfig maps the config section to the mail package's.
func mailConfig(cfg Config) mail.Config {
	s := cfg.Notifier.SMTP
	fromName := s.FromName
	if fromName == "" {
		fromName = cfg.Notifier.Product
	}
	return mail.Config{
		Host:     s.Host,
		Port:     s.Port,
		TLS:      s.TLS,
		Auth:     s.Auth,
		Username: s.Username,
		Password: s.Password.Reveal(),
		From:     s.From,
		FromName: fromName,
		HELO:     cfg.Instance,
		Timeout:  s.Timeout,
	}
}

// mux routes each task type to its handler.
func (n *Notifier) mux() *asynq.ServeMux {
	mux := asynq.NewServeMux()
	mux.HandleFunc(TypeConfirmEmail, n.HandleConfirmTask)
	mux.HandleFunc(TypeUsageEmail, n.HandleUsageTask)
	mux.HandleFunc(TypeRegistryRefresh, n.HandleRefreshTask)
	return mux
}
