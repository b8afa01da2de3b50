package meter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/mutex"
	"github.com/allot/allot/pkg/service"
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
	// The gauge first: whoever sees the flag change sees the gauge agree.
	v := 0.0
	if lost {
		v = 1
	}
	m.metrics.rebuilding.Set(v)
	if m.lost.Swap(lost) != lost {
		if lost {
			m.log.Warn("Redis lost the meter's state (no epoch marker): credit and authorize answer 503 until it is rebuilt")
		} else {
			m.log.Info("the meter's state is there (epoch marker found)")
		}
	}
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
// the marker further.
//
// On a Redis Cluster the marker of every hash slot is read too
// (checkSlots): one missing is a master that lost the data of its slots.
func (m *Meter) checkEpoch(ctx context.Context) error {
	m.checking.Lock()
	defer m.checking.Unlock()
	whole, err := m.epochWhole(ctx)
	if err != nil || whole < 0 {
		return err
	}
	if whole > 0 {
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

// epochWhole reads the markers: 1 whole, 0 some missing, -1 an older
// state found, its marker dropped and the meter set lost.
func (m *Meter) epochWhole(ctx context.Context) (int, error) {
	if m.store.Slotted() {
		return m.checkSlots(ctx)
	}
	var floor uint64
	if m.store.TracksSeq() {
		var err error
		if floor, err = m.ackFloor(ctx); err != nil {
			return 0, err
		}
	}
	marks, err := m.store.EpochShare(ctx)
	if err != nil {
		return 0, err
	}
	m.noteHeldSince(marks)
	seq := marks.Seq
	switch {
	case !marks.OK:
		return 0, nil
	case seq >= floor:
		return 1, nil
	}
	dropped, err := m.store.DropEpoch(ctx, seq)
	if err != nil {
		return 0, err
	}
	if dropped {
		m.rolledBack("the epoch marker", seq, floor)
	}
	m.setLost(true)
	return -1, nil
}

// checkSlots is epochWhole on a Redis Cluster: the marker and the marker
// of every hash slot must be there (a master that came back empty, or a
// failover to an empty replica, loses those of its slots), a share of
// them read each time (service.SlotShares: every master's slots in each,
// every slot within 8 checks; an apply into a slot whose marker is gone
// is refused at once, by the script). A slot's
// marker below the highest sequence this replica applied in the slot
// (read before the markers) is an older state of that slot: a replica
// promoted without the write. Only this replica's writes are known here
// (another meter's, since overwritten by a later one in the same slot,
// are not): meter.wait_replicas is what keeps a failover from losing
// writes; this sees the loss it did not prevent.
func (m *Meter) checkSlots(ctx context.Context) (int, error) {
	applied := m.store.AppliedSlots()
	marks, err := m.store.EpochShare(ctx)
	if err != nil {
		return 0, err
	}
	m.noteHeldSince(marks)
	missing := make([]bool, len(marks.Slots))
	for _, s := range marks.Missing {
		missing[s] = true
	}
	older := 0
	for s, seq := range marks.Slots {
		if !marks.WasRead(s) || missing[s] || s >= len(applied) || seq >= applied[s] {
			continue
		}
		dropped, err := m.store.DropSlotEpoch(ctx, s, seq)
		if err != nil {
			return 0, err
		}
		if dropped {
			older++
			m.rolledBack(fmt.Sprintf("the epoch marker of hash slot %d", s), seq, applied[s])
		}
	}
	if older > 0 {
		m.setLost(true)
		return -1, nil
	}
	if marks.OK && len(marks.Missing) > 0 && !m.lost.Load() {
		m.log.Warn("Redis Cluster slots lost the meter's state (their epoch markers are gone: a master restarted empty, or a failover to an empty replica)",
			"slots", service.SlotRanges(marks.Missing))
	}
	if marks.Whole() {
		return 1, nil
	}
	return 0, nil
}

// noteHeldSince keeps what the marker says of the state's start: since
// when the last rebuild could restore it (credit replies say so for the
// grant periods that began before), or nothing (whole).
func (m *Meter) noteHeldSince(marks service.Marks) {
	var ms int64
	if !marks.HeldSince.IsZero() {
		ms = marks.HeldSince.UnixMilli()
	}
	if m.heldSince.Swap(ms) != ms && ms != 0 {
		m.log.Warn("the meter's state was rebuilt from a stream that had lost its oldest events: credit replies of grant periods begun before that say so (counted_since)",
			"held_since", marks.HeldSince.Format(time.RFC3339))
	}
}

// rolledBack counts and logs an older state found, its marker dropped.
func (m *Meter) rolledBack(what string, seq, applied uint64) {
	m.metrics.rollbacks.Inc()
	m.log.Error("Redis holds an older state than the meter applied (restored from an older snapshot, or a failover to a replica that lagged): dropping "+what+" so the state is rebuilt from the usage stream",
		"marker_seq", seq, "applied", applied)
}

// ackFloor is the usage consumer's ack floor: every event at or below it
// was acked, so applied (or refused), and the epoch marker, raised by
// each apply, is at least the highest applied. 0 before the consumer
// exists.
//
// A partitioned stream has a consumer per partition, and a partition's
// floor is not an event of its own: the server moves it to just below
// the partition's next unacked event, past events of other partitions
// that may not be applied yet. So the floor is the lowest of theirs:
// below the lowest event not yet applied, whose partition's floor is
// below it, and every event before that one is applied, so the marker
// is at least it. (The highest of them read above the marker under load
// here, with nothing lost.)
func (m *Meter) ackFloor(ctx context.Context) (uint64, error) {
	var floor uint64
	for i, name := range m.cfg.consumerNames() {
		cons, err := m.js.Consumer(ctx, m.cfg.Streams.Usage, name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return 0, nil
		}
		if err != nil {
			return 0, fmt.Errorf("meter: consumer %s: %w", name, err)
		}
		f := cons.CachedInfo().AckFloor.Stream
		if i == 0 || f < floor {
			floor = f
		}
	}
	return floor, nil
}

// adoptOrCheckEpoch is the check at start (service.Epoch.Adopt). A Redis
// that holds the meter's state but no marker was written by a meter from
// before the marker: its state is kept and the marker written at the
// consumer's ack floor (a marker below it would read as an older state),
// since a rebuild would drop what authorize charged and no event
// repeats. Only at start: once running, a missing marker is a loss even
// if authorize has written a key since. State left by a rebuild that was
// cut short (MarkRebuilding's mark is there) is never kept: the rebuild
// had not reached every event. On a Redis Cluster, a marker written
// before the markers per hash slot gets them.
func (m *Meter) adoptOrCheckEpoch(ctx context.Context) error {
	floor, err := m.ackFloor(ctx)
	if err != nil {
		return err
	}
	at, err := m.store.AdoptEpoch(ctx, floor)
	if err != nil {
		return err
	}
	switch at {
	case service.EpochCut:
		m.log.Warn("Redis holds the state of a rebuild that did not finish: rebuilding again")
	case service.EpochAdopted:
		m.log.Info("Redis holds the meter's state without an epoch marker (written before the marker existed): keeping it and writing the marker, no rebuild")
	case service.EpochSlotsAdopted:
		m.log.Info("the Redis Cluster's epoch marker has no markers per hash slot (written before they existed): writing them, no rebuild")
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
	m.noteHeldSince(service.Marks{HeldSince: rep.HeldSince})
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
