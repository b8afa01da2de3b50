package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allot/allot/loadtest/internal/hist"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// floorWatcher follows a durable consumer's ack floor: the highest stream
// sequence below which every message has been acked. The meter (and the
// raw worker) ack an event only once Redis has confirmed it, so the floor
// is the stream's "applied up to here". It is polled every 50 ms, which
// costs the server little.
type floorWatcher struct {
	// conses are the consumers followed: one, or one per partition of a
	// partitioned usage stream (streams.partitions), whose floors are
	// each their partition's; with several, the floor is the stream's
	// last sequence less their backlogs (what is stored and not applied).
	conses  []jetstream.Consumer
	stream  jetstream.Stream // with several consumers
	sends   *sends           // what the phase puts into the stream; nil if nothing
	ackWait time.Duration    // the consumer's: how long before an unacked message is redelivered
	pinTTL  time.Duration    // the consumer's pinned TTL (0: not pinned): how long a dead reader keeps the pin
	mu      sync.Mutex
	samp    []floorSample
	err     error // the last poll's
}

type floorSample struct {
	at          time.Time
	floor       uint64
	backlog     uint64 // pending + ack pending
	pending     uint64 // not yet delivered
	ackPending  uint64 // delivered, not yet acked
	redelivered uint64 // of those, delivered more than once
	acked       int64  // w.sends.acked() just before this sample was asked for
}

// sends counts what a phase's apps put into a stream, for the bound on
// the backlog: queued is every message handed to a publisher, acked the
// ones the stream has confirmed (stored, or dropped as a repeated id).
type sends struct {
	queued atomic.Int64
	mu     sync.Mutex
	pubs   []*events.AsyncPublisher
}

func (s *sends) add(p *events.AsyncPublisher) {
	s.mu.Lock()
	s.pubs = append(s.pubs, p)
	s.mu.Unlock()
}

func (s *sends) acked() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, p := range s.pubs {
		n += int64(p.Stats().Acked)
	}
	return n
}

// watchFloor starts watching consumers (one, or a partitioned stream's)
// on stream until ctx ends. sends, if not nil, counts what the caller puts
// into the stream; see backlogNow. The first look may take a while on a
// busy server: it is retried until it has failed for 15 s.
func watchFloor(ctx context.Context, js jetstream.JetStream, stream string, consumers []string, sends *sends) (*floorWatcher, error) {
	w := &floorWatcher{sends: sends}
	err := waitFor(ctx, realClock{}, waitSpec{What: "consumer " + strings.Join(consumers, ", ") + " on " + stream, Unit: "looks",
		Stall: 15 * time.Second, StallWhy: "a busy server's time to answer", Every: 250 * time.Millisecond},
		func(ctx context.Context) (progress, error) {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			for len(w.conses) < len(consumers) {
				cons, err := js.Consumer(cctx, stream, consumers[len(w.conses)])
				if err != nil {
					return progress{}, err
				}
				w.conses = append(w.conses, cons)
			}
			if len(consumers) > 1 && w.stream == nil {
				st, err := js.Stream(cctx, stream)
				if err != nil {
					return progress{}, err
				}
				w.stream = st
			}
			return progress{Complete: true}, w.poll(ctx)
		})
	if err != nil {
		return nil, err
	}
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				_ = w.poll(ctx)
			}
		}
	}()
	return w, nil
}

func (w *floorWatcher) poll(ctx context.Context) error {
	var acked int64
	if w.sends != nil {
		acked = w.sends.acked()
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var last uint64
	if w.stream != nil {
		// Before the consumers: what is stored after this read is in no
		// backlog yet, and must not count as applied.
		info, err := w.stream.Info(pctx)
		if err != nil {
			return w.failed(fmt.Errorf("stream info: %w", err))
		}
		last = info.State.LastSeq
	}
	s := floorSample{at: time.Now(), acked: acked}
	var ackWait, pinTTL time.Duration
	for _, cons := range w.conses {
		info, err := cons.Info(pctx)
		if err != nil {
			return w.failed(fmt.Errorf("consumer info: %w", err))
		}
		ackWait = info.Config.AckWait
		if info.Config.PriorityPolicy == jetstream.PriorityPolicyPinned {
			pinTTL = info.Config.PinnedTTL
		}
		s.floor = info.AckFloor.Stream
		s.pending += info.NumPending
		s.ackPending += uint64(info.NumAckPending)
		s.redelivered += uint64(info.NumRedelivered)
	}
	s.backlog = s.pending + s.ackPending
	if w.stream != nil {
		s.floor = last - min(last, s.backlog)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = nil
	w.ackWait, w.pinTTL = ackWait, pinTTL
	w.samp = append(w.samp, s)
	return nil
}

// failed records a poll's error and returns it.
func (w *floorWatcher) failed(err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = err
	return err
}

func (w *floorWatcher) last() floorSample {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.samp[len(w.samp)-1]
}

// latest is the last sample, and the error of the last poll if it failed
// (the sample is then older than it looks).
func (w *floorWatcher) latest() (floorSample, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.samp[len(w.samp)-1], w.err
}

// at returns the last sample taken at or before t.
func (w *floorWatcher) at(t time.Time) floorSample {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.samp[0]
	for _, x := range w.samp {
		if x.at.After(t) {
			break
		}
		s = x
	}
	return s
}

// backlogNow bounds the consumer's backlog now from above: the last
// sample's backlog plus everything handed to the publishers that the
// stream had not acked when that sample was asked for (it may have been
// stored since). The sample alone lags by a poll, longer on a busy
// server, and misses the publishers' windows (4,096 events each): the
// apps overshot a bound of 20,000 by 30,000 on it. This one cannot lag.
func (w *floorWatcher) backlogNow() uint64 {
	s := w.last()
	if w.sends == nil {
		return s.backlog
	}
	return s.backlog + uint64(max(0, w.sends.queued.Load()-s.acked))
}

// rate is the applied events per second between two times: the floor
// at the last sample before from, and at the first sample at or after to.
func (w *floorWatcher) rate(from, to time.Time) (float64, float64) {
	_ = w.poll(context.Background())
	a, b := w.at(from), w.last()
	secs := to.Sub(from).Seconds()
	if secs <= 0 {
		return 0, 0
	}
	return float64(b.floor-a.floor) / secs, secs
}

// drainStall is the stall budget of waiting for a consumer to apply what
// is stored. A message the consumer took and never acked (the client
// dropped it, or its worker lost it) comes back only after the consumer's
// ack wait; until then the ack floor cannot pass it, however fast the rest
// is applied. So the budget is the ack wait plus a margin for the server
// to redeliver and the worker to apply. A pinned consumer (the ordered
// meter) gives nothing to anyone until a dead reader's pin runs out: then
// the budget is its pinned TTL (which outlasts the ack wait) plus the
// margin.
func drainStall(ackWait, pinTTL time.Duration) (time.Duration, string) {
	const margin = 10 * time.Second
	if pinTTL > ackWait {
		return pinTTL + margin, fmt.Sprintf("the consumer's pinned TTL of %v, after which a killed reader's pin passes to another (and what it held has been redelivered), plus 10s", pinTTL)
	}
	if ackWait <= 0 {
		return 30*time.Second + margin, "the consumer's ack wait is unknown: 30s, plus 10s"
	}
	return ackWait + margin, fmt.Sprintf("the consumer's ack wait of %v, after which the server redelivers an unacked message, plus 10s", ackWait)
}

// consumerProgress is how far a consumer has got towards applying every
// message up to stream sequence seq, counting from floor from (the floor
// when the phase began): done when the ack floor reaches seq. Progress
// is a shrinking backlog or a rising floor.
func consumerProgress(s floorSample, from, seq uint64) progress {
	if seq <= from {
		return progress{Complete: true}
	}
	total := int64(seq - from)
	done := total - min(int64(s.backlog), total)
	return progress{
		Complete: s.floor >= seq,
		Done:     done, Total: total, Mark: int64(s.floor),
		State: fmt.Sprintf("%s not yet delivered, %s delivered and not acked (%s of them redelivered); the ack floor is at stream sequence %s of %s",
			commas(int64(s.pending)), commas(int64(s.ackPending)), commas(int64(s.redelivered)), commas(int64(s.floor)), commas(int64(seq))),
	}
}

// drain waits until the consumer has applied every message the stream
// held when the wait began (its ack floor reaches the stream's last
// sequence), for as long as it makes progress: see drainStall.
func (w *floorWatcher) drain(ctx context.Context, js jetstream.JetStream, what, stream string) error {
	var seq uint64
	known := false
	from := w.at(time.Time{}).floor
	w.mu.Lock()
	stall, why := drainStall(w.ackWait, w.pinTTL)
	w.mu.Unlock()
	return waitFor(ctx, realClock{}, waitSpec{What: what, Unit: "messages applied", Stall: stall, StallWhy: why, Every: 100 * time.Millisecond},
		func(ctx context.Context) (progress, error) {
			if !known {
				ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				str, err := js.Stream(ictx, stream)
				if err != nil {
					return progress{}, fmt.Errorf("stream %s: %w", stream, err)
				}
				info, err := str.Info(ictx)
				if err != nil {
					return progress{}, fmt.Errorf("stream %s: %w", stream, err)
				}
				seq, known = info.State.LastSeq, true
			}
			s, err := w.latest()
			if err != nil {
				return progress{}, err
			}
			return consumerProgress(s, from, seq), nil
		})
}

// probes measures lag on a sample of the events: the harness polls Redis
// every 5 ms for a record that exists only once the event is applied (the
// meter's dedup record of the event, a member of a dedup SET written by
// the same script that applies it; for the raw worker, the counter of a
// uid used by that one event). Lag is from the event's intended send time to the first poll
// that sees the key, so it is exact to 5 ms plus one Redis round trip.
type probes struct {
	rdb  redis.UniversalClient
	lag  *hist.Recorder
	mu   sync.Mutex
	open []probe
	seen int64
	next time.Time // no more than one probe per 2 ms
}

type probe struct {
	probeKeys
	intended time.Time
}

// probeKeys is what a probe polls: key exists, or, with a member, one of
// the SETs key and next holds it.
type probeKeys struct {
	key, next, member string
}

// dedupProbe is the meter's dedup record of event id of uid sent at
// intended: in the SET of the bucket of its stream time, which is that
// bucket or the next.
func (t *target) dedupProbe(uid, id string, intended time.Time) probeKeys {
	_, cluster := t.rdb.(*redis.ClusterClient)
	b := intended.UnixMilli() / t.meter.DedupTTL.Milliseconds()
	set, member := t.keys.DedupRecord(keys.UserTag(uid), id, b, cluster)
	next, _ := t.keys.DedupRecord(keys.UserTag(uid), id, b+1, cluster)
	return probeKeys{key: set, next: next, member: member}
}

func newProbes(rdb redis.UniversalClient, origin time.Time) *probes {
	return &probes{rdb: rdb, lag: hist.New(origin)}
}

// want says whether an event sent now should be a probe.
func (p *probes) want(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now.Before(p.next) || len(p.open) >= 5000 {
		return false
	}
	p.next = now.Add(2 * time.Millisecond)
	return true
}

func (p *probes) add(key probeKeys, intended time.Time) {
	p.mu.Lock()
	p.open = append(p.open, probe{key, intended})
	p.mu.Unlock()
}

// run polls until ctx ends.
func (p *probes) run(ctx context.Context) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			p.poll(ctx)
		}
	}
}

func (p *probes) poll(ctx context.Context) {
	p.mu.Lock()
	batch := append([]probe(nil), p.open[:min(len(p.open), 2000)]...)
	p.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	pipe := p.rdb.Pipeline()
	seen := make([]func() bool, len(batch))
	for i, pr := range batch {
		if pr.member == "" {
			c := pipe.Exists(ctx, pr.key)
			seen[i] = func() bool { return c.Val() > 0 }
			continue
		}
		c, n := pipe.SIsMember(ctx, pr.key, pr.member), pipe.SIsMember(ctx, pr.next, pr.member)
		seen[i] = func() bool { return c.Val() || n.Val() }
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return
	}
	now := time.Now()
	found := map[probeKeys]bool{}
	for i, applied := range seen {
		if applied() {
			found[batch[i].probeKeys] = true
			p.lag.Record(now, now.Sub(batch[i].intended))
		}
	}
	if len(found) == 0 {
		return
	}
	p.mu.Lock()
	kept := p.open[:0]
	for _, pr := range p.open {
		if !found[pr.probeKeys] {
			kept = append(kept, pr)
		}
	}
	p.open = kept
	p.seen += int64(len(found))
	p.mu.Unlock()
}

// pending is the number of probes not yet seen applied.
func (p *probes) pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.open)
}

// settle polls until every probe is seen or ctx ends.
func (p *probes) settle(ctx context.Context) {
	for p.pending() > 0 && ctx.Err() == nil {
		p.poll(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Millisecond):
		}
	}
}
