package meter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// usageConsumer is one durable consumer of the usage stream that the
// meter applies: the whole stream, or one partition of it
// (streams.partitions). A partitioned meter runs one per partition; with
// meter.ordered each is pinned, and the replicas share the partitions out
// (balance).
type usageConsumer struct {
	index int    // the partition; 0 when not partitioned
	name  string // the durable's name
	cons  jetstream.Consumer
	cc    service.ConsumerConfig

	mu        sync.Mutex
	running   *service.Consumer           // nil while this replica does not pull it
	stop      func(context.Context) error // running's
	restUntil time.Time                   // after giving it up, when to stand by for it again
}

// consumerName is the durable name of partition p's consumer.
func (c Config) consumerName(p int) string {
	return ConsumerName(c.Meter.Consumer, c.Streams.Partitions, p)
}

// consumerNames are the durable names of every usage consumer.
func (c Config) consumerNames() []string {
	return ConsumerNames(c.Meter.Consumer, c.Streams.Partitions)
}

// ConsumerName is the durable name of the meter's consumer of partition
// p of a usage stream of partitions (streams.partitions): consumer
// (meter.consumer), suffixed with -<p> when the stream is partitioned.
func ConsumerName(consumer string, partitions, p int) string {
	if partitions == 0 {
		return consumer
	}
	return consumer + "-" + strconv.Itoa(p)
}

// ConsumerNames are the durable names of every usage consumer of the
// meter: one, or one per partition.
func ConsumerNames(consumer string, partitions int) []string {
	names := make([]string, max(partitions, 1))
	for p := range names {
		names[p] = ConsumerName(consumer, partitions, p)
	}
	return names
}

// createConsumers creates or updates the durable consumer of each
// partition.
func (m *Meter) createConsumers(ctx context.Context) error {
	n := max(m.cfg.Streams.Partitions, 1)
	for p := range n {
		filter := m.cfg.Streams.UsageFilter(m.subj)
		if m.cfg.Streams.Partitions > 0 {
			filter = m.cfg.Streams.PartitionFilter(m.subj, p)
		}
		name := m.cfg.consumerName(p)
		ccfg := jetstream.ConsumerConfig{
			Durable:     name,
			Description: "allot meter: applies usage events to Redis",
			AckPolicy:   jetstream.AckExplicitPolicy,
			AckWait:     m.cfg.Meter.AckWait,
			// Past it the server gives up on an event; WatchMaxDeliveries
			// dead-letters it (service.MaxDeliverOutlasts: hours of Redis away).
			MaxDeliver:    m.cfg.Meter.MaxDeliver,
			MaxAckPending: m.cfg.Meter.MaxAckPending,
			FilterSubject: filter,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		}
		if m.cfg.Meter.Ordered {
			ccfg = service.PinnedConsumer(ccfg, PriorityGroup, m.cfg.Meter.EffectivePinTTL())
		}
		cons, err := m.js.CreateOrUpdateConsumer(ctx, m.cfg.Streams.Usage, ccfg)
		if err != nil {
			return fmt.Errorf("meter: consumer %s on %s: %w", name, m.cfg.Streams.Usage, err)
		}
		m.consumers = append(m.consumers, &usageConsumer{index: p, name: name, cons: cons})
	}
	return nil
}

// pull starts pulling uc (a fresh service.Consumer: a stopped one is not
// restarted) unless it already is.
func (m *Meter) pull(uc *usageConsumer) error {
	uc.mu.Lock()
	defer uc.mu.Unlock()
	if uc.running != nil {
		return nil
	}
	c, err := service.NewConsumer(uc.cons, m.js, applier{m: m, partition: uc.index}, uc.cc, m.log)
	if err != nil {
		return err
	}
	uc.running, uc.stop = c, c.Start(m.runCtx)
	return nil
}

// stopPulling stops uc gracefully: what it holds is applied and acked,
// then its pin given up, so another replica takes the partition over at
// once; it stands by again after rest.
func (m *Meter) stopPulling(ctx context.Context, uc *usageConsumer, rest time.Duration) error {
	uc.mu.Lock()
	stop := uc.stop
	uc.running, uc.stop = nil, nil
	uc.restUntil = time.Now().Add(rest)
	uc.mu.Unlock()
	if stop == nil {
		return nil
	}
	return stop(ctx)
}

// holds reports whether this replica holds uc's pin, from info.
func (uc *usageConsumer) holds(info *jetstream.ConsumerInfo) bool {
	uc.mu.Lock()
	defer uc.mu.Unlock()
	return uc.running != nil && uc.running.HoldsPin(info)
}

// FairShare is how many of parts partitions one of replicas meters may
// hold: the rest stand by.
func FairShare(parts, replicas int) int {
	replicas = max(replicas, 1)
	return (parts + replicas - 1) / replicas
}

// balance shares the pinned partitions out among the replicas, from what
// this one holds (held[p]) and how many run: above its fair share it gives
// the highest of its partitions up (they rest here, no pull of this
// replica waiting on them, while another replica takes them); otherwise
// it stands by for every partition it does not hold. The server pins a
// partition to one of the replicas pulling it, so the shares settle
// within a few rounds, each a graceful handover.
//
// A replica at its share still stands by. Stopping a standby's pull is
// not safe: the server may have just pinned the partition to it, with
// the message that says so still on its way, and a replica that never
// learnt the pin cannot give it up, so the partition would wait out the
// pinned TTL. A replica given one partition too many gives it up again,
// knowing the pin, and rests on it.
func (m *Meter) balance(ctx context.Context, held []bool, replicas int) {
	share := FairShare(len(m.consumers), replicas)
	n := 0
	for _, h := range held {
		if h {
			n++
		}
	}
	for p := len(m.consumers) - 1; p >= 0; p-- {
		uc := m.consumers[p]
		switch {
		case held[p] && n > share:
			n--
			m.log.Info("giving a partition up to another replica", "partition", p, "consumer", uc.name, "held", n+1, "share", share, "replicas", replicas)
			m.stopAsync(ctx, uc, balanceRest)
		case !held[p]:
			uc.mu.Lock()
			rested := time.Now().After(uc.restUntil)
			uc.mu.Unlock()
			if rested {
				if err := m.pull(uc); err != nil {
					m.log.Warn("standing by for a partition", "partition", p, "err", err)
				}
			}
		}
	}
}

// balanceRest is how long a replica leaves a partition it gave up: long
// enough for a standby to be pinned to it.
const balanceRest = 3 * followEvery

// stopAsync stops uc in the background (the drain may take a chunk's
// apply), bounded by the ack wait.
func (m *Meter) stopAsync(ctx context.Context, uc *usageConsumer, rest time.Duration) {
	m.stopping.Add(1)
	go func() {
		defer m.stopping.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.Meter.AckWait)
		defer cancel()
		if err := m.stopPulling(sctx, uc, rest); err != nil {
			m.log.Warn("stopping a partition's consumer", "partition", uc.index, "err", err)
		}
	}()
}

// replicaTTL is how long a meter counts among the replicas after its last
// heartbeat.
const replicaTTL = 3 * followEvery

// heartbeat records this replica in the meters' ZSET, by Redis TIME (one
// clock for all), drops those silent for replicaTTL, and returns how many
// remain.
func (m *Meter) heartbeat(ctx context.Context) (int, error) {
	now, err := m.rdb.Time(ctx).Result()
	if err != nil {
		return 0, err
	}
	key := m.store.Keys().MeterReplicas()
	ms := now.UnixMilli()
	var card *redis.IntCmd
	_, err = m.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, key, redis.Z{Score: float64(ms), Member: m.replicaID})
		p.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(ms-replicaTTL.Milliseconds(), 10))
		p.PExpire(ctx, key, 2*replicaTTL)
		card = p.ZCard(ctx, key)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return int(card.Val()), nil
}

// leave takes this replica out of the meters' ZSET, so the others take
// its share at once.
func (m *Meter) leave(ctx context.Context) {
	if err := m.rdb.ZRem(ctx, m.store.Keys().MeterReplicas(), m.replicaID).Err(); err != nil {
		m.log.Debug("leaving the meters' set", "err", err)
	}
}

// newReplicaID names this process among the meters: the instance and a
// random suffix, since replicas may share an instance name.
func newReplicaID(instance string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	if instance == "" {
		instance = "meter"
	}
	return instance + "-" + hex.EncodeToString(b[:])
}

// partitionsHeld lists the partitions a held slice marks, for logs.
func partitionsHeld(held []bool) []int {
	var out []int
	for p, h := range held {
		if h {
			out = append(out, p)
		}
	}
	return slices.Clip(out)
}
