package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/allot/allot/pkg/events"
)

func registryCommand() command {
	return command{
		name:    "registry",
		summary: "list the registered service instances and which URL serves each resource",
		usage: `Usage: allot registry [NAME] [-json]

Asks the registry (registry.find, or registry.find.<name> for one service)
for the live instances: each one's name, id, address, public URL and
endpoints, then the URL map, which says which URL serves each top-level
resource.

Examples:
  allot registry
  allot registry media
  allot registry -json | jq '.url_map'`,
		run: runRegistry,
	}
}

func runRegistry(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var ef endpointFlags
	ef.register(fs, env)
	rest, err := parseFlags(fs, args, true)
	if err != nil {
		return err
	}
	if len(rest) > 1 {
		return usagef("unexpected argument %q: give at most one service name", rest[1])
	}
	var name string
	if len(rest) == 1 {
		name = rest[0]
		if err := events.ValidateToken("name", name); err != nil {
			return err
		}
	}
	reply, err := call(ctx, env, &ef, events.FindRequest{}, "registry", func(s events.Subjects) string { return s.Find(name) },
		func(ctx context.Context, c *events.Client) (events.FindReply, error) { return c.Find(ctx, name) })
	if err != nil {
		return err
	}
	if ef.json {
		return printJSON(env.stdout, reply)
	}

	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	if len(reply.Instances) == 0 {
		if name == "" {
			fmt.Fprintln(tw, "no instances are registered")
		} else {
			fmt.Fprintf(tw, "no instances of %s are registered\n", name)
		}
	} else {
		inst := reply.Instances
		sort.Slice(inst, func(i, j int) bool {
			if inst[i].Name != inst[j].Name {
				return inst[i].Name < inst[j].Name
			}
			return inst[i].ID < inst[j].ID
		})
		fmt.Fprintln(tw, "NAME\tID\tADDRESS\tPUBLIC_URL\tENDPOINTS")
		for _, in := range inst {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", in.Name, in.ID, net.JoinHostPort(in.IPv4, strconv.Itoa(in.Port)),
				orDash(in.PublicURL), orDash(strings.Join(in.Endpoints, ",")))
		}
	}
	if len(reply.URLMap) > 0 {
		resources := make([]string, 0, len(reply.URLMap))
		for r := range reply.URLMap {
			resources = append(resources, r)
		}
		sort.Strings(resources)
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(env.stdout)
		tw = tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RESOURCE\tURL")
		for _, r := range resources {
			fmt.Fprintf(tw, "%s\t%s\n", r, reply.URLMap[r])
		}
	}
	return tw.Flush()
}

// orDash returns s, or "-" when it is empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
