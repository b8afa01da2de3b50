package meter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/mutex"
	"github.com/allot/allot/services/meter/internal/store"
	"github.com/nats-io/nats.go/jetstream"
)

// errRebuilding is what the worker and the endpoints meet while Redis
// lacks the epoch marker: the state is lost, or being rebuilt.
var errRebuilding = fmt.Errorf("meter: rebuilding: %w", store.ErrLost)

// rebuildLock is the pkg/mutex lock the replica that rebuilds holds.
const rebuildLock = "meter-rebuild"

// rebuildingError is the 503 credit and authorize answer while the state
// is being rebuilt: retrying after meter.loss_check may find it back.
func (m *Meter) rebuildingError() error {
	return events.NewServiceError(events.CodeUnavailable, "",
		"rebuilding: Redis lost the meter's state and it is being rebuilt from the usage stream; retry after %s",
		m.cfg.Meter.LossCheck)
}

// setLost records whether Redis lacks the meter's state, for the worker,
// the endpoints and allot_meter_rebuilding.
func (m *Meter) setLost(lost bool) {
	if m.lost.Swap(lost) != lost {
		if lost {
			m.log.Warn("Redis lost the meter's state (no epoch marker): credit and authorize answer 503 until it is rebuilt")
		} else {
			m.log.Info("the meter's state is there (epoch marker found)")
		}
	}
	v := 0.0
	if lost {
		v = 1
	}
	m.metrics.rebuilding.Set(v)
}

// checkEpoch looks for the epoch marker. Without one, a usage stream
// holding events means Redis lost the state (or never had it): the meter
// waits for a rebuild. A stream without events means a new deployment:
// the marker is written.
//
// A marker whose seq is below the usage consumer's ack floor means Redis
// holds an older state than the meter applied: every event up to the
// floor was applied before it was acked, and each apply raised the seq
// (raiseOverRefused covers the events acked without one). That is Redis
// restored from an older snapshot, or a failover to a replica that
// lagged: the marker's seq is dropped and the state handled as lost. The
// floor is read before the marker, so an apply in between only raises
// the marker further. On a Redis Cluster, where no apply touches the
// marker, only a missing marker is seen.
func (m *Meter) checkEpoch(ctx context.Context) error {
	var floor uint64
	if m.store.TracksSeq() {
		var err error
		if floor, err = m.ackFloor(ctx); err != nil {
			return err
		}
	}
	seq, ok, err := m.store.Epoch(ctx)
	if err != nil {
		return err
	}
	if ok && seq < floor {
		dropped, err := m.store.DropEpoch(ctx, seq)
		if err != nil {
			return err
		}
		if dropped {
			m.metrics.rollbacks.Inc()
			m.log.Error("Redis holds an older state than the meter applied (restored from an older snapshot, or a failover to a replica that lagged): dropping the epoch marker so the state is rebuilt from the usage stream",
				"marker_seq", seq, "ack_floor", floor)
		}
		m.setLost(true)
		return nil
	}
	if ok {
		m.setLost(false)
		return nil
	}
	stream, err := m.js.Stream(ctx, m.cfg.Streams.Usage)
	if err != nil {
		return fmt.Errorf("meter: stream %s: %w", m.cfg.Streams.Usage, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("meter: stream %s: %w", m.cfg.Streams.Usage, err)
	}
	if info.State.Msgs == 0 {
		if _, err := m.store.InitEpoch(ctx, info.State.LastSeq); err != nil {
			return err
		}
		m.setLost(false)
		return nil
	}
	m.setLost(true)
	return nil
}

// ackFloor is the usage consumer's ack floor: every event at or below it
// was acked. 0 before the consumer exists.
func (m *Meter) ackFloor(ctx context.Context) (uint64, error) {
	cons, err := m.js.Consumer(ctx, m.cfg.Streams.Usage, m.cfg.Meter.Consumer)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("meter: consumer %s: %w", m.cfg.Meter.Consumer, err)
	}
	return cons.CachedInfo().AckFloor.Stream, nil
}

// adoptOrCheckEpoch is the check at start. A Redis that holds the meter's
// state but no marker was written by a meter from before the marker: its
// state is kept and the marker written (at the consumer's ack floor), since a rebuild would
// drop what authorize charged and no event repeats. Only at start: once
// running, a missing marker is a loss even if authorize has written a
// key since.
//
// State left by a rebuild that was cut short (MarkRebuilding's mark is
// there) is never kept: the rebuild had not reached every event.
func (m *Meter) adoptOrCheckEpoch(ctx context.Context) error {
	if _, ok, err := m.store.Epoch(ctx); err != nil || ok {
		return m.checkEpoch(ctx)
	}
	cut, err := m.store.Rebuilding(ctx)
	if err != nil {
		return err
	}
	if cut {
		m.log.Warn("Redis holds the state of a rebuild that did not finish: rebuilding again")
		return m.checkEpoch(ctx)
	}
	has, err := m.store.HasState(ctx)
	if err != nil {
		return err
	}
	if has {
		// At the consumer's ack floor: the state adopted holds what was
		// acked, and a marker below it would read as an older state.
		floor, err := m.ackFloor(ctx)
		if err != nil {
			return err
		}
		if _, err := m.store.InitEpoch(ctx, floor); err != nil {
			return err
		}
		m.log.Info("Redis holds the meter's state without an epoch marker (written before the marker existed): keeping it and writing the marker, no rebuild")
	}
	return m.checkEpoch(ctx)
}

// watchEpoch checks the marker every meter.loss_check, and, in the one
// replica holding the rebuild lock, rebuilds the state when it is lost.
// It returns when ctx ends.
func (m *Meter) watchEpoch(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held *mutex.Lock // Lead runs the work only in the goroutine that set it
		m.locker.Lead(ctx, rebuildLock, m.cfg.Meter.LossCheck, mutex.LockOptions{}, mutex.LeadHooks{
			Acquired: func(l *mutex.Lock) { held = l },
			Error:    func(err error) { m.log.Warn("rebuild lock", "err", err) },
		}, func(ctx context.Context) { m.rebuildIfLost(ctx, held) })
	}()
	t := time.NewTicker(m.cfg.Meter.LossCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			<-done
			return
		case <-t.C:
			cctx, cancel := context.WithTimeout(ctx, m.cfg.Meter.LossCheck)
			if err := m.checkEpoch(cctx); err != nil && ctx.Err() == nil {
				m.log.Warn("epoch marker not checked", "err", err)
			}
			cancel()
		}
	}
}

// rebuildIfLost is the work of the replica holding the rebuild lock: when
// the marker is missing while the stream has events, it rebuilds the
// state from the stream (Rebuild, which writes the marker last). The
// other replicas' workers and endpoints wait meanwhile: the apply script
// refuses without the marker.
//
// Redis losing its state loses the lock too: a holder whose lock is gone
// from Redis does not rebuild (another replica may take the lock now); it
// tries for the lock again on its next turn.
func (m *Meter) rebuildIfLost(ctx context.Context, lock *mutex.Lock) {
	if err := m.checkEpoch(ctx); err != nil || !m.lost.Load() {
		return
	}
	if _, err := lock.TTL(ctx); err != nil {
		return
	}
	m.log.Warn("rebuilding the meter's state from the usage stream")
	m.metrics.rebuildDone.Set(0)
	rep, err := Rebuild(ctx, m.cfg, Deps{NATS: m.nc, Redis: m.rdb}, RebuildOptions{Force: true, Log: m.log,
		Progress: func(p RebuildProgress) { m.metrics.rebuildDone.Set(p.Percent() / 100) }})
	if err != nil {
		if ctx.Err() == nil { // a replica shutting down has not failed
			m.metrics.rebuilds.WithLabelValues("failed").Inc()
			m.log.Error("rebuild failed; trying again", "err", err, "in", m.cfg.Meter.LossCheck)
		}
		return
	}
	m.metrics.rebuilds.WithLabelValues("done").Inc()
	m.metrics.rebuildDone.Set(1)
	m.log.Info("rebuilt the meter's state", "events", rep.Events, "applied", rep.Applied, "duplicates", rep.Duplicates,
		"last_seq", rep.LastSeq, "missing", rep.Missing, "took", rep.Elapsed)
	m.setLost(false)
}

// rebuildingReady is the worker's Ready while the state may be lost: it
// resumes only once the marker is back and Redis answers.
func (m *Meter) rebuildingReady(ctx context.Context) error {
	if m.lost.Load() {
		return errRebuilding
	}
	return m.store.Ping(ctx)
}

// isLost tells an apply refused for a missing marker.
func isLost(err error) bool { return errors.Is(err, store.ErrLost) }
