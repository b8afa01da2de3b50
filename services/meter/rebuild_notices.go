package meter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/services/meter/internal/store"
	"github.com/nats-io/nats.go/jetstream"
)

// settleNotices decides, for every notice the replay left pending, whether
// it was sent before: found in the notice stream by its fixed id, or
// crossed before the oldest notice that stream still holds (a meter
// publishes within moments of the crossing). Those are cleared without
// being sent again. The others were never sent: a rebuild publishes them
// (and clears them, as the meter does); a dry run leaves them pending, as
// a meter that could not publish them holds them.
func (r *rebuilder) settleNotices(ctx context.Context) error {
	if len(r.pending) == 0 {
		return nil
	}
	sent, coverage, err := r.sentNotices(ctx)
	if err != nil {
		return err
	}
	var done []store.Confirmation
	var unsent []noticeBatch
	for g, mc := range r.pending {
		ns, err := r.m.store.Pending(ctx, g.uid, g.metric)
		if err != nil {
			return fmt.Errorf("meter: rebuild: %w", err)
		}
		var was, never []store.Notice
		for _, n := range ns {
			at, ok := r.crossedAt[n.Raw]
			if sent[noticeID(g.uid, g.metric, n)] || (ok && at.Before(coverage)) {
				was = append(was, n)
			} else {
				never = append(never, n)
			}
		}
		if len(was) > 0 {
			done = append(done, store.Confirmation{UID: g.uid, Metric: g.metric, Notices: was})
			r.report.NoticesSent += len(was)
		}
		if len(never) > 0 {
			unsent = append(unsent, noticeBatch{g.uid, g.metric, mc, never})
		}
	}
	if err := r.m.store.ConfirmAll(ctx, done); err != nil {
		return fmt.Errorf("meter: rebuild: %w", err)
	}
	for _, b := range unsent {
		r.report.NoticesPending += len(b.notices)
	}
	if r.opts.DryRun || len(unsent) == 0 {
		return nil
	}
	for i, err := range r.m.publishNotices(ctx, unsent) {
		if err != nil {
			r.log.Warn("rebuild: notice not published; it stays pending for the meter", "uid", unsent[i].uid, "metric", unsent[i].metric, "err", err)
			continue
		}
		r.report.NoticesPending -= len(unsent[i].notices)
		r.report.NoticesPublished += len(unsent[i].notices)
	}
	return nil
}

// sentNotices reads the ids of the usage notices the notice stream holds
// (of UID, or of every uid), and the time before which it holds none
// any more (zero when it never lost one).
func (r *rebuilder) sentNotices(ctx context.Context) (map[string]bool, time.Time, error) {
	sent := map[string]bool{}
	stream, err := r.js.Stream(ctx, r.cfg.Streams.Notify)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return sent, time.Time{}, nil
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("meter: rebuild: stream %s: %w", r.cfg.Streams.Notify, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("meter: rebuild: stream %s: %w", r.cfg.Streams.Notify, err)
	}
	var coverage time.Time
	switch st := info.State; {
	case st.FirstSeq > 1 && st.Msgs > 0:
		coverage = st.FirstTime
	case st.LastSeq > 0 && st.Msgs == 0:
		// Everything it held is gone: it holds at most its max age.
		coverage = r.now.Add(-r.cfg.Streams.NotifyMaxAge)
	}
	uid := r.opts.UID
	if uid == "" {
		uid = "*"
	}
	err = r.msgIDs(ctx, stream, r.cfg.Streams.Notify, r.cfg.Subjects.NotifyUsage(uid), func(id string) { sent[id] = true })
	if err != nil {
		return nil, time.Time{}, err
	}
	return sent, coverage, nil
}

// gaveUp returns the sequences of the usage events the meter gave up on
// (handed out max_deliver times, then dead-lettered with reason
// max_deliver): it never counted them, so a rebuild must not either.
func (r *rebuilder) gaveUp(ctx context.Context) (map[uint64]bool, error) {
	out := map[uint64]bool{}
	stream, err := r.js.Stream(ctx, r.cfg.Streams.Dead)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("meter: rebuild: stream %s: %w", r.cfg.Streams.Dead, err)
	}
	subject := r.cfg.Subjects.DeadStreamSubject()
	if r.opts.UID != "" {
		subject = r.cfg.Subjects.DeadFor(r.opts.UID)
	}
	var prefixes []string
	for _, name := range r.cfg.consumerNames() {
		prefixes = append(prefixes, "dead."+r.cfg.Streams.Usage+"."+name+".")
	}
	err = r.msgIDs(ctx, stream, r.cfg.Streams.Dead, subject, func(id string) {
		for _, prefix := range prefixes {
			if rest, ok := strings.CutPrefix(id, prefix); ok {
				if seq, err := strconv.ParseUint(rest, 10, 64); err == nil {
					out[seq] = true
				}
			}
		}
	})
	return out, err
}

// msgIDs calls fn with the Nats-Msg-Id of every message of stream (named
// name) on subject, reading headers only, up to the last message it held
// when asked.
func (r *rebuilder) msgIDs(ctx context.Context, stream jetstream.Stream, name, subject string, fn func(id string)) error {
	// How many match: none may, and then no message would come.
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return fmt.Errorf("meter: rebuild: stream %s: %w", name, err)
	}
	var total uint64
	for _, n := range info.State.Subjects {
		total += n
	}
	if total == 0 {
		return nil
	}
	cons, err := r.js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject}, DeliverPolicy: jetstream.DeliverAllPolicy, HeadersOnly: true,
	})
	if err != nil {
		return fmt.Errorf("meter: rebuild: consumer on %s: %w", name, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1000))
	if err != nil {
		return fmt.Errorf("meter: rebuild: read %s: %w", name, err)
	}
	defer it.Stop()
	last := info.State.LastSeq
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return fmt.Errorf("meter: rebuild: read %s: %w", name, err)
		}
		if id := msg.Headers().Get(events.MsgIDHeader); id != "" {
			fn(id)
		}
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("meter: rebuild: read %s: %w", name, err)
		}
		if md.Sequence.Stream >= last || md.NumPending == 0 {
			return nil
		}
	}
}
