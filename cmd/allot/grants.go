package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/allot/allot/pkg/events"
)

func grantsCommand() command {
	return command{
		name:    "grants",
		summary: "show, set or unset a user's grants (limits per metric)",
		usage: `Usage: allot grants -uid UID [-set metric=N]... [-unset metric]... [-json]

Shows the user's effective grants: the configured defaults with the user's
own overrides applied. -set gives the user their own limit for a metric;
-unset drops the override, so the default applies again. The grants after
the change are printed, sorted by metric (meter.grants.<uid>). Only
declared grants can be set: the configured ones and ratelimit_<service>
for each rate-limited service; the meter refuses any other name, lists
the declared ones and changes nothing.

Examples:
  allot grants -uid u-42
  allot grants -uid u-42 -set photo_daily_total=500 -set albums=20
  allot grants -uid u-42 -set ratelimit_upload=50
  allot grants -uid u-42 -unset photo_daily_total`,
		run: runGrants,
	}
}

// setFlags collects repeated -set metric=N flags.
type setFlags map[string]numberFlag

func (s setFlags) String() string { return fmt.Sprint(map[string]numberFlag(s)) }

func (s setFlags) Set(v string) error {
	name, num, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("want metric=number, got %q", v)
	}
	var n numberFlag
	if err := n.Set(num); err != nil {
		return fmt.Errorf("%q is not a number (in %q)", num, v)
	}
	if _, dup := s[name]; dup {
		return fmt.Errorf("%s is set twice", name)
	}
	s[name] = n
	return nil
}

// values checks every limit by the number rule, as the endpoint would.
func (s setFlags) values() (map[string]float64, error) {
	out := make(map[string]float64, len(s))
	for _, name := range sortedNames(s) {
		n := s[name]
		v, err := n.value("set."+name, events.AmountRange)
		if err != nil {
			return nil, err
		}
		out[name] = v
	}
	return out, nil
}

func sortedNames(s setFlags) []string {
	names := make([]string, 0, len(s))
	for name := range s {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// listFlags collects a repeated string flag.
type listFlags []string

func (l *listFlags) String() string { return strings.Join(*l, ",") }

func (l *listFlags) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func runGrants(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var ef endpointFlags
	ef.register(fs, env)
	uid := fs.String("uid", "", "the user")
	set := setFlags{}
	fs.Var(set, "set", "give the user the limit N for a metric, as metric=N (repeatable)")
	var unset listFlags
	fs.Var(&unset, "unset", "drop the user's override of a metric (repeatable)")
	if _, err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := requireUID(*uid); err != nil {
		return err
	}
	var req events.GrantsRequest
	if len(set) > 0 {
		values, err := set.values()
		if err != nil {
			return err
		}
		req.Set = values
	}
	req.Unset = unset
	reply, err := call(ctx, env, &ef, req, "meter", func(s events.Subjects) string { return s.Grants(*uid) },
		func(ctx context.Context, c *events.Client) (events.GrantsReply, error) {
			return c.Grants(ctx, *uid, req)
		})
	if err != nil {
		return err
	}
	if ef.json {
		return printJSON(env.stdout, reply)
	}
	if len(reply.Grants) == 0 {
		fmt.Fprintf(env.stdout, "%s has no grants\n", *uid)
		return nil
	}
	names := make([]string, 0, len(reply.Grants))
	for name := range reply.Grants {
		names = append(names, name)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tLIMIT")
	for _, name := range names {
		fmt.Fprintf(tw, "%s\t%s\n", name, number(reply.Grants[name]))
	}
	return tw.Flush()
}
