package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"

	"github.com/allot/allot/pkg/events"
)

func creditCommand() command {
	return command{
		name:    "credit",
		summary: "show a user's credit: used, limit and remaining of one grant or all",
		usage: `Usage: allot credit -uid UID [-metric NAME] [-json]

Asks the meter (meter.credit.<uid>) how much of each grant the user has
used, the limit, what remains, any overage, the grant's period and when it
resets. Without -metric every grant of the user is shown.

Examples:
  allot credit -uid u-42
  allot credit -uid u-42 -metric photo_daily_total
  allot credit -uid u-42 -json | jq '.credits[].remaining'`,
		run: runCredit,
	}
}

func runCredit(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var ef endpointFlags
	ef.register(fs, env)
	uid := fs.String("uid", "", "the user")
	metric := fs.String("metric", "", "one grant metric, e.g. photo_daily_total (default: every grant)")
	if _, err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := requireUID(*uid); err != nil {
		return err
	}
	var credits []events.Credit
	reply, err := call(ctx, env, &ef, events.CreditRequest{Metric: *metric}, "meter", func(s events.Subjects) string { return s.Credit(*uid) },
		func(ctx context.Context, c *events.Client) (any, error) {
			if *metric != "" {
				one, err := c.Credit(ctx, *uid, *metric)
				credits = []events.Credit{one}
				return one, err
			}
			all, err := c.Credits(ctx, *uid)
			credits = all.Credits
			return all, err
		})
	if err != nil {
		return err
	}
	if ef.json {
		return printJSON(env.stdout, reply)
	}
	if len(credits) == 0 {
		fmt.Fprintf(env.stdout, "%s has no grants\n", *uid)
		return nil
	}
	return printCredits(env.stdout, credits)
}

// printCredits writes credits as a table sorted by metric.
func printCredits(w io.Writer, credits []events.Credit) error {
	sort.Slice(credits, func(i, j int) bool { return credits[i].Metric < credits[j].Metric })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tUSED\tLIMIT\tREMAINING\tOVERAGE\tPERIOD\tRESETS_AT")
	for _, cr := range credits {
		period := cr.Period
		if period == "" {
			period = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cr.Metric, number(cr.Used), number(cr.Limit),
			number(cr.Remaining), number(cr.Overage), period, timestamp(cr.ResetsAt))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Below the table: a used figure that may be low says so.
	for _, cr := range credits {
		if !cr.CountedSince.IsZero() {
			fmt.Fprintf(w, "note: %s counts usage only since %s (Redis lost the state; the stream no longer held older events)\n",
				cr.Metric, timestamp(cr.CountedSince))
		}
	}
	return nil
}
