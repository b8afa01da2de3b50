package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Writes that outlive a failover. Redis replicates asynchronously: a
// master killed right after it answered a script may take that script's
// writes with it, and the replica promoted in its place never had them.
// The meter acks a usage event to JetStream once Apply returns, so such an
// event would be gone for good. With Options.WaitReplicas, every pipeline
// that writes state ends with WAIT <n> <timeout> on the same connection:
// Apply and Authorize return only once n replicas have acknowledged every
// write before it, and fail with ErrRedis (retried: the dedup records
// make it safe) when fewer did within the timeout.
//
// WAIT counts the writes of its own connection, so it must follow them on
// that connection. A go-redis ClusterClient sends a keyless command to
// any master, so on a Cluster the store sends each master's scripts
// through that master's own client (MasterForKey), WAIT last.

// pipes is one round trip's pipelines: one of the store's client, or
// with WaitReplicas on a Cluster one per master.
type pipes struct {
	s      *Store
	one    redis.Pipeliner
	byNode map[*redis.Client]redis.Pipeliner
	err    error // a key's master could not be found
}

func (s *Store) newPipes() *pipes {
	p := &pipes{s: s}
	if s.waitReplicas > 0 && s.cc != nil {
		p.byNode = map[*redis.Client]redis.Pipeliner{}
	} else {
		p.one = s.rdb.Pipeline()
	}
	return p
}

// pipe returns the pipeline for commands on key (nil once a master could
// not be found; exec then fails).
func (p *pipes) pipe(ctx context.Context, key string) redis.Pipeliner {
	if p.one != nil {
		return p.one
	}
	if p.err != nil {
		return nil
	}
	node, err := p.s.cc.MasterForKey(ctx, key)
	if err != nil {
		p.err = err
		return nil
	}
	pl, ok := p.byNode[node]
	if !ok {
		pl = node.Pipeline()
		p.byNode[node] = pl
	}
	return pl
}

// exec sends every pipeline, each with WAIT last when the store waits for
// replicas (the pipelines of a Cluster's masters at once). The commands'
// own results are theirs to read; the error is a WAIT that failed or came
// short, or a master not found. On a Cluster a failure reloads the slot
// map, as the ClusterClient does on a redirection it sees itself.
func (p *pipes) exec(ctx context.Context) error {
	if p.err != nil {
		p.s.cc.ReloadState(ctx)
		return fmt.Errorf("%w: %w", ErrRedis, p.err)
	}
	all := []redis.Pipeliner{p.one}
	if p.one == nil {
		all = all[:0]
		for _, pl := range p.byNode {
			all = append(all, pl)
		}
	}
	errs := make([]error, len(all))
	failed := make([]bool, len(all))
	var wg sync.WaitGroup
	for i, pl := range all {
		wg.Go(func() { failed[i], errs[i] = p.s.execWait(ctx, pl) })
	}
	wg.Wait()
	if p.byNode != nil && slices.Contains(failed, true) {
		// A node gone, a slot moved (MOVED), the Cluster down: the
		// ClusterClient would reload its slot map on seeing that.
		p.s.cc.ReloadState(ctx)
	}
	return errors.Join(errs...)
}

// execWait sends one pipeline, with WAIT last when the store waits, and
// says whether any of its commands failed.
func (s *Store) execWait(ctx context.Context, pl redis.Pipeliner) (bool, error) {
	if s.waitReplicas <= 0 {
		_, err := pl.Exec(ctx)
		return err != nil, nil
	}
	wait := pl.Do(ctx, "wait", s.waitReplicas, s.waitTimeout.Milliseconds())
	_, execErr := pl.Exec(ctx)
	failed := execErr != nil
	n, err := wait.Int64()
	if err != nil {
		return failed, fmt.Errorf("%w: WAIT %d: %w", ErrRedis, s.waitReplicas, err)
	}
	if int(n) < s.waitReplicas {
		return failed, fmt.Errorf("%w: %w: %d of %d replicas acknowledged the writes within %s", ErrRedis, ErrNotReplicated, n, s.waitReplicas, s.waitTimeout)
	}
	return failed, nil
}

// ErrNotReplicated marks writes that fewer replicas than
// Options.WaitReplicas acknowledged in time: they are on the master, and
// may be lost if it fails now. It comes wrapped with ErrRedis: the caller
// retries, and the dedup records make the writes count once.
var ErrNotReplicated = errors.New("store: writes not acknowledged by the replicas")
