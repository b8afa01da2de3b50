package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go/jetstream"
)

func streamsCommand() command {
	return command{
		name:    "streams",
		summary: "create or update the USAGE, USAGE_DEAD and NOTIFY streams and show their state",
		usage: `Usage: allot streams [-check]

Creates the usage, dead-letter and notice streams, or updates them to the
configuration (retention, size cap and discard policy, duplicate window,
replicas, the usage stream's partitions), then prints how many events
each holds, and the services' consumers with their max_deliver (the
meter's, one per partition). 'allot dev' and the services do this at
start; run it by hand against a NATS you manage. With -check nothing is
changed, and the command exits 1 when a stream is missing or differs from
the configuration, or a consumer's max_deliver differs from its section's.

Examples:
  allot streams
  NATS_URL=nats://nats.example:4222 allot streams -config allot.yaml -check`,
		run: runStreams,
	}
}

func runStreams(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var cf clientFlags
	cf.register(fs, env)
	check := fs.Bool("check", false, "only show the streams; create or change nothing")
	if err := parse(fs, args, false); err != nil {
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
	if !*check {
		if err := events.EnsureStreams(ctx, js, cfg.Subjects, cfg.Streams); err != nil {
			return fmt.Errorf("%w; this is NATS %s", err, cf.target)
		}
	}
	var bad []string
	for _, want := range []jetstream.StreamConfig{
		cfg.Streams.UsageStreamConfig(cfg.Subjects),
		cfg.Streams.DeadStreamConfig(cfg.Subjects),
		cfg.Streams.NotifyStreamConfig(cfg.Subjects),
	} {
		st, err := js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			fmt.Fprintf(env.stdout, "%-12s missing\n", want.Name)
			bad = append(bad, want.Name+" is missing")
			continue
		}
		if err != nil {
			return fmt.Errorf("stream %s: %w", want.Name, err)
		}
		info := st.CachedInfo()
		fmt.Fprintf(env.stdout, "%-12s %v  %d %s, %d bytes, seq %d..%d, max age %s, duplicate window %s, %d %s\n",
			want.Name, info.Config.Subjects, info.State.Msgs, plural(int(info.State.Msgs), "event", "events"), info.State.Bytes,
			info.State.FirstSeq, info.State.LastSeq, info.Config.MaxAge, info.Config.Duplicates,
			info.Config.Replicas, plural(info.Config.Replicas, "replica", "replicas"))
		if t := info.Config.SubjectTransform; t != nil {
			fmt.Fprintf(env.stdout, "%-12s stored as %s (streams.partitions)\n", "", t.Destination)
		}
		if diffs := streamDiffs(want, info.Config); len(diffs) > 0 {
			fmt.Fprintf(env.stdout, "%-12s differs from the configuration: %s\n", "", strings.Join(diffs, "; "))
			bad = append(bad, want.Name+" differs from the configuration")
		}
	}
	consumersBad, err := checkConsumers(ctx, env, cf.config, cfg, js)
	if err != nil {
		return err
	}
	if *check {
		bad = append(bad, consumersBad...)
	}
	if len(bad) > 0 {
		fix := "run 'allot streams' to create or update them"
		if *check && len(bad) == len(consumersBad) {
			fix = "restart the services named, which update their consumers at start"
		}
		if !*check {
			fix = "'allot streams' could not fix it"
		}
		return fmt.Errorf("%s on NATS %s: %s", strings.Join(bad, ", "), cf.target, fix)
	}
	return nil
}

// streamDiffs lists how the configuration of a stream (got) differs from the one
// allot wants: the settings EnsureStreams sets.
func streamDiffs(want, got jetstream.StreamConfig) []string {
	var diffs []string
	differ := func(what string, w, g any) {
		if fmt.Sprint(w) != fmt.Sprint(g) {
			diffs = append(diffs, fmt.Sprintf("%s is %v, want %v", what, g, w))
		}
	}
	ws, gs := slices.Clone(want.Subjects), slices.Clone(got.Subjects)
	slices.Sort(ws)
	slices.Sort(gs)
	differ("subjects", ws, gs)
	differ("retention", want.Retention, got.Retention)
	differ("discard", want.Discard, got.Discard)
	differ("max age", want.MaxAge, got.MaxAge)
	differ("max bytes", want.MaxBytes, got.MaxBytes)
	differ("duplicate window", want.Duplicates, got.Duplicates)
	differ("replicas", want.Replicas, got.Replicas)
	differ("storage", want.Storage, got.Storage)
	differ("subject mapping (streams.partitions)", events.TransformOf(want.SubjectTransform), events.TransformOf(got.SubjectTransform))
	return diffs
}

func tailCommand() command {
	return command{
		name:    "tail",
		summary: "print the last events of the usage stream, or dead letters with their reason",
		usage: `Usage: allot tail [-n 10] [-dead]

Prints the newest events stored in the USAGE stream, oldest first, one JSON
event per line after its sequence number and subject. With -dead it prints
the dead letters and the reason each was refused (header Allot-Error).

Examples:
  allot tail -n 3
  allot tail -dead`,
		run: runTail,
	}
}

func runTail(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var cf clientFlags
	cf.register(fs, env)
	n := fs.Int("n", 10, "how many events to print (1 to 10000)")
	dead := fs.Bool("dead", false, "print the dead-letter stream instead")
	if err := parse(fs, args, false); err != nil {
		return err
	}
	if *n < 1 || *n > 10000 {
		return usagef("-n must be between 1 and 10000")
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
	name := cfg.Streams.Usage
	if *dead {
		name = cfg.Streams.Dead
	}
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	st, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("stream %s does not exist on NATS %s: run 'allot streams' to create it, or %s", name, cf.target, natsAdvice)
	}
	if err != nil {
		return fmt.Errorf("stream %s: %w", name, err)
	}
	state := st.CachedInfo().State
	if state.Msgs == 0 {
		fmt.Fprintf(env.stdout, "%s is empty\n", name)
		return nil
	}
	from := state.FirstSeq
	if state.LastSeq >= uint64(*n) && state.LastSeq-uint64(*n)+1 > from {
		from = state.LastSeq - uint64(*n) + 1
	}
	for seq := from; seq <= state.LastSeq; seq++ {
		msg, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted or aged out between the info and the read
		}
		if err != nil {
			return fmt.Errorf("reading %s seq %d: %w", name, seq, err)
		}
		line := fmt.Sprintf("%d %s %s %s", msg.Sequence, msg.Time.UTC().Format(time.RFC3339), msg.Subject, msg.Data)
		if reason := msg.Header.Get(events.ErrorHeader); reason != "" {
			line += "  # " + reason
		}
		fmt.Fprintln(env.stdout, line)
	}
	return nil
}
