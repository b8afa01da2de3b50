package meter

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/usage"
	"github.com/allot/allot/services/meter/internal/store"
	"github.com/nats-io/nats.go/jetstream"
)

// applier is the meter's handler of USAGE chunks (service.Consumer does
// the pulling, acking and dead-lettering): it decodes and checks each
// event, applies the good ones in one round trip, publishes the chunk's
// threshold notices together, and says what becomes of each message.
type applier struct {
	m         *Meter
	partition int // of the usage stream the chunks come from (0: not partitioned)
}

// refusal is why an event is dead-lettered, with a bounded metric label.
type refusal struct {
	kind   string // label of allot_meter_dead_letters_total
	reason string // the Allot-Error header
}

// item is one message on its way through a chunk.
type item struct {
	msg         jetstream.Msg
	uid         string
	op          store.Op
	refuse      *refusal
	redelivered bool   // the server had delivered it before
	delivery    uint64 // the consumer's delivery sequence (0: unknown)
}

// HandleChunk implements service.ChunkHandler. A Redis failure returns
// the error: the consumer then dead-letters the refused events (they do
// not depend on Redis), naks the rest with a growing delay and pauses
// until Redis answers.
func (a applier) HandleChunk(ctx context.Context, msgs []jetstream.Msg) ([]service.Outcome, error) {
	return a.PrepareChunk(msgs)(ctx)
}

// PrepareChunk implements service.ChunkPreparer: the decoding and checking
// of a chunk's events, which needs neither Redis nor the chunks before,
// runs while the chunk before is applied; what it returns applies them.
func (a applier) PrepareChunk(msgs []jetstream.Msg) func(ctx context.Context) ([]service.Outcome, error) {
	m := a.m
	items := make([]item, len(msgs))
	out := make([]service.Outcome, len(msgs))
	var ops []store.Op
	var opItems []int
	redelivered := 0
	for i, msg := range msgs {
		items[i] = a.parse(msg)
		if items[i].redelivered {
			redelivered++
		}
		if r := items[i].refuse; r != nil {
			out[i] = service.Dead(r.kind, r.reason)
			continue
		}
		op := items[i].op
		// Delivered right after the op before (a chunk is of one
		// partition), both for the first time: no message of the
		// partition lies between them.
		op.Follows = len(opItems) > 0 && opItems[len(opItems)-1] == i-1 && follows(items[i-1], items[i])
		ops = append(ops, op)
		opItems = append(opItems, i)
	}
	m.metrics.redelivered.Add(float64(redelivered))
	covered := m.refusedTop(items)
	var chunk *store.Chunk
	if len(ops) > 0 {
		chunk = m.store.PrepareApply(ops, covered)
	}
	return func(ctx context.Context) ([]service.Outcome, error) {
		return a.apply(ctx, items, out, chunk, opItems, covered)
	}
}

// apply applies a prepared chunk (items[opItems[j]] holds its op j; nil
// when every event was refused) in one round trip, publishes the chunk's
// threshold notices together and fills in out, which holds the refusals
// already.
func (a applier) apply(ctx context.Context, items []item, out []service.Outcome, chunk *store.Chunk, opItems []int, covered uint64) ([]service.Outcome, error) {
	m := a.m
	if m.lost.Load() {
		// Redis lost the state: wait (nak, pause until Ready) for the
		// rebuild rather than apply into nothing.
		return make([]service.Outcome, len(items)), errRebuilding
	}
	if chunk == nil {
		m.raiseOverRefused(ctx, covered, items, out)
		return out, nil
	}
	start := time.Now()
	// The apply call raises the marker over the refused events too.
	results, err := m.store.ApplyPrepared(ctx, chunk)
	m.metrics.applySeconds.Observe(time.Since(start).Seconds())
	if err != nil && covered > 0 {
		// The marker was not raised over them: redeliver them, do not
		// ack them now.
		for i, it := range items {
			if it.refuse != nil {
				out[i] = service.Retry(time.Second, "epoch marker not raised over a refused event")
			}
		}
	}
	if err != nil {
		if isLost(err) {
			m.setLost(true)
		} else {
			m.metrics.redisErrors.Inc()
		}
		return out, err
	}
	var batches []noticeBatch
	var batchItems []int
	var applied, duplicates int
	for j, res := range results {
		i := opItems[j]
		switch {
		case res.Err != nil:
			r := applyRefusal(items[i].op, res.Err)
			out[i] = service.Dead(r.kind, r.reason)
		case res.Applied:
			applied++
		default:
			duplicates++
		}
		if len(res.Notices) > 0 {
			it := &items[i]
			batches = append(batches, noticeBatch{it.uid, it.op.Metric, it.op.Config, res.Notices})
			batchItems = append(batchItems, i)
		}
	}
	m.metrics.events.WithLabelValues("applied").Add(float64(applied))
	if a.partition >= 0 && a.partition < len(m.metrics.partitionApplied) {
		m.metrics.partitionApplied[a.partition].Add(float64(applied))
	}
	m.metrics.events.WithLabelValues("duplicate").Add(float64(duplicates))
	// Every notice of the chunk at once: one wait for the acks, one round
	// trip to clear them.
	for j, err := range m.publishNotices(ctx, batches) {
		if err != nil {
			// Applied, but its notice is not out: redeliver it. The
			// redelivery is a duplicate that returns the notice again.
			i := batchItems[j]
			m.log.Warn("notice not published; event will be redelivered", "uid", items[i].uid, "err", err)
			out[i] = service.Retry(time.Second, "notice not published")
		}
	}
	return out, nil
}

// refusedTop is the highest stream sequence of the chunk's events
// refused before the apply script, which are acked without it: the epoch
// marker must cover them, or the next check would take the state for an
// older one (checkEpoch). 0 when none is, or the marker does not follow
// the state.
func (m *Meter) refusedTop(items []item) uint64 {
	if !m.store.TracksSeq() {
		return 0
	}
	var top uint64
	for _, it := range items {
		if it.refuse == nil {
			continue
		}
		if md, err := it.msg.Metadata(); err == nil {
			top = max(top, md.Sequence.Stream)
		}
	}
	return top
}

// raiseOverRefused raises the marker over a chunk of refused events only
// (a chunk with events to apply does it in the same call). If it fails
// they are retried, not acked.
func (m *Meter) raiseOverRefused(ctx context.Context, top uint64, items []item, out []service.Outcome) {
	if top == 0 {
		return
	}
	if err := m.store.RaiseEpoch(ctx, top); err != nil {
		m.metrics.redisErrors.Inc()
		for i, it := range items {
			if it.refuse != nil {
				out[i] = service.Retry(time.Second, "epoch marker not raised over a refused event")
			}
		}
	}
}

// deadCounted counts a stored dead letter.
func (m *Meter) deadCounted(kind string) {
	m.metrics.events.WithLabelValues("dead").Inc()
	m.metrics.dead.WithLabelValues(kind).Inc()
}

// parse decodes and checks one message against the contract and the
// metric's declaration, and builds its Op, or says why it is refused.
func (a applier) parse(msg jetstream.Msg) item {
	m := a.m
	it := item{msg: msg}
	md, mdErr := msg.Metadata()
	if mdErr == nil {
		it.redelivered = md.NumDelivered > 1
		it.delivery = md.Sequence.Consumer
	}
	refuse := func(kind, format string, args ...any) item {
		it.refuse = &refusal{kind, fmt.Sprintf(format, args...)}
		return it
	}
	uid, err := m.subj.ParseUsage(msg.Subject())
	if err != nil {
		return refuse("subject", "%v", err)
	}
	it.uid = uid
	if n := len(msg.Data()); n > events.DefaultMaxEventBytes {
		return refuse("oversized", "event: must be at most %d bytes (got %d)", events.DefaultMaxEventBytes, n)
	}
	ev, err := events.Decode(msg.Data(), events.DefaultMaxEventBytes)
	if err != nil {
		return refuse("invalid", "%v", err)
	}
	if err := ev.CheckSubject(uid); err != nil {
		return refuse("subject", "%v", err)
	}
	mc, ok := m.cfg.Usage.Metric(ev.Data.Metric)
	if !ok {
		return refuse("unknown_metric", "data.metric: unknown metric %q", ev.Data.Metric)
	}
	if ev.Data.Value < 0 && mc.Style != usage.StyleGauge {
		return refuse("value", "data.value: must be a number from 0 to 1e15 for a %s (got %s)", mc.Style, strconv.FormatFloat(ev.Data.Value, 'f', -1, 64))
	}
	names := make([]string, 0, len(ev.Data.Labels))
	for name := range ev.Data.Labels {
		if !mc.AllowsLabel(name) {
			return refuse("label", "data.labels.%s: not declared for metric %s", name, ev.Data.Metric)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	if mc.Scope == usage.ScopeInstance && !events.IsToken(ev.Source) {
		return refuse("invalid", "source: must be a token for the instance-scoped metric %s (got %q)", ev.Data.Metric, ev.Source)
	}
	limit, _ := m.cfg.Usage.DefaultGrant(ev.Data.Metric)
	var at time.Time
	var seq uint64
	if mdErr == nil {
		// The stream's clock: one for every replica, and the same when
		// the stream is replayed (rebuild.go).
		at, seq = md.Timestamp, md.Sequence.Stream
	}
	it.op = store.Op{
		ID:     ev.ID,
		UID:    uid,
		Source: ev.Source,
		Metric: ev.Data.Metric,
		Config: mc,
		Limit:  limit,
		Value:  ev.Data.Value,
		Field:  keys.LabelSet(names, ev.Data.Labels),
		At:     at,
		Seq:    seq,
	}
	if p, ok := m.subj.UsagePartition(msg.Subject()); ok {
		it.op.Partition = p // a.partition's, or a rebuild's, which reads them all
	}
	return it
}

// follows reports whether b is the message of its partition right after
// a's: both first deliveries, one after the other (the consumer delivers
// new messages in stream order). A redelivery may come from anywhere.
func follows(a, b item) bool {
	return !a.redelivered && !b.redelivered && a.delivery > 0 && b.delivery == a.delivery+1
}

// applyRefusal is why the store refused op: a sum past the largest
// number kept, or a script error.
func applyRefusal(op store.Op, err error) *refusal {
	var rerr *store.RangeError
	if !errors.As(err, &rerr) {
		return &refusal{"apply", err.Error()}
	}
	what := fmt.Sprintf("the used of grant %s", op.Metric)
	if op.Config.Style != usage.StyleGrant {
		what = fmt.Sprintf("%s %s{%s}", op.Config.Style, op.Metric, op.Field)
	}
	return &refusal{"range", fmt.Sprintf("data.value: adding %s to %s, which holds %s, would pass 1e15, the largest number allot keeps; nothing was counted",
		rerr.Value, what, rerr.Held)}
}
