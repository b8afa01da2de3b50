package main

// What the commands that call allot's request/reply endpoints (credit,
// authorize, grants, check, ratelimit, registry) share: strict flag
// parsing, connecting a typed client, and turning the client's errors
// into one line a person can act on.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/allot/allot/pkg/events"
)

// endpointFlags are the flags of every endpoint command: the connection
// flags and -json.
type endpointFlags struct {
	clientFlags
	json bool
}

func (f *endpointFlags) register(fs *flag.FlagSet, env *cliEnv) {
	f.clientFlags.register(fs, env)
	fs.BoolVar(&f.json, "json", false, "print the reply as JSON instead of text")
}

// connect loads the configuration, connects to NATS and returns a client
// using the configured subjects and -timeout per request. closeConn
// releases the connection.
func (f *endpointFlags) connect(env *cliEnv) (c *events.Client, subj events.Subjects, closeConn func(), err error) {
	cfg, nc, err := f.load(env)
	if err != nil {
		return nil, subj, nil, err
	}
	c, err = events.NewClient(nc, events.ClientOptions{Subjects: cfg.Subjects, Timeout: f.timeout})
	if err != nil {
		nc.Close()
		return nil, subj, nil, err
	}
	return c, cfg.Subjects, nc.Close, nil
}

// parseFlags parses args like parse, but a flag mistake prints only its
// one line (through run) instead of the whole usage, which -h still shows.
// Arguments may come before, between or after the flags when allowArgs;
// the arguments are returned.
func parseFlags(fs *flag.FlagSet, args []string, allowArgs bool) ([]string, error) {
	// The flag package prints the mistake and the usage itself; silence
	// both and print the usage only for -h.
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	defer func() { fs.SetOutput(out); fs.Usage = usage }()

	var rest []string
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(out)
			usage()
			return nil, err
		}
		if err != nil {
			return nil, &usageError{msg: err.Error()}
		}
		if fs.NArg() == 0 {
			break
		}
		if !allowArgs {
			return nil, usagef("unexpected argument %q", fs.Arg(0))
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
	return rest, nil
}

// endpointError is a failed call put in one line for the user; it still
// matches the original error with errors.Is, e.g. events.ErrOverLimit.
type endpointError struct {
	msg string
	err error
}

func (e *endpointError) Error() string { return e.msg }
func (e *endpointError) Unwrap() error { return e.err }

// call validates req, connects, runs do, and turns its failure into one
// line naming the service and the subject asked. What every endpoint
// command does around its one client call.
func call[R any](ctx context.Context, env *cliEnv, ef *endpointFlags, req events.Validator, service string,
	subject func(events.Subjects) string, do func(context.Context, *events.Client) (R, error)) (R, error) {
	var zero R
	if err := req.Validate(); err != nil {
		return zero, err
	}
	c, subj, closeConn, err := ef.connect(env)
	if err != nil {
		return zero, err
	}
	defer closeConn()
	// A request NATS refuses for the key is never answered: stop waiting
	// as soon as NATS says so.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ef.mu.Lock()
	ef.onDenied = cancel
	ef.mu.Unlock()
	reply, err := do(ctx, c)
	if err != nil {
		if denied := ef.deniedError(); denied != nil {
			return reply, &endpointError{fmt.Sprintf("the key from %s may not ask %s on %s: NATS refused it (%v); ask for a key whose role allows it", ef.keySource, service, subject(subj), denied), err}
		}
		return reply, callError(err, service, subject(subj), ef.target, ef.timeout)
	}
	return reply, nil
}

// callError turns an error of a call to service on subject into one line
// that says what went wrong and what to do: the status, message and field
// of a service's error reply, which service is not answering on which
// NATS (and where its URL came from), or how long was waited. Validation
// errors (refused before the wire) already name their field and pass
// through.
func callError(err error, service, subject string, target natsTarget, timeout time.Duration) error {
	var serr *events.ServiceError
	switch {
	case errors.As(err, &serr):
		msg := fmt.Sprintf("%s answered %d %s: %s", service, serr.Status, serr.Code, serr.Message)
		if serr.Field != "" {
			msg += fmt.Sprintf(" (field %s)", serr.Field)
		}
		switch serr.Code {
		case events.CodeUnavailable:
			msg += "; its backend is down, retry later"
		case events.CodeInternal:
			msg += "; this is a bug, the service's log has more"
		}
		return &endpointError{msg, err}
	case errors.Is(err, events.ErrNoResponders):
		return &endpointError{fmt.Sprintf("no %s is answering on %s at NATS %s: is allot dev running there? %s", service, subject, target, natsAdvice), err}
	case errors.Is(err, events.ErrTimeout):
		return &endpointError{fmt.Sprintf("no reply from the %s on %s at NATS %s within %s: is it overloaded? (raise -timeout to wait longer)", service, subject, target, timeout), err}
	}
	return err
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// number formats an amount without exponent or trailing zeros.
func number(v float64) string {
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// timestamp formats t in RFC 3339 UTC, or "-" for the zero time (a grant
// whose period never resets).
func timestamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// resetsAt is "resets at T", or "never resets" for the zero time.
func resetsAt(t time.Time) string {
	if t.IsZero() {
		return "never resets"
	}
	return "resets at " + timestamp(t)
}

// requireUID refuses a missing -uid as a usage mistake and a malformed
// one as a validation error naming the field, before anything is sent.
func requireUID(uid string) error {
	if uid == "" {
		return usagef("-uid is required")
	}
	return events.ValidateUID("uid", uid)
}
