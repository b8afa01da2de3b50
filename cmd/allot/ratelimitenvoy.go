package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/allot/allot/services/ratelimit"
)

const importEnvoyUsage = `Usage: allot ratelimit import-envoy FILE...

Checks envoyproxy/ratelimit config files (one domain each) as the rate
limiter's Envoy RLS front would load them, and explains: every error (what
allot does not support: month and year units, quota_mode, share_threshold,
unknown fields) and every note (what loads but behaves differently:
value_to_metric and metadata are ignored, detailed_metric labels metrics
with the configured path, allot_deny_unmatched: true denies descriptors
that match no limit). A file with no error loads unchanged: list it
under ratelimit.grpc.files. A descriptor that matches no limit is then
OK, as in envoyproxy/ratelimit, unless ratelimit.grpc.deny_unmatched is
on (the file's allot-only allot_deny_unmatched overrides it): then it is
OVER_LIMIT. Exits 1 when some file has an error.

Examples:
  allot ratelimit import-envoy /etc/ratelimit/config/edge.yaml`

// runImportEnvoy checks each file and prints what it finds.
func runImportEnvoy(_ context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	files, err := parseFlags(fs, args, true)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return usagef("import-envoy needs at least one FILE")
	}
	failed := 0
	for _, f := range files {
		d, err := ratelimit.LoadEnvoyFile(f)
		if err != nil {
			fmt.Fprintf(env.stdout, "%s: error: %v\n", f, err)
			failed++
			continue
		}
		notes := ratelimit.CheckEnvoy(d)
		bad := false
		for _, n := range notes {
			fmt.Fprintf(env.stdout, "%s: %s\n", f, n)
			bad = bad || n.Error
		}
		switch {
		case bad:
			failed++
			fmt.Fprintf(env.stdout, "%s: domain %q does not load\n", f, d.Domain)
		case len(notes) > 0:
			fmt.Fprintf(env.stdout, "%s: domain %q loads, with the differences above\n", f, d.Domain)
		default:
			fmt.Fprintf(env.stdout, "%s: domain %q loads unchanged\n", f, d.Domain)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d %s", failed, plural(failed, "file does not load", "files do not load"))
	}
	return nil
}
