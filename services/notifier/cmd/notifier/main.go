// Command notifier runs allot's background jobs on asynq: it sends
// confirmation emails (and answers notify.verify for their tokens) and
// usage notices, and refreshes the registry periodically.
// Run "notifier -h" for its flags; allot.yaml configures it, and it needs
// notifier.token_secrets (or ALLOT_NOTIFIER_TOKEN_SECRETS) and a mail
// server (notifier.smtp).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/notifier"
)

// main turns SIGINT and SIGTERM into the end of run's context and exits 1
// when run fails.
func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "notifier:", err)
		os.Exit(1)
	}
}

// run is the whole command, so a test can drive it: flags, config and the
// service's life, all in service.Run.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return service.Run(ctx, "notifier", args, getenv, stdout, stderr, notifier.Run, notifier.Section())
}
