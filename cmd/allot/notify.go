package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go/jetstream"
)

func notifyCommand() command {
	return command{
		name:    "notify",
		summary: "ask for a confirmation email, or verify the token it carried",
		usage: `Usage: allot notify <subcommand> [flags]

Talks to the notifier.

Subcommands:
  confirm   publish a confirmation request (notify.confirm.<uid>): the notifier
            mails the address a link with a signed token that expires
  verify    check a token (notify.verify): valid (and now used), expired,
            used or invalid; exits 1 unless valid

Run 'allot notify <subcommand> -h' for its flags. Under 'allot dev' the
emails land in the mail sink: see http://127.0.0.1:8080/dev/mail.

Examples:
  allot notify confirm -uid u-42 -email ada@example.com -name Ada
  allot notify verify 'AQID...'`,
		run: runNotify,
	}
}

func notifySubcommands() []subcommand {
	return []subcommand{{
		name: "confirm",
		usage: `Usage: allot notify confirm -uid UID -email ADDRESS [-name NAME] [-template NAME] [-id ID]

Publishes a confirmation request to the NOTIFY stream and waits for the
stream's ack. The notifier sends one email per -id, however often the
request is published.

Examples:
  allot notify confirm -uid u-42 -email ada@example.com
  allot notify confirm -uid u-42 -email ada@example.com -template welcome -id signup-u-42`,
		run: runNotifyConfirm,
	}, {
		name: "verify",
		usage: `Usage: allot notify verify TOKEN [-json]

Asks the notifier whether a confirmation token is good. A valid token is
used up by this call, and its address becomes the uid's confirmed address.
Exits 0 only when the token was valid.

Examples:
  allot notify verify 'AQID...'`,
		run: runNotifyVerify,
	}}
}

func runNotify(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	return runSubcommand(ctx, env, fs, args, notifyCommand(), notifySubcommands(), "allot notify confirm -uid u-42 -email ada@example.com")
}

func runNotifyConfirm(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var cf clientFlags
	cf.register(fs, env)
	uid := fs.String("uid", "", "the user whose address it is")
	email := fs.String("email", "", "the address to confirm")
	name := fs.String("name", "", "the recipient's name, to greet them")
	template := fs.String("template", "", "the email's template (default confirm)")
	id := fs.String("id", "", "the request id: one email per id (default: a new UUIDv7)")
	if _, err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := requireUID(*uid); err != nil {
		return err
	}
	req := events.ConfirmRequest{ID: *id, Email: *email, Name: *name, Template: *template}
	if req.ID == "" {
		var err error
		if req.ID, err = events.NewID(); err != nil {
			return err
		}
	}
	if err := req.Validate(); err != nil {
		return err
	}
	cfg, nc, err := cf.load(env)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	ack, err := events.RequestConfirmation(ctx, js, cfg.Subjects, *uid, req)
	if err != nil {
		return fmt.Errorf("%w (is the %s stream there, on NATS %s? 'allot streams' creates it)", err, cfg.Streams.Notify, cf.target)
	}
	dup := ""
	if ack.Duplicate {
		dup = " (a duplicate of an earlier request: one email)"
	}
	fmt.Fprintf(env.stdout, "confirmation request %s for %s <%s> queued in %s, seq %d%s\n", req.ID, *uid, req.Email, ack.Stream, ack.Sequence, dup)
	return nil
}

func runNotifyVerify(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var ef endpointFlags
	ef.register(fs, env)
	rest, err := parseFlags(fs, args, true)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usagef("give exactly one token")
	}
	req := events.VerifyRequest{Token: rest[0]}
	reply, err := call(ctx, env, &ef, req, "notifier", func(s events.Subjects) string { return s.NotifyVerify() },
		func(ctx context.Context, c *events.Client) (events.VerifyReply, error) {
			return c.Verify(ctx, req.Token)
		})
	if err != nil {
		return err
	}
	if ef.json {
		if err := printJSON(env.stdout, reply); err != nil {
			return err
		}
	} else {
		switch reply.Status {
		case events.VerifyInvalid:
			fmt.Fprintln(env.stdout, "invalid: not a token this notifier signed")
		default:
			fmt.Fprintf(env.stdout, "%s: %s <%s>, expires %s\n", reply.Status, reply.UID, reply.Email, reply.ExpiresAt.UTC().Format("2006-01-02 15:04:05Z"))
		}
	}
	if reply.Status != events.VerifyValid {
		return fmt.Errorf("the token is %s", reply.Status)
	}
	return nil
}
