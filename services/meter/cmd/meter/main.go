// Command meter runs allot's meter service: it applies usage events from
// the USAGE stream to Redis and answers meter.credit, meter.authorize and
// meter.grants. Run "meter -h" for its flags; allot.yaml configures it.
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

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "meter:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return service.Run(ctx, "meter", args, getenv, stdout, stderr, meter.Run)
}
