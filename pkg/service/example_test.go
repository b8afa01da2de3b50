package service_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/allot/allot/pkg/service"
)

// This is the whole main of a service, here the meter: signals, then run.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "meter:", err)
		os.Exit(1)
	}
}

// run builds every part of the service, serves until ctx ends, and stops
// the parts in reverse order. It returns errors, so tests can call it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) (err error) {
	var flags service.Flags
	fs := flag.NewFlagSet("meter", flag.ContinueOnError)
	flags.Register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := service.Load(flags.ConfigPath, getenv)
	if err != nil {
		return err
	}
	if cfg.NATS.Name == "" {
		cfg.NATS.Name = "allot-meter"
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if flags.Validate {
		_, err := io.WriteString(stdout, cfg.Redacted())
		return err
	}

	log, err := service.NewLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	log = log.With("service", "meter", "instance", cfg.Instance)

	stack := service.NewStack(log)
	defer func() {
		// The run ctx has ended: shut down under a fresh deadline.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Shutdown.Timeout)
		defer cancel()
		err = errors.Join(err, stack.Close(ctx))
	}()

	nc, err := service.ConnectNATS(ctx, cfg.NATS, log)
	if err != nil {
		return err
	}
	stack.Push("nats", func(ctx context.Context) error {
		defer nc.Close()
		return nc.FlushWithContext(ctx) // send what is buffered first
	})

	rdb, err := service.ConnectRedis(ctx, cfg.Redis)
	if err != nil {
		return err
	}
	stack.Push("redis", func(context.Context) error { return rdb.Close() })

	reg := service.NewRegistry()
	srv := service.NewHTTPServer(cfg.HTTP.Addr, reg, log)
	srv.AddCheck("nats", service.NATSCheck(nc))
	srv.AddCheck("redis", service.RedisCheck(rdb))
	if err := srv.Start(); err != nil {
		return err
	}
	stack.Push("http", srv.Shutdown)

	// Here the service starts its consumers and endpoints with nc, rdb and
	// reg, pushing the stop of each, for example:
	//	stack.Push("usage consumer", consumer.Drain)

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
