package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"time"

	"github.com/allot/allot/pkg/events"
)

func checkCommand() command {
	return command{
		name:    "check",
		summary: "ask the rate limiter whether a user's call may go ahead",
		usage: `Usage: allot check -uid UID [-service NAME] [-cost 1] [-json]
       allot check -grpc ADDR -domain D -descriptor k=v[,k2=v2] [-descriptor ...] [-hits 1] [-json]

Asks the rate limiter (ratelimit.check.<uid>) whether a call of the user to
-service may go ahead, consuming -cost from the window when it may. -cost 0
peeks: it shows what is left and consumes nothing. Without -service the
user's own "ratelimit" grant applies. A denial prints when to retry and
exits 1.

With -grpc it asks the rate limiter's Envoy RLS front at ADDR instead
(ShouldRateLimit, as Envoy does): each -descriptor is one descriptor of
-domain, its entries key=value separated by commas, and -hits is the
request's hits_addend. It prints each descriptor's status and the
x-ratelimit headers, and exits 1 when the answer is OVER_LIMIT.

Examples:
  allot check -uid u-42 -service upload
  allot check -uid u-42 -service upload -cost 0
  allot check -uid u-42 -json
  allot check -grpc 127.0.0.1:8081 -domain allot -descriptor uid=u-42`,
		run: runCheck,
	}
}

func runCheck(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var ef endpointFlags
	ef.register(fs, env)
	uid := fs.String("uid", "", "the user")
	service := fs.String("service", "", "the rate-limited service (default: the user's own ratelimit grant)")
	cost := newNumberFlag("1")
	fs.Var(cost, "cost", "how much the call costs: an `integer` from 0 to 1000000; 0 peeks without consuming")
	gf := registerGRPCFlags(fs)
	if _, err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if gf.addr != "" {
		gf.timeout = ef.timeout
		return runCheckGRPC(ctx, env, gf, ef.json)
	}
	if err := requireUID(*uid); err != nil {
		return err
	}
	n, err := cost.value("cost", events.CostRange)
	if err != nil {
		return err
	}
	req := events.CheckRequest{Service: *service, Cost: events.Cost(int64(n))}
	reply, err := call(ctx, env, &ef, req, "rate limiter", func(s events.Subjects) string { return s.Check(*uid) },
		func(ctx context.Context, c *events.Client) (events.CheckReply, error) { return c.Check(ctx, *uid, req) })
	if err != nil {
		return err
	}
	if ef.json {
		if err := printJSON(env.stdout, reply); err != nil {
			return err
		}
	}
	if !reply.Allowed {
		return fmt.Errorf("denied: retry in %s", millis(reply.RetryAfterMs))
	}
	if !ef.json {
		fmt.Fprintf(env.stdout, "allowed: %d of %d left, window resets in %s\n", reply.Remaining, reply.Limit, millis(reply.ResetAfterMs))
	}
	return nil
}

// millis turns a *_ms field into a duration, clamped to what a Duration
// holds.
func millis(ms int64) time.Duration {
	const most = int64(math.MaxInt64 / time.Millisecond)
	return time.Duration(min(max(ms, -most), most)) * time.Millisecond
}
