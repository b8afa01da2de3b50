package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/allot/allot/pkg/events"
)

func authorizeCommand() command {
	return command{
		name:    "authorize",
		summary: "ask the meter to admit an amount of a metric, counting it when allowed",
		usage: `Usage: allot authorize -uid UID -metric NAME [-amount 1] [-id ID] [-json]

Asks the meter (meter.authorize.<uid>) to admit -amount of -metric: it
checks the grant and records the use in one step, so an allowed amount is
already counted. A request is admitted at most once per -id; repeat the
same -id to retry safely. A refusal prints what remains and when the grant
resets, and exits 1.

Examples:
  allot authorize -uid u-42 -metric email_daily_total
  allot authorize -uid u-42 -metric photo_bytes_total -amount 52428 -id upload-7f3a`,
		run: runAuthorize,
	}
}

func runAuthorize(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var ef endpointFlags
	ef.register(fs, env)
	uid := fs.String("uid", "", "the user")
	metric := fs.String("metric", "", "the grant metric, e.g. email_daily_total")
	amount := newNumberFlag("1")
	fs.Var(amount, "amount", "how much to admit: a `number` from 0 to 1e15 with at most 6 decimal places")
	id := fs.String("id", "", "the request id, the idempotency key (default: a new UUIDv7)")
	if _, err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := requireUID(*uid); err != nil {
		return err
	}
	if *metric == "" {
		return usagef("-metric is required")
	}
	n, err := amount.value("amount", events.AmountRange)
	if err != nil {
		return err
	}
	req := events.AuthorizeRequest{ID: *id, Metric: *metric, Amount: n}
	if req.ID == "" {
		newID, err := events.NewID()
		if err != nil {
			return err
		}
		req.ID = newID
	}
	reply, err := call(ctx, env, &ef, req, "meter", func(s events.Subjects) string { return s.Authorize(*uid) },
		func(ctx context.Context, c *events.Client) (events.AuthorizeReply, error) {
			return c.Authorize(ctx, *uid, req)
		})
	// A refusal is a 429 that carries the decision; a plain reply saying
	// "not allowed" is taken as one too.
	refused := errors.Is(err, events.ErrOverLimit) || (err == nil && !reply.Allowed)
	if err != nil && !refused {
		return err
	}
	if ef.json {
		if err := printJSON(env.stdout, reply); err != nil {
			return err
		}
	}
	line := fmt.Sprintf("remaining %s, %s", number(reply.Remaining), resetsAt(reply.ResetsAt))
	if refused {
		return errors.New("refused: " + line)
	}
	if !ef.json {
		fmt.Fprintln(env.stdout, "allowed: "+line)
	}
	return nil
}
