package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/allot/allot/loadtest/internal/hist"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// floorWatcher follows a durable consumer's ack floor: the highest stream
// sequence below which every message has been acked. The meter (and the
// raw worker) ack an event only once Redis has confirmed it, so the floor
// is the stream's "applied up to here". It is polled every 50 ms, which
// costs the server little.
type floorWatcher struct {
	cons jetstream.Consumer
	mu   sync.Mutex
	samp []floorSample
	err  error
}

type floorSample struct {
	at      time.Time
	floor   uint64
	backlog uint64 // pending + ack pending
}

func watchFloor(ctx context.Context, js jetstream.JetStream, stream, consumer string) (*floorWatcher, error) {
	cons, err := js.Consumer(ctx, stream, consumer)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", consumer, stream, err)
	}
	w := &floorWatcher{cons: cons}
	if err := w.poll(ctx); err != nil {
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
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := w.cons.Info(pctx)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.err = err
		return err
	}
	w.err = nil
	w.samp = append(w.samp, floorSample{at: time.Now(), floor: info.AckFloor.Stream, backlog: info.NumPending + uint64(info.NumAckPending)})
	return nil
}

func (w *floorWatcher) last() floorSample {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.samp[len(w.samp)-1]
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

// waitFloor waits until the floor reaches seq, or ctx ends.
func (w *floorWatcher) waitFloor(ctx context.Context, seq uint64) error {
	for {
		if w.last().floor >= seq {
			return nil
		}
		select {
		case <-ctx.Done():
			s := w.last()
			return fmt.Errorf("applied up to stream sequence %d of %d (%d behind) when waiting ended: %w", s.floor, seq, seq-s.floor, context.Cause(ctx))
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// probes measures lag on a sample of the events: the harness polls Redis
// every 5 ms for a key that exists only once the event is applied (the
// meter's dedup record of the event, written by the same script that
// applies it; for the raw worker, the counter of a uid used by that one
// event). Lag is from the event's intended send time to the first poll
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
	key      string
	intended time.Time
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

func (p *probes) add(key string, intended time.Time) {
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
	cmds := make([]*redis.IntCmd, len(batch))
	for i, pr := range batch {
		cmds[i] = pipe.Exists(ctx, pr.key)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return
	}
	now := time.Now()
	found := map[string]bool{}
	for i, c := range cmds {
		if c.Val() > 0 {
			found[batch[i].key] = true
			p.lag.Record(now, now.Sub(batch[i].intended))
		}
	}
	if len(found) == 0 {
		return
	}
	p.mu.Lock()
	kept := p.open[:0]
	for _, pr := range p.open {
		if !found[pr.key] {
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
