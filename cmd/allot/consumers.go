package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/allot/allot/cmd/allot/devstack"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/meter"
	"github.com/nats-io/nats.go/jetstream"
)

// wantConsumer is a durable consumer a service creates, and the
// max_deliver its section sets.
type wantConsumer struct {
	owner, stream, name string
	maxDeliver          int
}

// checkConsumers prints the services' consumers and returns how each that
// exists differs from its section (max_deliver). A consumer not there yet
// is no drift: its service creates it at start (the rate limiter's only
// when a service counts hits), as it updates one that differs.
func checkConsumers(ctx context.Context, env *cliEnv, path string, cfg service.Config, js jetstream.JetStream) ([]string, error) {
	s := devstack.DefaultSections()
	if err := service.LoadSections(&s, path, env.getenv); err != nil {
		return nil, err
	}
	var bad []string
	var wants []wantConsumer
	for _, name := range meter.ConsumerNames(s.Meter.Consumer, cfg.Streams.Partitions) {
		wants = append(wants, wantConsumer{"meter", cfg.Streams.Usage, name, s.Meter.MaxDeliver})
	}
	wants = append(wants,
		wantConsumer{"ratelimit.hits", cfg.Streams.Usage, s.RateLimit.Consumer, s.RateLimit.Hits.MaxDeliver},
		wantConsumer{"notifier", cfg.Streams.Notify, s.Notifier.Durable, s.Notifier.MaxDeliver})
	for _, want := range wants {
		label := want.stream + "/" + want.name
		cons, err := js.Consumer(ctx, want.stream, want.name)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
			fmt.Fprintf(env.stdout, "%-20s not created yet (the %s creates it at start)\n", label, want.owner)
			continue
		case err != nil:
			return nil, fmt.Errorf("consumer %s: %w", label, err)
		}
		got := cons.CachedInfo().Config.MaxDeliver
		fmt.Fprintf(env.stdout, "%-20s max_deliver %d\n", label, got)
		if got != want.maxDeliver {
			fmt.Fprintf(env.stdout, "%-20s differs from the configuration: max_deliver is %d, want %d (%s.max_deliver)\n", "", got, want.maxDeliver, want.owner)
			bad = append(bad, "consumer "+label+" differs from the configuration")
		}
	}
	return bad, nil
}
