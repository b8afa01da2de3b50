// Command ratelimit runs allot's rate limiter: it answers
// ratelimit.check.<uid> and ratelimit.reset.<uid>, counts the usage events
// of a service that names a metric as its hits, and keeps its windows in
// Redis.
// Run "ratelimit -h" for its flags; allot.yaml configures it.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/ratelimit"
)

// main turns SIGINT and SIGTERM into the end of run's context and exits 1
// when run fails.
func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ratelimit:", err)
		os.Exit(1)
	}
}

// run is the whole command, so a test can drive it: flags, config and the
// service's life, all in service.Run.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return service.Run(ctx, "ratelimit", args, getenv, stdout, stderr, ratelimit.Run, ratelimit.Section())
}
