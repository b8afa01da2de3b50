package service

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"
)

// Deps is what Run builds for a service before starting it.
type Deps struct {
	Config Config
	// ConfigPath is the file Config was loaded from ("" for none), and
	// Getenv the environment it was read with, for a service that decodes
	// a section of its own (LoadSection).
	ConfigPath string
	Getenv     func(string) string
	NATS       *nats.Conn
	Redis      redis.UniversalClient
	Registry   *prometheus.Registry
	HTTP       *HTTPServer
	Log        *slog.Logger
}

// OwnedSection is a section of the configuration a service decodes
// itself (LoadSection, LoadSections): Load reads it from the file at path
// and the environment, checks it (against rt, the runtime's configuration,
// where a rule needs it, such as the streams' duplicate window) and
// returns it as YAML to print, secrets masked.
type OwnedSection struct {
	Load func(rt Config, path string, getenv func(string) string) (redacted string, err error)
}

// StartFunc starts a service's own parts (consumers, endpoints) on d and
// returns the function that stops them.
type StartFunc func(ctx context.Context, d Deps) (stop func(context.Context) error, err error)

// SectionOf is the OwnedSection of a service whose load reads its
// configuration beside the runtime's and checks it: -validate prints what
// load returns, as YAML (a field tagged yaml:"-", such as the runtime's
// Config it embeds, is left out; secrets print masked).
func SectionOf[C any](load func(rt Config, path string, getenv func(string) string) (C, error)) OwnedSection {
	return OwnedSection{Load: func(rt Config, path string, getenv func(string) string) (string, error) {
		cfg, err := load(rt, path, getenv)
		if err != nil {
			return "", err
		}
		b, err := yaml.Marshal(cfg)
		if err != nil {
			return "", fmt.Errorf("service: cannot print the config: %w", err)
		}
		return string(b), nil
	}}
}

// Starting is the StartFunc that starts a service with start on d and
// returns its Stop.
func Starting[S interface{ Stop(context.Context) error }](start func(ctx context.Context, d Deps) (S, error)) StartFunc {
	return func(ctx context.Context, d Deps) (func(context.Context) error, error) {
		s, err := start(ctx, d)
		if err != nil {
			return nil, err
		}
		return s.Stop, nil
	}
}

// Loaded is the StartFunc of a service's binary: it reads the service's
// configuration with load, beside d.Config from d.ConfigPath and
// d.Getenv, and starts the service with it through start.
func Loaded[C any](load func(rt Config, path string, getenv func(string) string) (C, error), start func(C) StartFunc) StartFunc {
	return func(ctx context.Context, d Deps) (func(context.Context) error, error) {
		cfg, err := load(d.Config, d.ConfigPath, d.Getenv)
		if err != nil {
			return nil, err
		}
		return start(cfg)(ctx, d)
	}
}

// Run is the whole life of one allot service binary: it parses -config,
// -validate and -version (which prints Build and returns), loads and validates the configuration, connects to NATS
// and Redis, serves /metrics, /healthz and /readyz, calls start, marks
// the service ready, registers it in the service registry (renewed every
// registry.heartbeat; registry.self_register turns this off) and waits for
// ctx to end. Then it stops everything in reverse order under
// cfg.Shutdown.Timeout: readiness off, the heartbeats, the service's parts,
// HTTP, Redis, NATS. name is the service's name, e.g. "meter".
func Run(ctx context.Context, name string, args []string, getenv func(string) string, stdout, stderr io.Writer, start StartFunc, owned ...OwnedSection) (err error) {
	var flags Flags
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	flags.Register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if flags.Version {
		_, err := fmt.Fprintf(stdout, "%s %s\n", name, Build())
		return err
	}
	if flags.ConfigPath == "" {
		flags.ConfigPath = getenv("ALLOT_CONFIG")
	}
	cfg, err := Load(flags.ConfigPath, getenv)
	if err != nil {
		return err
	}
	if cfg.NATS.Name == "" {
		cfg.NATS.Name = "allot-" + name
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	// The service's own sections are checked before anything starts, and
	// printed by -validate in place of the runtime's view of them.
	sections := make([]string, 0, len(owned))
	for _, o := range owned {
		text, err := o.Load(cfg, flags.ConfigPath, getenv)
		if err != nil {
			return err
		}
		sections = append(sections, text)
	}
	if flags.Validate {
		_, err := io.WriteString(stdout, cfg.Redacted(sections...))
		return err
	}

	log, err := NewLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	log = log.With("service", name, "instance", cfg.Instance)

	stack := NewStack(log)
	defer func() {
		// The run ctx has ended: shut down under a fresh deadline.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Shutdown.Timeout)
		defer cancel()
		err = errors.Join(err, stack.Close(ctx))
	}()

	nc, err := ConnectNATS(ctx, cfg.NATS, log)
	if err != nil {
		return err
	}
	stack.Push("nats", func(ctx context.Context) error {
		defer nc.Close()
		return nc.FlushWithContext(ctx) // send what is buffered first
	})

	rdb, err := ConnectRedis(ctx, cfg.Redis)
	if err != nil {
		return err
	}
	stack.Push("redis", func(context.Context) error { return rdb.Close() })

	reg := NewRegistry()
	srv := NewHTTPServer(cfg.HTTP.Addr, reg, log)
	srv.AddCheck("nats", NATSCheck(nc))
	srv.AddCheck("redis", RedisCheck(rdb))
	if err := srv.Start(); err != nil {
		return err
	}
	stack.Push("http", srv.Shutdown)

	if start != nil {
		stop, err := start(ctx, Deps{Config: cfg, ConfigPath: flags.ConfigPath, Getenv: getenv, NATS: nc, Redis: rdb, Registry: reg, HTTP: srv, Log: log})
		if err != nil {
			return err
		}
		if stop != nil {
			stack.Push(name, stop)
		}
	}

	// Register in the service registry and keep the registration alive;
	// stopped before the service's own parts.
	if cfg.Registry.SelfRegister {
		sr, err := StartSelfRegistration(nc, cfg, Registration{Name: name, ID: InstanceID(cfg.Instance), Addr: srv.Addr()}, log)
		if err != nil {
			return err
		}
		stack.Push("self-registration", sr.Stop)
	}

	stack.Push("readiness", func(context.Context) error {
		srv.SetReady(false)
		return nil
	})
	srv.SetReady(true)
	log.Info("started", "http", srv.Addr())
	<-ctx.Done()
	log.Info("shutting down", "cause", context.Cause(ctx))
	return nil
}
