package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Outcome is what becomes of one message of a chunk: acked (the zero
// value), naked for redelivery after a delay, or dead-lettered and acked.
type Outcome struct {
	verdict verdict
	delay   time.Duration
	kind    string
	reason  string
}

type verdict uint8

const (
	verdictAck verdict = iota
	verdictRetry
	verdictDead
)

// Ack is the outcome of a message that is done with.
func Ack() Outcome { return Outcome{} }

// Retry naks the message so that it is delivered again after delay. reason
// is logged.
func Retry(delay time.Duration, reason string) Outcome {
	return Outcome{verdict: verdictRetry, delay: delay, reason: reason}
}

// Dead marks a message that retrying will not help: it is stored in the
// dead letters with reason (the Allot-Error header), counted under kind (a
// bounded label), and acked. A consumer without dead letters only acks it.
func Dead(kind, reason string) Outcome {
	return Outcome{verdict: verdictDead, kind: kind, reason: reason}
}

// IsDead reports whether o is a Dead outcome.
func (o Outcome) IsDead() bool { return o.verdict == verdictDead }

// ChunkHandler handles the messages of one chunk, in stream order, and
// returns one outcome per message. An error says the backend is away and
// the whole chunk could not be handled: the consumer holds the chunk
// (nothing after it is handled meanwhile), pauses until Ready answers and
// hands the same chunk over again, up to HeldTries times in all; only
// then does it dead-letter the messages marked Dead (they do not depend
// on the backend), nak the rest with a delay that grows up to
// MaxRetryDelay, and go on. ctx ends half an AckWait after the chunk was
// handed over.
type ChunkHandler interface {
	HandleChunk(ctx context.Context, msgs []jetstream.Msg) ([]Outcome, error)
}

// ChunkHandlerFunc adapts a function to ChunkHandler.
type ChunkHandlerFunc func(ctx context.Context, msgs []jetstream.Msg) ([]Outcome, error)

// HandleChunk calls f.
func (f ChunkHandlerFunc) HandleChunk(ctx context.Context, msgs []jetstream.Msg) ([]Outcome, error) {
	return f(ctx, msgs)
}

// ChunkPreparer is a ChunkHandler that can do the part of a chunk's work
// that depends on no earlier chunk (decoding, checking against its
// configuration) ahead of time. The consumer then prepares the next chunk
// in a goroutine of its own while the one before is handled, so that
// work overlaps the backend's, and runs what PrepareChunk returns, in
// stream order, in place of HandleChunk: with the same contract (one
// outcome per message, an error when the backend is away).
type ChunkPreparer interface {
	ChunkHandler
	PrepareChunk(msgs []jetstream.Msg) func(ctx context.Context) ([]Outcome, error)
}

// DeadLetters says where a consumer stores the messages it refuses.
type DeadLetters struct {
	// Subject names the dead letter of a message that came on subject.
	Subject func(subject string) string
	// Stream is the name of the stream consumed, for the dead letter's
	// message id ("dead.<stream>.<seq>"), so a refusal redelivered before
	// its ack is stored once.
	Stream string
	// Counted, when set, is told each stored dead letter's kind.
	Counted func(kind string)
}

// ConsumerConfig tunes a Consumer.
type ConsumerConfig struct {
	// Name is the consumer's name in logs.
	Name string
	// Batch is the most messages handed over in one chunk (default 500).
	// The client keeps up to two batches coming while a chunk is handled.
	Batch int
	// PullExpiry is how long one pull request stays open at the server
	// (at least 1s, default 30s; with a PriorityGroup at most 1s); its
	// heartbeat is half of it. A short one
	// on a busy machine misses heartbeats, and each miss re-pulls while
	// the last pull's messages still arrive.
	PullExpiry time.Duration
	// MaxAckPending is the consumer's own max_ack_pending: the server
	// hands out no more unacked messages than that, so a buffer of that
	// size between the client and the chunks never fills, and the client
	// never drops a message because a chunk is slow (default 20000).
	MaxAckPending int
	// AckWait is the consumer's ack wait; a chunk gets half of it.
	AckWait time.Duration
	// RetryDelay is the first pause after a handler error (default 1s);
	// each further error doubles it, up to MaxRetryDelay (default 1m).
	RetryDelay, MaxRetryDelay time.Duration
	// Ready is asked, every pause, whether the backend answers again; nil
	// resumes after one pause.
	Ready func(ctx context.Context) error
	// DeadLetters, when set, stores refused messages; otherwise they are
	// only acked (another worker on the stream dead-letters them).
	DeadLetters *DeadLetters
	// Metrics, when set, is where the consumer's series are counted.
	Metrics *ConsumerMetrics
	// PriorityGroup, when set, pulls as a member of that group of a pinned
	// consumer (jetstream.PriorityPolicyPinned, see PinnedConsumer): the
	// server hands messages to one client at a time, so of several
	// replicas one handles chunks, in stream order, and the others stand
	// by until it stops pulling for the consumer's PinnedTTL. Such a
	// consumer pulls one request at a time, so stopped, it sends no more,
	// waits for the open one to end, drains, and gives its pin up, and a
	// standby takes over at once; unless messages handed to it are still
	// unacked: then it keeps the pin, so they are redelivered to the next
	// client, before anything after them, once the PinnedTTL has run out.
	PriorityGroup string
	// PendingFromInfo leaves <prefix>_consumer_pending to the caller
	// (ConsumerMetrics.SetPending), as when several consumers share the
	// metrics and the gauge is their sum; otherwise each chunk sets it.
	PendingFromInfo bool
}

// HeldTries is how often a chunk that meets a backend error is handed to
// the handler, each time once Ready has answered, before the consumer
// naks it and goes on: enough to ride out an outage of any length in
// stream order (the pause waits for Ready), not so many that a chunk
// failing with the backend up blocks the stream.
const HeldTries = 3

// PinnedConsumer sets cfg up as a pinned consumer of one priority group,
// group: one client at a time gets its messages. A client that stops
// pulling loses the pin after ttl; ttl at least the pull expiry plus the
// ack wait lets what a crashed client held be redelivered before anything
// after it goes to the next one, so a uid's events stay in stream order
// across the handover.
func PinnedConsumer(cfg jetstream.ConsumerConfig, group string, ttl time.Duration) jetstream.ConsumerConfig {
	cfg.PriorityPolicy = jetstream.PriorityPolicyPinned
	cfg.PriorityGroups = []string{group}
	cfg.PinnedTTL = ttl
	return cfg
}

func (c ConsumerConfig) withDefaults() ConsumerConfig {
	if c.Batch <= 0 {
		c.Batch = 500
	}
	if c.PullExpiry <= 0 {
		c.PullExpiry = 30 * time.Second
	}
	c.PullExpiry = max(c.PullExpiry, time.Second)
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 20000
	}
	c.MaxAckPending = max(c.MaxAckPending, c.Batch)
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.RetryDelay <= 0 {
		c.RetryDelay = time.Second
	}
	if c.MaxRetryDelay <= 0 {
		c.MaxRetryDelay = time.Minute
	}
	c.MaxRetryDelay = max(c.MaxRetryDelay, c.RetryDelay)
	return c
}

// Consumer is the one way allot's workers read a stream: it pulls
// continuously from a durable pull consumer, hands what has arrived to its
// handler in chunks of up to Batch in arrival order (one chunk at a time,
// so a gauge's last value stays last), and then acks, naks or
// dead-letters each message as the handler said. While the handler's
// backend is away it pauses; when stopped, it drains: what the client
// already holds is handled and acked before Run returns.
type Consumer struct {
	cons    jetstream.Consumer
	js      jetstream.JetStream
	h       ChunkHandler
	cfg     ConsumerConfig
	log     *slog.Logger
	backoff time.Duration                   // current pause after a handler error
	pin     atomic.Pointer[string]          // the pin id of this client's pulls (PriorityGroup)
	ahead   atomic.Pointer[[]jetstream.Msg] // the chunk prepared, not yet handed over
}

// NewConsumer returns a consumer of cons for h. js is the JetStream
// context cons came from: it publishes the dead letters, and its
// connection is flushed when the consumer stops, so the last acks reach
// the server before Run returns.
func NewConsumer(cons jetstream.Consumer, js jetstream.JetStream, h ChunkHandler, cfg ConsumerConfig, log *slog.Logger) (*Consumer, error) {
	if cons == nil || js == nil || h == nil {
		return nil, errors.New("service: consumer: a JetStream consumer, its JetStream context and a handler are required")
	}
	if cfg.DeadLetters != nil && cfg.DeadLetters.Subject == nil {
		return nil, errors.New("service: consumer: dead letters need a subject")
	}
	return &Consumer{cons: cons, js: js, h: h, cfg: cfg.withDefaults(), log: orDiscard(log).With("consumer", cfg.Name)}, nil
}

// Start runs the consumer in the background until ctx ends or the
// returned stop is called; stop waits for the drain, or for its own ctx.
func (c *Consumer) Start(ctx context.Context) (stop func(context.Context) error) {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(rctx)
	}()
	context.AfterFunc(ctx, cancel)
	return func(sctx context.Context) error {
		cancel()
		select {
		case <-done:
			return nil
		case <-sctx.Done():
			return fmt.Errorf("service: consumer %s still busy at the shutdown deadline: %w", c.cfg.Name, sctx.Err())
		}
	}
}

// Run pulls and handles chunks until ctx ends, then drains and returns.
func (c *Consumer) Run(ctx context.Context) {
	if c.cfg.PriorityGroup != "" {
		c.runFetching(ctx)
	} else {
		c.runIterating(ctx)
	}
	// Acks are sent without waiting for the server: make sure the last
	// ones are out before saying the drain is done.
	fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.js.Conn().FlushWithContext(fctx); err != nil {
		c.log.Warn("flushing the last acks; those not sent will be redelivered", "err", err)
	}
	if c.cfg.PriorityGroup != "" {
		c.unpin(fctx)
	}
}

// runIterating pulls continuously with the client's message iterator
// (overlapping pulls, re-pulled before they run out), and on ctx's end
// drains it: what arrived is handled, then the subscription goes.
func (c *Consumer) runIterating(ctx context.Context) {
	for ctx.Err() == nil {
		it, err := c.cons.Messages(jetstream.PullMaxMessages(2*c.cfg.Batch), jetstream.PullExpiry(c.cfg.PullExpiry))
		if err != nil {
			c.log.Warn("cannot consume; retrying", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		stop := context.AfterFunc(ctx, it.Drain)
		in := newInbox()
		var reader sync.WaitGroup
		reader.Go(func() {
			defer in.close()
			for {
				msg, err := it.Next()
				if err != nil {
					if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
						return
					}
					// A missed heartbeat or a deleted consumer: the
					// iterator recovers or ends; don't spin while it does.
					c.log.Warn("consuming", "err", err)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				in.push(msg)
			}
		})
		c.chunks(ctx, in)
		stop()
		it.Stop()
		reader.Wait()
	}
}

// pinnedPull is how long one pull of a pinned consumer stays open at the
// server, in place of PullExpiry (never shorter): a stopping client waits
// that long at most for its last pull to end on an idle stream.
const pinnedPull = time.Second

// runFetching pulls a pinned consumer one bounded request at a time, and
// on ctx's end sends no more but waits for the one open to end (its
// batch filled or its expiry) and handles what it brought. So when the
// client gives its pin up no pull of its is left open: an iterator's
// drain ends the subscription with its pull still open, and on a NATS
// cluster the node leading the consumer, which learns late that the
// subscription is gone, goes on handing it messages that never arrive
// and come back only after their ack wait (the next client would have
// applied later ones by then). One request at a time also keeps the
// deliveries in order: the server cycles between a client's open
// requests.
func (c *Consumer) runFetching(ctx context.Context) {
	in := newInbox()
	var reader sync.WaitGroup
	reader.Go(func() {
		defer in.close()
		opts := []jetstream.FetchOpt{jetstream.FetchMaxWait(pinnedPull), jetstream.FetchPriorityGroup(c.cfg.PriorityGroup)}
		for ctx.Err() == nil {
			batch, err := c.cons.Fetch(2*c.cfg.Batch, opts...)
			if err != nil {
				c.log.Warn("cannot pull; retrying", "err", err)
				sleep(ctx, time.Second)
				continue
			}
			for msg := range batch.Messages() {
				c.notePin(msg)
				in.push(msg)
			}
			switch err := batch.Error(); {
			case errors.Is(err, jetstream.ErrPinIDMismatch):
				// The pull named a pin this client held before and has
				// given up (or lost): the next one, without it, stands by.
				c.log.Debug("the pin has moved on; standing by", "err", err)
			case err != nil:
				// The consumer was deleted or the connection is down:
				// don't spin while that lasts.
				c.log.Warn("pulling", "err", err)
				sleep(ctx, 100*time.Millisecond)
			}
		}
	})
	c.chunks(ctx, in)
	reader.Wait()
}

// HoldsPin reports whether this client holds the pin of its priority
// group, as info (the consumer's, read lately) shows it: false before the
// first message handed to it under a pin, and without a PriorityGroup.
func (c *Consumer) HoldsPin(info *jetstream.ConsumerInfo) bool {
	mine := c.pin.Load()
	if mine == nil || info == nil || c.cfg.PriorityGroup == "" {
		return false
	}
	for _, g := range info.PriorityGroups {
		if g.Group == c.cfg.PriorityGroup {
			return g.PinnedClientID == *mine
		}
	}
	return false
}

// notePin remembers the pin id the server gave this client's pulls.
func (c *Consumer) notePin(msg jetstream.Msg) {
	id := msg.Headers().Get(pinIDHeader)
	if id == "" {
		return
	}
	if mine := c.pin.Load(); mine == nil || *mine != id { // once per pin, not per message
		c.pin.Store(&id)
	}
}

// pinIDHeader carries, on each message of a pinned consumer, the id of
// the pin it was delivered under.
const pinIDHeader = "Nats-Pin-Id"

// unpin gives up the consumer's pin when this client still holds it, so a
// standby replica takes over now, not after the pinned TTL. Another
// client's pin is left alone: unpinning it would let a third client start
// while it still handles what it holds.
func (c *Consumer) unpin(ctx context.Context) {
	if c.pin.Load() == nil {
		return
	}
	info, err := c.settledInfo(ctx)
	if err != nil {
		c.log.Warn("reading the consumer to give up its pin; a standby takes over after the pinned TTL", "err", err)
		return
	}
	if !c.HoldsPin(info) {
		return
	}
	if info.NumAckPending > 0 {
		// Handed out and never received: the server sent them to a pull
		// of this client after it stopped (on a NATS cluster the node
		// leading the consumer learns late that the pull is gone). They
		// come back only after their ack wait, and a standby pinned now
		// would apply what follows them first. Keeping the pin, they go
		// to the next meter before anything after them, once the pinned
		// TTL (fetch_wait + ack_wait by default) has run out.
		c.log.Warn("events still on their way to this client: keeping the pin, so a standby takes over after the pinned TTL, with them first",
			"unacked", info.NumAckPending)
		return
	}
	stream, err := c.js.Stream(ctx, info.Stream)
	if err == nil {
		err = stream.UnpinConsumer(ctx, info.Name, c.cfg.PriorityGroup)
	}
	if err != nil {
		c.log.Warn("giving up the consumer's pin; a standby takes over after the pinned TTL", "err", err)
		return
	}
	c.log.Info("gave up the consumer's pin to a standby", "group", c.cfg.PriorityGroup)
}

// settledInfo reads the consumer's info once the acks this client sent
// have landed: until its unacked count is 0, or for up to a second.
func (c *Consumer) settledInfo(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	deadline := time.Now().Add(time.Second)
	for {
		info, err := c.cons.Info(ctx)
		if err != nil || info.NumAckPending == 0 || time.Now().After(deadline) {
			return info, err
		}
		sleep(ctx, 50*time.Millisecond)
	}
}

// chunks hands what comes into in over in chunks of whatever has arrived, up to a
// batch, pausing while the backend is away. A ChunkPreparer's next chunk
// is collected and prepared while the one before is handled.
func (c *Consumer) chunks(ctx context.Context, in *inbox) {
	if p, ok := c.h.(ChunkPreparer); ok {
		c.prepared(ctx, in, p)
		return
	}
	chunk := make([]jetstream.Msg, 0, c.cfg.Batch)
	for {
		msg, ok := in.next()
		if !ok {
			return
		}
		for c.backoff > 0 && ctx.Err() == nil {
			c.waitForBackend(ctx)
		}
		chunk = c.collect(append(chunk[:0], msg), in)
		c.handle(ctx, in, chunk, func(ctx context.Context) ([]Outcome, error) { return c.h.HandleChunk(ctx, chunk) })
	}
}

// collect adds to chunk what has arrived in in, up to a batch, without
// waiting.
func (c *Consumer) collect(chunk []jetstream.Msg, in *inbox) []jetstream.Msg {
	for len(chunk) < c.cfg.Batch {
		next, ok := in.tryNext()
		if !ok {
			break
		}
		chunk = append(chunk, next)
	}
	return chunk
}

// preparedChunk is a chunk and the rest of its handling.
type preparedChunk struct {
	msgs  []jetstream.Msg
	run   func(ctx context.Context) ([]Outcome, error)
	ahead *[]jetstream.Msg // what Consumer.ahead held while it waited
}

// prepared is chunks for a ChunkPreparer: one goroutine collects and
// prepares each chunk, at most one ahead of the chunk being handled,
// while this one handles them in order. It returns when the inbox is closed
// and empty and every chunk taken from it is settled.
func (c *Consumer) prepared(ctx context.Context, in *inbox, p ChunkPreparer) {
	ready := make(chan preparedChunk)
	go func() {
		defer close(ready)
		for {
			msg, ok := in.next()
			if !ok {
				return
			}
			chunk := c.collect(append(make([]jetstream.Msg, 0, c.cfg.Batch), msg), in)
			// Taken from the inbox, not yet handed over: a held chunk's
			// wait keeps it in progress too.
			c.ahead.Store(&chunk)
			ready <- preparedChunk{chunk, p.PrepareChunk(chunk), &chunk}
		}
	}()
	for pc := range ready {
		// The preparer may have stored the next one already.
		c.ahead.CompareAndSwap(pc.ahead, nil)
		for c.backoff > 0 && ctx.Err() == nil {
			c.waitForBackend(ctx)
		}
		c.handle(ctx, in, pc.msgs, pc.run)
	}
}

// handle has one chunk handled (run is HandleChunk, or what PrepareChunk
// returned) and settles every message. A chunk that meets a backend
// error is held (kept from redelivery) while the consumer waits for the
// backend, and handled again in place, up to HeldTries times: so an
// outage leaves the events in stream order, which a nak would not (the
// chunks after it would go first). Once ctx ends it is settled as it is.
func (c *Consumer) handle(ctx context.Context, in *inbox, msgs []jetstream.Msg, run func(ctx context.Context) ([]Outcome, error)) {
	if m := c.cfg.Metrics; m != nil {
		m.batchSize.Observe(float64(len(msgs)))
		if meta, err := msgs[len(msgs)-1].Metadata(); err == nil {
			if !c.cfg.PendingFromInfo {
				m.pending.Set(float64(meta.NumPending))
			}
			m.lag.Observe(max(time.Since(meta.Timestamp), 0).Seconds())
		}
	}
	outcomes, err := c.attempt(run)
	for tries := 1; err != nil && tries < HeldTries && ctx.Err() == nil; tries++ {
		c.backoff = c.nextBackoff()
		c.log.Warn("backend unavailable; holding the chunk to handle it again", "messages", len(msgs), "retry_in", c.backoff, "err", err)
		if c.hold(ctx, in, msgs); ctx.Err() != nil {
			break
		}
		outcomes, err = c.attempt(run)
	}
	c.settle(msgs, outcomes, err)
}

// attempt runs a chunk's handling with half an ack wait to do it in.
func (c *Consumer) attempt(run func(ctx context.Context) ([]Outcome, error)) ([]Outcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.AckWait/2)
	defer cancel()
	return run(ctx)
}

// hold keeps msgs, the chunk prepared after it and everything in the
// inbox from being redelivered (in progress now, then every third of the
// ack wait) while it waits for the backend: the pause, then Ready, again
// until Ready answers or ctx ends. So an outage of any length ends with
// nothing redelivered: the messages are handled in the order they came.
func (c *Consumer) hold(ctx context.Context, in *inbox, msgs []jetstream.Msg) {
	hctx, cancel := context.WithCancel(ctx)
	var keep sync.WaitGroup
	keep.Go(func() {
		t := time.NewTicker(c.cfg.AckWait / 3)
		defer t.Stop()
		// One not sent is redelivered: a duplicate, caught as any other.
		inProgress := func(m jetstream.Msg) { _ = m.InProgress() }
		for {
			for _, m := range msgs {
				inProgress(m)
			}
			if ahead := c.ahead.Load(); ahead != nil {
				for _, m := range *ahead {
					inProgress(m)
				}
			}
			for _, m := range in.snapshot() {
				inProgress(m)
			}
			select {
			case <-hctx.Done():
				return
			case <-t.C:
			}
		}
	})
	for c.backoff > 0 && ctx.Err() == nil {
		c.waitForBackend(ctx)
	}
	cancel()
	keep.Wait()
}

// settle acks, naks or dead-letters each message of a chunk as its
// handling said; err (the backend still away) naks all but the refusals.
func (c *Consumer) settle(msgs []jetstream.Msg, outcomes []Outcome, err error) {
	switch {
	case err != nil:
		c.backoff = c.nextBackoff()
		c.log.Warn("backend unavailable; messages will be redelivered", "messages", len(msgs), "retry_in", c.backoff, "err", err)
	case len(outcomes) != len(msgs):
		// A handler bug, never the messages' fault: redeliver them all.
		c.log.Error("handler returned the wrong number of outcomes; redelivering the chunk", "messages", len(msgs), "outcomes", len(outcomes))
		outcomes, err = nil, errors.New("wrong number of outcomes")
		c.backoff = c.nextBackoff()
	default:
		c.backoff = 0
	}
	if len(outcomes) != len(msgs) {
		outcomes = make([]Outcome, len(msgs))
	}
	if err != nil {
		// Only the refusals are settled; everything else waits for the
		// backend.
		for i := range outcomes {
			if !outcomes[i].IsDead() {
				outcomes[i] = Retry(c.backoff, "backend unavailable")
			}
		}
	}
	wait := c.cfg.AckWait / 2
	if err != nil {
		wait = 5 * time.Second // the pause must not eat into the dead letters' time
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c.deadLetter(ctx, msgs, outcomes)
	for i, msg := range msgs {
		o := outcomes[i]
		switch o.verdict {
		case verdictRetry:
			if c.cfg.Metrics != nil {
				c.cfg.Metrics.retries.Inc()
			}
			if err := msg.NakWithDelay(o.delay); err != nil {
				c.log.Warn("nak failed; the message will be redelivered after the ack wait", "err", err)
			}
		default:
			if err := msg.Ack(); err != nil {
				c.log.Warn("ack failed; the message will be redelivered and handled once", "err", err)
			}
		}
	}
}

// deadLetter stores the Dead messages of a chunk in the dead letters, all
// at once, and waits for the acks; one whose dead letter is not stored
// becomes a Retry.
func (c *Consumer) deadLetter(ctx context.Context, msgs []jetstream.Msg, outcomes []Outcome) {
	var which []int
	for i, o := range outcomes {
		if o.IsDead() {
			which = append(which, i)
		}
	}
	if len(which) == 0 {
		return
	}
	dl := c.cfg.DeadLetters
	if dl == nil {
		return
	}
	letters := make([]*nats.Msg, len(which))
	for j, i := range which {
		letters[j] = deadLetterMsg(dl, msgs[i], outcomes[i].reason)
	}
	for j, err := range PublishAll(ctx, c.js, letters) {
		i := which[j]
		if err != nil {
			c.log.Warn("dead letter not stored; the message will be redelivered", "subject", msgs[i].Subject(), "err", err)
			outcomes[i] = Retry(time.Second, "dead letter not stored")
			continue
		}
		if dl.Counted != nil {
			dl.Counted(outcomes[i].kind)
		}
		c.log.Info("message refused", "subject", msgs[i].Subject(), "reason", outcomes[i].reason)
	}
}

// deadLetterMsg is the dead letter of msg: its body, the reason in
// Allot-Error, where it came from, and an id from its stream sequence.
func deadLetterMsg(dl *DeadLetters, msg jetstream.Msg, reason string) *nats.Msg {
	out := nats.NewMsg(dl.Subject(msg.Subject()))
	out.Data = msg.Data()
	out.Header.Set(events.ErrorHeader, reason)
	out.Header.Set("Allot-Original-Subject", msg.Subject())
	id := "dead." + msg.Subject()
	if meta, err := msg.Metadata(); err == nil {
		seq := strconv.FormatUint(meta.Sequence.Stream, 10)
		out.Header.Set("Allot-Original-Seq", seq)
		id = "dead." + dl.Stream + "." + seq
	}
	out.Header.Set(events.MsgIDHeader, id)
	return out
}

// PublishAll publishes msgs to their streams at once and waits for every
// ack (or ctx); it returns, per message, what kept it from being stored.
func PublishAll(ctx context.Context, js jetstream.JetStream, msgs []*nats.Msg) []error {
	errs := make([]error, len(msgs))
	acks := make([]jetstream.PubAckFuture, len(msgs))
	for i, msg := range msgs {
		acks[i], errs[i] = js.PublishMsgAsync(msg)
	}
	for i, ack := range acks {
		if errs[i] != nil {
			continue
		}
		select {
		case <-ack.Ok():
		case errs[i] = <-ack.Err():
		case <-ctx.Done():
			errs[i] = ctx.Err()
		}
	}
	return errs
}

func (c *Consumer) nextBackoff() time.Duration {
	if c.backoff == 0 {
		return c.cfg.RetryDelay
	}
	return min(2*c.backoff, c.cfg.MaxRetryDelay)
}

// waitForBackend pauses for the current backoff, then asks Ready.
func (c *Consumer) waitForBackend(ctx context.Context) {
	sleep(ctx, c.backoff)
	if ctx.Err() != nil {
		return
	}
	if c.cfg.Ready != nil {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := c.cfg.Ready(rctx); err != nil {
			if ctx.Err() == nil {
				c.backoff = c.nextBackoff()
			}
			return
		}
	}
	c.log.Info("backend is back; resuming")
	c.backoff = 0
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
