// Command registry runs allot's service registry: it answers
// registry.register and registry.find[.<name>], publishes
// registry.changed.<name>, and reaps expired instances.
// Run "registry -h" for its flags; allot.yaml configures it, and it needs
// registry.keys (or ALLOT_REGISTRY_KEYS).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/registry"
)

// main turns SIGINT and SIGTERM into the end of run's context and exits 1
// when run fails.
func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "registry:", err)
		os.Exit(1)
	}
}

// run is the whole command, so a test can drive it: flags, config and the
// service's life, all in service.Run.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return service.Run(ctx, "registry", args, getenv, stdout, stderr, registry.Run, registry.Section())
}
