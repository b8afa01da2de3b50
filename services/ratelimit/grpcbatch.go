package ratelimit

import (
	"context"
	"sync"

	"github.com/allot/allot/services/ratelimit/internal/store"
)

// maxBatchOps is the most checks one batch of the gRPC front sends to
// Redis, as a NATS batch holds at most 256 checks.
const maxBatchOps = 256

// batcher decides the checks of concurrent gRPC requests together, as
// the NATS endpoints do: pipelines workers each take every job queued
// while they were busy (up to maxBatchOps checks, and at least one job)
// and decide them in one store.CheckMany round trip, which
// ratelimit.timeout bounds from the start of the batch.
type batcher struct {
	l    *Limiter
	jobs chan *batchJob
	quit chan struct{}
	wg   sync.WaitGroup
}

// batchJob is one request's checks; done closes when ds and errs hold
// their answers.
type batchJob struct {
	ops  []store.CheckOp
	ds   []store.Decision
	errs []error
	done chan struct{}
}

func newBatcher(l *Limiter, pipelines int) *batcher {
	b := &batcher{l: l, jobs: make(chan *batchJob, 1024), quit: make(chan struct{})}
	for range pipelines {
		b.wg.Add(1)
		go b.run()
	}
	return b
}

// check decides ops, waiting for its batch or for ctx.
func (b *batcher) check(ctx context.Context, ops []store.CheckOp) ([]store.Decision, []error, error) {
	j := &batchJob{ops: ops, done: make(chan struct{})}
	select {
	case b.jobs <- j:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	select {
	case <-j.done:
		return j.ds, j.errs, nil
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

func (b *batcher) run() {
	defer b.wg.Done()
	for {
		select {
		case <-b.quit:
			return
		case j := <-b.jobs:
			b.decide(b.gather(j))
		}
	}
}

// gather returns first and the jobs queued behind it, while they fit.
func (b *batcher) gather(first *batchJob) []*batchJob {
	jobs := []*batchJob{first}
	n := len(first.ops)
	for n < maxBatchOps {
		select {
		case j := <-b.jobs:
			jobs = append(jobs, j)
			n += len(j.ops)
		default:
			return jobs
		}
	}
	return jobs
}

func (b *batcher) decide(jobs []*batchJob) {
	var ops []store.CheckOp
	if len(jobs) == 1 {
		ops = jobs[0].ops
	} else {
		for _, j := range jobs {
			ops = append(ops, j.ops...)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.l.cfg.RateLimit.Timeout)
	ds, errs := b.l.store.CheckMany(ctx, ops)
	cancel()
	b.l.metrics.batchSize.Observe(float64(len(ops)))
	at := 0
	for _, j := range jobs {
		j.ds, j.errs = ds[at:at+len(j.ops)], errs[at:at+len(j.ops)]
		at += len(j.ops)
		close(j.done)
	}
}

// stop ends the workers once the server has stopped sending jobs.
func (b *batcher) stop() {
	close(b.quit)
	b.wg.Wait()
}
