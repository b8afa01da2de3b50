package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/allot/allot/pkg/events"
)

func ratelimitCommand() command {
	return command{
		name:    "ratelimit",
		summary: "manage the rate limiter: 'allot ratelimit reset' clears a user's window",
		usage: `Usage: allot ratelimit <subcommand> [flags]

Manages the rate limiter's state. To ask whether a call may go ahead, use
'allot check'.

Subcommands:
  reset          clear a user's window for a service, so the full limit is available again
  import-envoy   check envoyproxy/ratelimit config files for the Envoy RLS front

Run 'allot ratelimit <subcommand> -h' for its flags.

Examples:
  allot ratelimit reset -uid u-42 -service upload`,
		run: runRatelimit,
	}
}

// subcommand is one "allot ratelimit <name>".
type subcommand struct {
	name  string
	usage string
	run   func(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error
}

func ratelimitSubcommands() []subcommand {
	return []subcommand{{
		name: "reset",
		usage: `Usage: allot ratelimit reset -uid UID [-service NAME] [-json]

Clears the user's rate-limit window for -service (ratelimit.reset.<uid>), so
their next calls see the full limit. Without -service the user's own
"ratelimit" grant is reset.

Examples:
  allot ratelimit reset -uid u-42 -service upload
  allot ratelimit reset -uid u-42`,
		run: runRatelimitReset,
	}, {name: "import-envoy", usage: importEnvoyUsage, run: runImportEnvoy}}
}

func runRatelimit(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	return runSubcommand(ctx, env, fs, args, ratelimitCommand(), ratelimitSubcommands(), "allot ratelimit reset -uid u-42")
}

// runSubcommand runs "allot <cmd> <subcommand> [flags]": the command has
// no flags of its own, so its help is the list of subcommands; example
// shows where flags go.
func runSubcommand(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string, cmd command, subs []subcommand, example string) error {
	names := make([]string, len(subs))
	for i, sc := range subs {
		names[i] = sc.name
	}
	want := strings.Join(names, ", ")
	fs.Usage = func() { fmt.Fprintln(env.stderr, strings.TrimSpace(cmd.usage)) }
	if len(args) == 0 {
		return usagef("missing subcommand (%s)", want)
	}
	switch args[0] {
	case "-h", "-help", "--help":
		fs.Usage()
		return flag.ErrHelp
	}
	if strings.HasPrefix(args[0], "-") {
		return usagef("flag %s before the subcommand: flags go after it, e.g. %s", args[0], example)
	}
	for _, sc := range subs {
		if sc.name != args[0] {
			continue
		}
		sub := flag.NewFlagSet("allot "+cmd.name+" "+sc.name, flag.ContinueOnError)
		sub.SetOutput(env.stderr)
		sub.Usage = func() {
			fmt.Fprintf(env.stderr, "%s\n\nFlags:\n", strings.TrimSpace(sc.usage))
			sub.PrintDefaults()
		}
		err := sc.run(ctx, env, sub, args[1:])
		var uerr *usageError
		if errors.As(err, &uerr) {
			return usagef("%s: %s", sc.name, uerr.msg)
		}
		return err
	}
	return usagef("unknown subcommand %q (want %s)", args[0], want)
}

func runRatelimitReset(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var ef endpointFlags
	ef.register(fs, env)
	uid := fs.String("uid", "", "the user")
	service := fs.String("service", "", "the rate-limited service (default: the user's own ratelimit grant)")
	if _, err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := requireUID(*uid); err != nil {
		return err
	}
	req := events.ResetRequest{Service: *service}
	if _, err := call(ctx, env, &ef, req, "rate limiter", func(s events.Subjects) string { return s.Reset(*uid) },
		func(ctx context.Context, c *events.Client) (struct{}, error) {
			return struct{}{}, c.Reset(ctx, *uid, *service)
		}); err != nil {
		return err
	}
	if ef.json {
		return printJSON(env.stdout, events.OKReply{OK: true})
	}
	what := "the ratelimit grant"
	if *service != "" {
		what = "service " + *service
	}
	fmt.Fprintf(env.stdout, "reset: %s has the full limit of %s again\n", *uid, what)
	return nil
}
