// Command meter runs allot's meter: it applies the usage events of the
// USAGE stream to Redis, publishes notify.usage.<uid> when a grant crosses
// a threshold, answers meter.credit, meter.authorize and meter.grants, and
// exports usage to Prometheus.
// Run "meter -h" for its flags; allot.yaml configures it.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/meter"
)

// main turns SIGINT and SIGTERM into the end of run's context and exits 1
// when run fails.
func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "meter:", err)
		os.Exit(1)
	}
}

// run is the whole command, so a test can drive it: flags, config and the
// service's life, all in service.Run.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return service.Run(ctx, "meter", args, getenv, stdout, stderr, meter.Run, meter.Section())
}
