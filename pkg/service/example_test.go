package service_test

import (
	"context"
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

// run is the whole service: service.Run builds the plumbing and calls the
// service's start function with it. It returns errors, so tests can call
// it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return service.Run(ctx, "meter", args, getenv, stdout, stderr, func(ctx context.Context, d service.Deps) (func(context.Context) error, error) {
		// Here the service starts its consumers and endpoints with d.NATS,
		// d.Redis and d.Registry, and returns what stops them.
		return func(context.Context) error { return nil }, nil
	})
}
