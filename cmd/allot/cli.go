package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats.go"
)

// cliEnv is everything a command touches outside its arguments, so tests
// can run commands in-process.
type cliEnv struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	// self is the command as the user typed it ("bin/allot", "allot"),
	// for the lines meant to be copied into a shell; "allot" when empty.
	self string
}

// selfName returns how to invoke this binary in a shell.
func (e *cliEnv) selfName() string {
	if e.self == "" {
		return "allot"
	}
	return e.self
}

// command is one "allot <name>" subcommand.
type command struct {
	name    string
	summary string
	usage   string // the help text before the flag list, with an example
	run     func(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error
}

// usageError is a mistake in the command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

func commands() []command {
	return []command{
		devCommand(),
		publishCommand(),
		streamsCommand(),
		tailCommand(),
		creditCommand(),
		authorizeCommand(),
		grantsCommand(),
		checkCommand(),
		ratelimitCommand(),
		registryCommand(),
		notifyCommand(),
		versionCommand(),
		keysCommand(),
		rebuildCommand(),
	}
}

// run runs one command line and returns the process exit code: 0 on
// success, 1 on failure, 2 on a usage mistake. Failures print one line.
func run(ctx context.Context, args []string, env *cliEnv) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		if len(args) > 1 {
			return run(ctx, []string{args[1], "-h"}, env)
		}
		printHelp(env.stdout, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range cmds {
		if c.name != args[0] {
			continue
		}
		fs := flag.NewFlagSet("allot "+c.name, flag.ContinueOnError)
		fs.SetOutput(env.stderr)
		fs.Usage = func() {
			fmt.Fprintf(env.stderr, "%s\n\nFlags:\n", strings.TrimSpace(c.usage))
			fs.PrintDefaults()
		}
		err := c.run(ctx, env, fs, args[1:])
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		}
		var uerr *usageError
		if errors.As(err, &uerr) {
			fmt.Fprintf(env.stderr, "allot %s: %v\nRun 'allot %s -h' for help.\n", c.name, err, c.name)
			return 2
		}
		// A command whose failures have exit statuses of their own.
		var coded interface{ ExitCode() int }
		if errors.As(err, &coded) {
			fmt.Fprintf(env.stderr, "allot %s: %v\n", c.name, oneLine(err))
			return coded.ExitCode()
		}
		fmt.Fprintf(env.stderr, "allot %s: %v\n", c.name, oneLine(err))
		return 1
	}
	fmt.Fprintf(env.stderr, "allot: unknown command %q\nRun 'allot help' for the commands.\n", args[0])
	return 2
}

// parse parses flags, turning flag errors into usage errors, and refuses
// stray arguments unless allowArgs.
func parse(fs *flag.FlagSet, args []string, allowArgs bool) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{msg: err.Error()}
	}
	if !allowArgs && fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

func printHelp(w io.Writer, cmds []command) {
	fmt.Fprintln(w, "allot meters usage and rate-limits calls: apps publish usage events to NATS,")
	fmt.Fprintln(w, "allot keeps the state in Redis and answers credit and rate-limit questions.")
	fmt.Fprintln(w, "\nUsage: allot <command> [flags]\n\nCommands:")
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].name < cmds[j].name })
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'allot <command> -h' for a command's flags and an example.")
}

// clientFlags are the flags of every command that talks to a running
// allot over NATS.
type clientFlags struct {
	config  string
	natsURL string
	key     string
	keyFile string
	timeout time.Duration
	// target is the NATS the command talks to, set by load.
	target natsTarget
	// keySource says where the key came from ("" for none), set by load.
	keySource string

	mu        sync.Mutex
	violation error  // the last permissions violation NATS reported
	onDenied  func() // called when one arrives (a request waiting on it gives up)
}

// denied records a permissions violation from NATS and wakes whoever
// waits on a request that will never be answered.
func (f *clientFlags) denied(err error) {
	f.mu.Lock()
	f.violation = err
	hook := f.onDenied
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
}

// deniedError is the violation NATS reported, if any.
func (f *clientFlags) deniedError() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.violation
}

func (f *clientFlags) register(fs *flag.FlagSet, env *cliEnv) {
	fs.StringVar(&f.config, "config", env.getenv("ALLOT_CONFIG"), "allot.yaml with subject and stream names (env ALLOT_CONFIG)")
	fs.StringVar(&f.natsURL, "nats", "", "NATS URL (default: env NATS_URL, the config file, or "+defaultNATSURL+")")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Second, "how long to wait for NATS and for each reply")
	fs.StringVar(&f.key, "key", "", "the API key to connect with, where NATS runs allot's auth (default: env ALLOT_KEY, or the file of -key-file)")
	fs.StringVar(&f.keyFile, "key-file", env.getenv("ALLOT_KEY_FILE"), "a file holding the API key (env ALLOT_KEY_FILE)")
}

// apiKey returns the key to connect with and where it came from: -key,
// ALLOT_KEY or the key file; "" when none is given (a NATS without auth).
func (f *clientFlags) apiKey(env *cliEnv) (key, source string, err error) {
	switch {
	case f.key != "":
		return f.key, "-key", nil
	case env.getenv("ALLOT_KEY") != "":
		return env.getenv("ALLOT_KEY"), "ALLOT_KEY", nil
	case f.keyFile != "":
		b, err := os.ReadFile(f.keyFile)
		if err != nil {
			return "", "", fmt.Errorf("the key file: %w", err)
		}
		return strings.TrimSpace(string(b)), f.keyFile, nil
	}
	return "", "", nil
}

// defaultNATSURL is where the commands look for NATS when nothing says
// otherwise.
var defaultNATSURL = service.Default().NATS.URL.String()

// natsTarget is the NATS a command talks to and where its URL came from,
// so an error that may mean "this is not the allot you think" can say
// which server was asked and why.
type natsTarget struct {
	url    string // redacted
	source string // "-nats", "NATS_URL", "nats.url in <file>"; "" for the default
}

// String is the URL and its source, e.g. "nats://127.0.0.1:4222 (from
// NATS_URL)".
func (t natsTarget) String() string {
	if t.source == "" {
		return t.url + " (the default: neither -nats nor NATS_URL is set)"
	}
	return t.url + " (from " + t.source + ")"
}

// natsAdvice is what to do when the NATS asked is not allot's.
const natsAdvice = "allot dev prints the URL to use: export NATS_URL=<it>, or pass -nats"

// resolveTarget says which NATS URL cfg ends up with, and why.
func (f *clientFlags) resolveTarget(cfg service.Config, env *cliEnv) natsTarget {
	t := natsTarget{url: cfg.NATS.URL.String()}
	switch {
	case f.natsURL != "":
		t.source = "-nats"
	case env.getenv("NATS_URL") != "":
		t.source = "NATS_URL"
	case f.config != "" && t.url != defaultNATSURL:
		t.source = "nats.url in " + f.config
	}
	return t
}

// load reads the configuration and connects to NATS.
func (f *clientFlags) load(env *cliEnv) (service.Config, *nats.Conn, error) {
	cfg, err := service.Load(f.config, env.getenv)
	if err != nil {
		return cfg, nil, err
	}
	if f.natsURL != "" {
		cfg.NATS.URL = service.URL(f.natsURL)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, nil, err
	}
	if f.timeout <= 0 {
		return cfg, nil, usagef("-timeout must be > 0")
	}
	f.target = f.resolveTarget(cfg, env)
	opts := []nats.Option{nats.Name("allot-cli"), nats.Timeout(f.timeout),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				f.denied(err)
			}
		})}
	key, keySource, err := f.apiKey(env)
	if err != nil {
		return cfg, nil, err
	}
	if key != "" {
		keyOpts, err := events.KeyOptions(key)
		if err != nil {
			return cfg, nil, fmt.Errorf("the key from %s: %w", keySource, err)
		}
		opts = append(opts, keyOpts...)
		f.keySource = keySource
	}
	nc, err := nats.Connect(cfg.NATS.URL.Reveal(), opts...)
	switch {
	case err != nil && errors.Is(err, nats.ErrAuthorization) && key == "":
		return cfg, nil, fmt.Errorf("NATS at %s wants an API key: pass -key, or set ALLOT_KEY (allot dev prints one) or -key-file", f.target)
	case err != nil && errors.Is(err, nats.ErrAuthorization):
		return cfg, nil, fmt.Errorf("NATS at %s refused the key from %s (unknown, revoked or expired; the auth service's log says which)", f.target, keySource)
	case err != nil:
		return cfg, nil, fmt.Errorf("cannot reach NATS at %s: %v; is allot dev running? %s", f.target, err, natsAdvice)
	}
	return cfg, nc, nil
}

// isTerminal reports whether w is a terminal, for progress lines.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
