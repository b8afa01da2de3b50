package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/allot/allot/services/meter"
)

// pinnedGauge is how many usage partitions a meter holds.
const pinnedGauge = "allot_meter_consumer_pinned"

// settleRounds bounds the settle phases: the meters share the partitions
// out in rounds of 2 s (services/meter/partitions.go), a few of them.
const settleRounds = 10

// settlePartitions runs, with a partitioned stream and several stack
// processes, short ingest phases at a low rate until every partition is
// held and no meter holds more than its share. A partition is pinned to a
// meter only once an event comes, and the meters then hand the surplus
// on in rounds of 2 s; without this the first measured phase would see
// one meter holding all of them and the rest standing by. Its events
// count in the exactness check as any other's. It returns the held counts
// seen last, per stack process, for the report's notes.
func (h *harness) settlePartitions(ctx context.Context) (settled bool, held []int) {
	parts := h.t.cfg.Streams.Partitions
	stacks := append([]*child{h.t.stack}, h.t.more...)
	share := meter.FairShare(parts, len(stacks))
	client := &http.Client{Timeout: time.Second}
	for round := 1; round <= settleRounds && ctx.Err() == nil; round++ {
		h.addPhase(cutShort(ctx, h.ingest(ctx, ingestSpec{name: fmt.Sprintf("settle.%d", round),
			what: "events at a low rate until the meters have shared the partitions out (not measured)", rate: 1000, dur: 2 * time.Second})))
		held = held[:0]
		total, over := 0, false
		for _, c := range stacks {
			vals, err := scrapeGauges(ctx, client, c.metricsURL(), []string{pinnedGauge})
			if err != nil {
				h.log.Warn("reading a meter's partitions", "err", err)
				held = append(held, -1)
				over = true
				continue
			}
			n := int(vals[pinnedGauge])
			held = append(held, n)
			total += n
			over = over || n > share
		}
		h.log.Info("partitions held per stack process", "held", held, "partitions", parts, "share", share)
		if total == parts && !over {
			return true, held
		}
	}
	return false, held
}

// settleNote says how the partitions stood when the measured phases began.
func settleNote(settled bool, held []int, parts int) string {
	if settled {
		return fmt.Sprintf("The %d partitions were shared out among the stack processes before the measured phases (held: %v), after the settle phases' events.", parts, held)
	}
	return fmt.Sprintf("The %d partitions were not shared out among the stack processes within %d settle phases (held, last seen: %v): the measured phases began with them as they were.", parts, settleRounds, held)
}
