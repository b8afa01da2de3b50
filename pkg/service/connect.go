package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

// ConnectNATS connects to the NATS servers of cfg and returns the
// connection once it is up. It fails at once, with an error naming the
// URLs (passwords masked), if no server answers: a service should not start
// half-connected. Once connected, the client reconnects forever, waiting
// cfg.ReconnectWait between attempts, and logs each disconnect (with its
// error), reconnect (with the server URL) and the final close.
//
// ctx bounds the dialing at start only; reconnects outlive it. Close the
// connection (or Drain it) on shutdown.
//
// A server older than MinNATSVersion is refused with ErrNATSVersion,
// naming both versions: allot does not run on an unsupported NATS.
func ConnectNATS(ctx context.Context, cfg NATSConfig, log *slog.Logger) (*nats.Conn, error) {
	log = orDiscard(log)
	dialer := &startDialer{Dialer: net.Dialer{Timeout: cfg.ConnectTimeout}, ctx: ctx}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.Timeout(cfg.ConnectTimeout),
		nats.SetCustomDialer(dialer),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(cfg.ReconnectWait),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "error", err)
				return
			}
			log.Info("nats disconnected")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			log.Info("nats connection closed")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Error("nats async error", "subject", sub.Subject, "error", err)
				return
			}
			log.Error("nats async error", "error", err)
		}),
	}
	switch {
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password.Reveal()))
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token.Reveal()))
	case cfg.CredsFile != "":
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	case cfg.Key != "":
		keyOpts, err := events.KeyOptions(cfg.Key.Reveal())
		if err != nil {
			return nil, fmt.Errorf("service: nats.key: %w", err)
		}
		opts = append(opts, keyOpts...)
	}

	nc, err := nats.Connect(cfg.URL.Reveal(), opts...)
	dialErr := dialer.started()
	if err != nil {
		switch {
		case ctx.Err() != nil:
			err = fmt.Errorf("%w: %w", err, context.Cause(ctx))
		case dialErr != nil && errors.Is(err, nats.ErrNoServers):
			err = fmt.Errorf("%w: %w", err, dialErr)
		}
		return nil, fmt.Errorf("service: nats: connect to %s: %w", cfg.URL, err)
	}
	if err := CheckNATSVersion(nc.ConnectedServerVersion()); err != nil {
		url := nc.ConnectedUrlRedacted()
		nc.Close()
		return nil, fmt.Errorf("%w (%s)", err, url)
	}
	log.Info("nats connected", "url", nc.ConnectedUrlRedacted(), "server_version", nc.ConnectedServerVersion())
	return nc, nil
}

// startDialer dials under the caller's ctx until the first connection is
// made and then without it, so reconnects outlive that ctx. It keeps the
// last dial error, which nats.Connect replaces with "no servers available".
type startDialer struct {
	net.Dialer

	mu      sync.Mutex
	ctx     context.Context
	lastErr error
}

// Dial implements nats.CustomDialer.
func (d *startDialer) Dial(network, address string) (net.Conn, error) {
	d.mu.Lock()
	ctx := d.ctx
	d.mu.Unlock()
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		d.mu.Lock()
		d.lastErr = err
		d.mu.Unlock()
	}
	return conn, err
}

// started ends the start: later dials no longer use the caller's ctx. It
// returns the last dial error seen so far.
func (d *startDialer) started() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ctx = context.Background()
	return d.lastErr
}

// ConnectRedis returns a go-redis universal client for cfg, once it has
// answered PING under ctx:
//
//   - url: one node, from redis:// or rediss:// (TLS) via redis.ParseURL;
//   - addrs with one address: one node;
//   - addrs with several: a Redis Cluster client;
//   - master_name: a Sentinel (failover) client, the Sentinels in addrs.
//
// The timeouts and a non-zero pool size of cfg override the URL's, and a
// non-empty cfg.Password its password. Commands honour their ctx deadline.
// On failure the client is closed and the error names the address
// (password masked). Close the client on shutdown.
func ConnectRedis(ctx context.Context, cfg RedisConfig) (redis.UniversalClient, error) {
	opts, where, err := redisOptions(cfg)
	if err != nil {
		return nil, err
	}
	rdb := redis.NewUniversalClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close() // the PING error is the one worth reporting
		return nil, fmt.Errorf("service: redis: ping %s: %w", where, err)
	}
	return rdb, nil
}

// redisOptions maps cfg onto go-redis options, and says where they point
// in words fit for an error message.
func redisOptions(cfg RedisConfig) (opts *redis.UniversalOptions, where string, err error) {
	switch {
	case cfg.URL != "":
		o, err := redis.ParseURL(cfg.URL.Reveal())
		if err != nil {
			return nil, "", fmt.Errorf("service: redis: url %s: %s", cfg.URL, strings.TrimPrefix(urlError(err), "redis: "))
		}
		opts = fromSingle(o)
		where = cfg.URL.String()
	case cfg.MasterName != "":
		opts = &redis.UniversalOptions{Addrs: cfg.Addrs, MasterName: cfg.MasterName, DB: cfg.DB}
		where = fmt.Sprintf("master %q via sentinels %s", cfg.MasterName, strings.Join(cfg.Addrs, ","))
	case len(cfg.Addrs) > 1:
		opts = &redis.UniversalOptions{Addrs: cfg.Addrs}
		where = "cluster " + strings.Join(cfg.Addrs, ",")
	case len(cfg.Addrs) == 1:
		opts = &redis.UniversalOptions{Addrs: cfg.Addrs, DB: cfg.DB}
		where = cfg.Addrs[0]
	default:
		return nil, "", errors.New("service: redis: neither url nor addrs is set")
	}
	if cfg.Password != "" {
		opts.Password = cfg.Password.Reveal()
	}
	opts.DialTimeout = cfg.DialTimeout
	opts.ReadTimeout = cfg.ReadTimeout
	opts.WriteTimeout = cfg.WriteTimeout
	if cfg.PoolSize > 0 {
		opts.PoolSize = cfg.PoolSize
	}
	opts.ContextTimeoutEnabled = true
	return opts, where, nil
}

// fromSingle carries what redis.ParseURL read from a URL over to the
// universal options.
func fromSingle(o *redis.Options) *redis.UniversalOptions {
	return &redis.UniversalOptions{
		Addrs:                   []string{o.Addr},
		ClientName:              o.ClientName,
		DB:                      o.DB,
		Protocol:                o.Protocol,
		Username:                o.Username,
		Password:                o.Password,
		MaxRetries:              o.MaxRetries,
		MinRetryBackoff:         o.MinRetryBackoff,
		MaxRetryBackoff:         o.MaxRetryBackoff,
		DialTimeout:             o.DialTimeout,
		ReadTimeout:             o.ReadTimeout,
		WriteTimeout:            o.WriteTimeout,
		PoolFIFO:                o.PoolFIFO,
		PoolSize:                o.PoolSize,
		MaxConcurrentDials:      o.MaxConcurrentDials,
		PoolTimeout:             o.PoolTimeout,
		MinIdleConns:            o.MinIdleConns,
		MaxIdleConns:            o.MaxIdleConns,
		MaxActiveConns:          o.MaxActiveConns,
		ConnMaxIdleTime:         o.ConnMaxIdleTime,
		ConnMaxLifetime:         o.ConnMaxLifetime,
		ConnMaxLifetimeJitter:   o.ConnMaxLifetimeJitter,
		PipelinePoolSize:        o.PipelinePoolSize,
		PipelineReadBufferSize:  o.PipelineReadBufferSize,
		PipelineWriteBufferSize: o.PipelineWriteBufferSize,
		TLSConfig:               o.TLSConfig,
	}
}
