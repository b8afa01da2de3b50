// Command allot is allot's command line: it runs the whole system on a
// laptop (allot dev), publishes usage events, and talks to the running
// services. Run "allot help" for the commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &cliEnv{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, self: selfFromArgs0(os.Args[0])})
	stop()
	os.Exit(code)
}

// selfFromArgs0 is how the user invoked allot, for the commands it
// suggests: "bin/allot" from make run, "allot" from the PATH, and "allot"
// for the temporary binary of "go run".
func selfFromArgs0(arg0 string) string {
	if arg0 == "" || strings.Contains(arg0, "go-build") {
		return "allot"
	}
	return arg0
}
