// Command auth runs allot's auth service: it answers nats-server's auth
// callout ($SYS.REQ.USER.AUTH) for every client connection, verifying the
// client's API key and giving it the NATS permissions of the key's role;
// it answers auth.keys.create, list, revoke, override and add, and
// disconnects a key's connections when the key changes.
// Run "auth -h" for its flags; the auth section of allot.yaml configures
// it, and it connects to NATS as the callout's bypass user (nats.user).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/auth"
)

// main turns SIGINT and SIGTERM into the end of run's context and exits 1
// when run fails.
func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "auth:", err)
		os.Exit(1)
	}
}

// run is the whole command, so a test can drive it: flags, config and the
// service's life, all in service.Run.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return service.Run(ctx, "auth", args, getenv, stdout, stderr, auth.Run, auth.Section())
}
