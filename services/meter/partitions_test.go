package meter

import (
	"fmt"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/usage"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func partitionedConfig(parts int, ordered, dedupIDs bool) Config {
	cfg := testConfig()
	cfg.Streams.Partitions = parts
	cfg.Meter.Ordered, cfg.Meter.DedupIDs = ordered, dedupIDs
	cfg.Usage.Metrics["level"] = usage.MetricConfig{Style: usage.StyleGauge, Scope: usage.ScopeUser}
	return cfg
}

// publishRound publishes, for each of uids, n values of its gauge level
// in order and n api calls, and waits until the meters applied them.
func (e *env) publishRound(round, uids, n int) {
	e.t.Helper()
	apub, _ := events.NewAsyncPublisher(e.nc, events.AsyncOptions{})
	for i := range n {
		for u := range uids {
			uid := fmt.Sprint("u-", u)
			for _, x := range []events.Event{
				ev(uid, "level", float64(round*n+i), fmt.Sprintf("l%d-%d-%d", round, u, i)),
				ev(uid, "api_calls_total", 1, fmt.Sprintf("c%d-%d-%d", round, u, i)),
			} {
				if err := apub.Publish(e.t.Context(), x); err != nil {
					e.t.Fatal(err)
				}
			}
		}
	}
	if failed, err := apub.Close(e.t.Context()); err != nil || len(failed) > 0 {
		e.t.Fatal(failed, err)
	}
	e.waitIdle()
	for u := range uids {
		uid := fmt.Sprint("u-", u)
		if got, _ := e.rdb.HGet(e.t.Context(), keys.New("allot:").Values(keys.UserTag(uid), "level"), "").Result(); got != fmt.Sprint(round*n+n-1) {
			e.t.Errorf("round %d: %s's level = %q, want the last value published, %d", round, uid, got, round*n+n-1)
		}
		if got, _ := e.rdb.HGet(e.t.Context(), keys.New("allot:").Values(keys.UserTag(uid), "api_calls_total"), "").Result(); got != fmt.Sprint((round+1)*n) {
			e.t.Errorf("round %d: %s's api calls = %q, want %d", round, uid, got, (round+1)*n)
		}
	}
}

// partitionApplied is what m applied of each partition.
func partitionApplied(m *Meter) []float64 {
	out := make([]float64, len(m.metrics.partitionApplied))
	for p, c := range m.metrics.partitionApplied {
		out[p] = testutil.ToFloat64(c)
	}
	return out
}

// held is m's allot_meter_consumer_pinned: the partitions it applies.
func held(m *Meter) float64 { return testutil.ToFloat64(m.metrics.pinned) }

// Ordered, with partitions: the two replicas share the four partitions
// out, two each, every partition applied by one replica at a time and a
// uid's events in stream order; when one stops, the other takes all four.
func TestPartitionedReplicasShareThePartitions(t *testing.T) {
	for _, dedupIDs := range []bool{true, false} {
		t.Run(fmt.Sprintf("dedup_ids=%v", dedupIDs), func(t *testing.T) {
			e := startEnv(t, partitionedConfig(4, true, dedupIDs))
			second := e.startReplica()
			meters := []*Meter{e.meter, second}
			const uids, n = 24, 40
			// However the pins fell at first, a replica holding more than
			// two gives the rest up, and the server pins a partition given
			// up with the next event it hands out: the shares settle at two
			// each within a few rounds of events.
			round := 0
			for ; ; round++ {
				e.publishRound(round, uids, n)
				if held(e.meter) == 2 && held(second) == 2 {
					break
				}
				if round == 8 {
					t.Fatalf("partitions held %v and %v after %d rounds, want 2 each", held(e.meter), held(second), round+1)
				}
				time.Sleep(followEvery + followEvery/2)
			}
			round++
			before := [][]float64{partitionApplied(e.meter), partitionApplied(second)}
			e.publishRound(round, uids, n)
			after := [][]float64{partitionApplied(e.meter), partitionApplied(second)}
			for p := range 4 {
				var by []int
				for i := range meters {
					if after[i][p] > before[i][p] {
						by = append(by, i)
					}
				}
				if len(by) > 1 {
					t.Errorf("partition %d applied by both replicas in one round: %v -> %v", p, before, after)
				}
			}
			for i := range meters {
				grew := 0
				for p := range 4 {
					if after[i][p] > before[i][p] {
						grew++
					}
				}
				if grew == 0 {
					t.Errorf("replica %d applied nothing in the second round: the partitions did not spread (%v -> %v)", i, before, after)
				}
			}
			if err := second.Stop(t.Context()); err != nil {
				t.Fatal(err)
			}
			// The stopped replica's partitions pass at once (it gave its pins
			// up), and its heartbeat ends, so the other's share is all four.
			e.publishRound(round+1, uids, n)
			if held(second) != 0 {
				t.Errorf("the stopped replica still reports %v partitions", held(second))
			}
			deadline := time.Now().Add(3 * replicaTTL)
			for r := round + 2; held(e.meter) != 4; r++ {
				if time.Now().After(deadline) {
					t.Fatalf("the remaining replica holds %v partitions after %v, want 4", held(e.meter), 3*replicaTTL)
				}
				time.Sleep(followEvery)
				e.publishRound(r, uids, n)
			}
		})
	}
}

// Unordered, with partitions: every replica pulls every partition, and
// each event still counts once.
func TestPartitionedUnorderedReplicas(t *testing.T) {
	e := startEnv(t, partitionedConfig(3, false, false))
	e.startReplica()
	const uids, n = 10, 50
	var total float64
	for round := range 3 {
		apub, _ := events.NewAsyncPublisher(e.nc, events.AsyncOptions{})
		for i := range n * uids {
			if err := apub.Publish(t.Context(), ev(fmt.Sprint("u-", i%uids), "api_calls_total", 1, fmt.Sprintf("c%d-%d", round, i))); err != nil {
				t.Fatal(err)
			}
		}
		if failed, err := apub.Close(t.Context()); err != nil || len(failed) > 0 {
			t.Fatal(failed, err)
		}
		e.waitIdle()
		total = 0
		for u := range uids {
			v, _ := e.rdb.HGet(t.Context(), keys.New("allot:").Values(keys.UserTag(fmt.Sprint("u-", u)), "api_calls_total"), "").Float64()
			total += v
		}
		if total != float64((round+1)*n*uids) {
			t.Errorf("round %d: %v api calls counted, want %d", round, total, (round+1)*n*uids)
		}
	}
}

func TestFairShare(t *testing.T) {
	for _, tc := range []struct{ parts, replicas, want int }{
		{16, 1, 16}, {16, 3, 6}, {16, 4, 4}, {4, 3, 2}, {4, 8, 1}, {4, 0, 4},
	} {
		if got := FairShare(tc.parts, tc.replicas); got != tc.want {
			t.Errorf("FairShare(%d, %d) = %d, want %d", tc.parts, tc.replicas, got, tc.want)
		}
	}
}

// A rebuild of a partitioned stream reads every partition and ends where
// the live meters were, by id and by stream position (whose records are
// each partition's own), for everything and for one uid.
func TestRebuildPartitioned(t *testing.T) {
	for _, dedupIDs := range []bool{true, false} {
		t.Run(fmt.Sprintf("dedup_ids=%v", dedupIDs), func(t *testing.T) {
			cfg := testConfig()
			cfg.Streams.Partitions = 3
			cfg.Meter.DedupIDs = dedupIDs
			e := publishRebuildMix(startEnv(t, cfg))
			e.waitIdle()
			before := snapshot(t, e.rdb, e.keys().Prefix())
			if !dedupIDs {
				n := 0
				for p := range 3 {
					if _, ok := before[e.keys().DedupSeqs(keys.DedupTag)+":"+fmt.Sprint(p)]; ok {
						n++
					}
				}
				if n < 2 {
					t.Fatalf("stream-position records of %d partitions, want those of each partition with events: %v", n, before)
				}
			}
			rebuildRestores(t, e, before, func(rep RebuildReport) {
				if rep.Events != 18 || rep.Refused != 1 {
					t.Errorf("report = %+v, want the 18 events of every partition read", rep)
				}
			})
		})
	}
}

// A partition's ack floor is not an event of its own: the server moves it
// to just below the partition's next unacked event, past other
// partitions' events, which may not be applied. The loss check compares
// the epoch marker with the lowest floor, never the highest, or it takes
// a busy partitioned stream for a rolled-back Redis.
func TestPartitionFloorsForTheLossCheck(t *testing.T) {
	e := startEnv(t, partitionedConfig(2, false, true)) // not pinned: the test pulls
	e.stopMeter()
	ctx := t.Context()
	// Two uids of partition 0 around two of partition 1.
	st, _ := e.js.Stream(ctx, e.cfg.Streams.Usage)
	byPart := map[int][]string{}
	for i := 0; len(byPart[0]) < 2 || len(byPart[1]) < 2; i++ {
		uid := fmt.Sprint("f-", i)
		ack, err := e.pub.Publish(ctx, ev(uid, "api_calls_total", 1, uid))
		if err != nil {
			t.Fatal(err)
		}
		m, err := st.GetMsg(ctx, ack.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := e.cfg.Subjects.UsagePartition(m.Subject)
		byPart[p] = append(byPart[p], uid)
	}
	if err := st.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx)
	first := info.State.LastSeq + 1
	for _, uid := range []string{byPart[0][0], byPart[1][0], byPart[1][1], byPart[0][1]} {
		e.publish(ev(uid, "api_calls_total", 1, uid+"-again"))
	}
	// Partition 0's first event acked, its second held: its floor passes
	// partition 1's two events, which nobody has applied.
	c0, err := e.js.Consumer(ctx, e.cfg.Streams.Usage, e.cfg.consumerName(0))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c0.Fetch(2, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != 2 {
		t.Fatalf("fetched %d of partition 0's 2 events", len(msgs))
	}
	if err := msgs[0].DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	ci, _ := c0.Info(ctx)
	if ci.AckFloor.Stream != first+2 {
		t.Fatalf("partition 0's floor is %d, want %d (just below its held event, past partition 1's)", ci.AckFloor.Stream, first+2)
	}
	floor, err := e.meter.ackFloor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if floor >= first+1 {
		t.Errorf("the loss check's floor is %d: above seq %d, partition 1's first event, which is not applied", floor, first+1)
	}
}
