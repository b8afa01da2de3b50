package store

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/usage"
)

// testPartitionedStreamDedup: with a partitioned stream, a partition's
// chunk of consecutive deliveries is recorded as few runs although its
// stream sequences are apart; a redelivery counts once in any chunk
// shape; an event that failed inside a run is not recorded with it; a
// chunk across partitions (a rebuild's) records each partition's own; and
// one partition's ack floor drops only that partition's records.
func testPartitionedStreamDedup(t *testing.T, open backend) {
	rdb, prefix := open(t)
	ctx := t.Context()
	const parts = 4
	s, err := New(ctx, rdb, Options{Keys: keys.New(prefix), DedupTTL: time.Hour, Cluster: strings.HasSuffix(prefix, clusterSuffix), StreamDedup: true, Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	counter := counterCfg(usage.StyleCounter, usage.ScopeUser)
	// 2,000 events of 8 uids in stream order; uid i lives in partition
	// i%4, as the stream's subject transform would put it.
	byPart := make([][]Op, parts)
	want := map[string]float64{}
	for seq := 1; seq <= 2000; seq++ {
		u := (seq * 7) % 8
		uid := fmt.Sprintf("u-%d", u)
		op := Op{ID: fmt.Sprintf("e%d", seq), UID: uid, Metric: "c", Config: counter, Value: float64(1 + seq%3), Seq: uint64(seq), Partition: u % parts}
		byPart[op.Partition] = append(byPart[op.Partition], op)
		want[uid] += op.Value
	}
	// follow marks a chunk of first deliveries, one after the other.
	follow := func(ops []Op) []Op {
		out := append([]Op(nil), ops...)
		for i := 1; i < len(out); i++ {
			out[i].Follows = true
		}
		return out
	}
	apply := applier(t, s)
	applied := func(res []Result) (n int) {
		for _, r := range res {
			if r.Applied {
				n++
			}
		}
		return n
	}
	for p, ops := range byPart {
		for lo := 0; lo < len(ops); lo += 100 {
			if n := applied(apply(follow(ops[lo:min(lo+100, len(ops))]))); n != min(100, len(ops)-lo) {
				t.Fatalf("partition %d chunk at %d: %d applied", p, lo, n)
			}
		}
		// A chunk of consecutive deliveries is one run, however far
		// apart its sequences are (a run per event before Follows).
		if runs, chunks := rdb.ZCard(ctx, s.seqsKey(keys.DedupTag, p)).Val(), int64(len(ops)+99)/100; !s.cluster && runs != chunks {
			t.Errorf("partition %d holds %d runs after %d chunks of consecutive deliveries, want one each", p, runs, chunks)
		}
	}
	// Redeliveries: a second replica's overlapping chunks, not marked as
	// consecutive (redelivered), and a rebuild's chunk across partitions.
	for p, ops := range byPart {
		if n := applied(apply(ops[50:300])); n != 0 {
			t.Errorf("partition %d: %d redeliveries applied again", p, n)
		}
	}
	var mixed []Op
	for _, ops := range byPart {
		for _, op := range ops {
			if op.Seq >= 900 && op.Seq < 1300 {
				mixed = append(mixed, op)
			}
		}
	}
	if n := applied(apply(mixed)); n != 0 {
		t.Errorf("a chunk across partitions applied %d redeliveries again", n)
	}
	for uid, w := range want {
		if got := rdb.HGet(ctx, s.Keys().Values(keys.UserTag(uid), "c"), "").Val(); got != fmt.Sprint(w) {
			t.Errorf("%s holds %s, want %v", uid, got, w)
		}
	}
	// A rebuild reads every partition in stream order: each op follows
	// the one before it of its partition, and each partition's new
	// events are one run (on a single Redis, where a partition's records
	// are one key).
	if !s.cluster {
		runs := func() (n []int64) {
			for p := range parts {
				n = append(n, rdb.ZCard(ctx, s.seqsKey(keys.DedupTag, p)).Val())
			}
			return n
		}
		was := runs()
		var replay []Op
		seen := map[int]bool{}
		for seq := 3000; seq < 3400; seq++ {
			u := (seq * 7) % 8
			op := Op{ID: fmt.Sprintf("e%d", seq), UID: fmt.Sprintf("u-%d", u), Metric: "c", Config: counter, Value: 1, Seq: uint64(seq), Partition: u % parts}
			op.Follows = seen[op.Partition]
			seen[op.Partition] = true
			replay = append(replay, op)
			want[op.UID]++
		}
		if n := applied(apply(replay)); n != len(replay) {
			t.Fatalf("a rebuild's chunk applied %d of %d", n, len(replay))
		}
		for p, n := range runs() {
			if n != was[p]+1 {
				t.Errorf("partition %d: %d runs after a rebuild's chunk, had %d: want one more", p, n, was[p])
			}
		}
	}
	// An event that fails in the middle of a run of consecutive
	// deliveries is not recorded with its neighbours: repaired and
	// redelivered, it counts once.
	p := 1
	base := uint64(5000)
	uid := "u-1"
	poisonUID := "u-5" // partition 1 too
	wrong := s.Keys().Values(keys.UserTag(poisonUID), "c")
	if err := rdb.Set(ctx, wrong, "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	chunk := follow([]Op{
		{ID: "f1", UID: uid, Metric: "c", Config: counter, Value: 1, Seq: base, Partition: p},
		{ID: "f2", UID: poisonUID, Metric: "c", Config: counter, Value: 1, Seq: base + 4, Partition: p},
		{ID: "f3", UID: uid, Metric: "c", Config: counter, Value: 1, Seq: base + 8, Partition: p},
	})
	res := apply(chunk)
	if !res[0].Applied || res[1].Err == nil || !res[2].Applied {
		t.Fatalf("chunk with a poison event in the middle: %+v", res)
	}
	rdb.Del(ctx, wrong)
	res = apply(chunk[1:2])
	if !res[0].Applied {
		t.Fatal("the repaired event, redelivered, was taken for applied: its run covered it")
	}
	if res = apply(chunk); applied(res) != 0 {
		t.Errorf("the whole chunk redelivered applied %d again", applied(res))
	}
	for uid, w := range want {
		if got := rdb.HGet(ctx, s.Keys().Values(keys.UserTag(uid), "c"), "").Val(); uid != poisonUID && uid != "u-1" && got != fmt.Sprint(w) {
			t.Errorf("%s holds %s, want %v", uid, got, w)
		}
	}
	if got := rdb.HGet(ctx, wrong, "").Val(); got != "1" {
		t.Errorf("the repaired uid holds %q, want 1", got)
	}
	// One partition's floor drops that partition's records only.
	s.SetAckFloor(2, 2000)
	apply([]Op{{ID: "late2", UID: "u-2", Metric: "c", Config: counter, Value: 1, Seq: 6000, Partition: 2}})
	apply([]Op{{ID: "late3", UID: "u-3", Metric: "c", Config: counter, Value: 1, Seq: 6001, Partition: 3}})
	tag := keys.DedupTag
	if s.cluster {
		tag = keys.UserTag("u-2")
	}
	if lowest := rdb.ZRange(ctx, s.seqsKey(tag, 2), 0, 0).Val(); len(lowest) != 1 || lowest[0] != "0-2000" {
		t.Errorf("partition 2's lowest run is %v after its floor, want 0-2000", lowest)
	}
	if s.cluster {
		tag = keys.UserTag("u-3")
	}
	for _, run := range rdb.ZRange(ctx, s.seqsKey(tag, 3), 0, -1).Val() {
		if strings.HasPrefix(run, "0-") {
			t.Errorf("partition 3 took partition 2's floor: run %s", run)
		}
	}
	// A partition's redelivery below its floor is a duplicate.
	if res := apply(byPart[2][:10]); applied(res) != 0 {
		t.Errorf("partition 2's acked events below its floor applied %d again", applied(res))
	}
}
