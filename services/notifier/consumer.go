package notifier

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/hibiken/asynq"
	"github.com/nats-io/nats.go/jetstream"
)

// consumer moves NOTIFY messages into asynq tasks.
type consumer struct {
	n     *Notifier
	cons  jetstream.Consumer
	ctx   jetstream.MessagesContext
	wg    sync.WaitGroup
	watch func() // stops dead-lettering what the server gives up on
}

func startConsumer(ctx context.Context, n *Notifier) (*consumer, error) {
	js, err := jetstream.New(n.nc)
	if err != nil {
		return nil, fmt.Errorf("notifier: %w", err)
	}
	cfg := n.cfg
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.Streams.Notify, jetstream.ConsumerConfig{
		Durable:     cfg.Notifier.Durable,
		Description: "allot notifier: turns notices into asynq tasks",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     cfg.Notifier.AckWait,
		// Past it the server gives up on a notice; the watcher below
		// dead-letters it, so none is dropped silently.
		MaxDeliver:    cfg.Notifier.MaxDeliver,
		MaxAckPending: 1000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("notifier: consumer %s on %s: %w", cfg.Notifier.Durable, cfg.Streams.Notify, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(100), jetstream.PullExpiry(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("notifier: consume %s: %w", cfg.Streams.Notify, err)
	}
	watch, err := service.WatchMaxDeliveries(js, service.MaxDeliveries{
		Stream: cfg.Streams.Notify, Consumer: cfg.Notifier.Durable,
		DeadLetters: &service.DeadLetters{Subject: n.deadSubject},
		Counted: func(outcome string) {
			n.metrics.notices.WithLabelValues("any", "given_up_"+outcome).Inc()
		},
	}, n.log)
	if err != nil {
		it.Stop()
		return nil, fmt.Errorf("notifier: %w", err)
	}
	c := &consumer{n: n, cons: cons, ctx: it, watch: watch}
	c.wg.Go(func() { c.loop(ctx) })
	return c, nil
}

func (c *consumer) stop() {
	c.ctx.Drain()
	c.wg.Wait()
	c.watch()
}

// deadSubject is where a notice the server gave up on goes: the dead
// letters of its uid (usage.dead.<uid>), beside the refused events, with
// its own subject in Allot-Original-Subject; usage.dead._ without a uid.
func (n *Notifier) deadSubject(subject string) string {
	uid := subject[strings.LastIndexByte(subject, '.')+1:]
	if n.cfg.Subjects.ValidateUID("uid", uid) != nil {
		uid = "_"
	}
	return n.cfg.Subjects.DeadFor(uid)
}

func (c *consumer) loop(ctx context.Context) {
	for {
		msg, err := c.ctx.Next()
		switch {
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			return
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			c.n.log.Warn("reading notices", "err", err)
			continue
		}
		c.handle(ctx, msg)
	}
}

// handle turns one message into a task and acks it once the task is
// stored (or was already).
func (c *consumer) handle(ctx context.Context, msg jetstream.Msg) {
	n := c.n
	kind, typ, id, notice := c.classify(msg)
	var task *asynq.Task
	var err error
	switch typ {
	case TypeConfirmEmail:
		task, err = n.NewConfirmTask(notice, id)
	case TypeUsageEmail:
		task, err = n.NewUsageTask(notice, id)
	default:
		err = fmt.Errorf("subject %s is neither %s nor %s", msg.Subject(), n.cfg.Subjects.NotifyUsage("*"), n.cfg.Subjects.NotifyConfirm("*"))
	}
	if err != nil {
		// Not a notice this notifier can make a task of: nothing would
		// ever change that, so it is acked and counted, not redelivered.
		n.metrics.notices.WithLabelValues(kind, "dropped").Inc()
		n.log.Error("dropping a notice", "subject", msg.Subject(), "err", err)
		_ = msg.Ack()
		return
	}
	_, err = n.queue.EnqueueContext(ctx, task)
	switch {
	case err == nil:
		n.metrics.notices.WithLabelValues(kind, "enqueued").Inc()
	case errors.Is(err, asynq.ErrTaskIDConflict):
		n.metrics.notices.WithLabelValues(kind, "duplicate").Inc()
		n.log.Debug("notice already has its task", "subject", msg.Subject(), "task", id)
	default:
		n.metrics.notices.WithLabelValues(kind, "retried").Inc()
		n.log.Warn("cannot store the notice's task; it will be redelivered", "subject", msg.Subject(), "err", err)
		_ = msg.NakWithDelay(nakDelay(msg))
		return
	}
	if err := msg.Ack(); err != nil {
		// Redelivered later; the task id keeps it from running twice.
		n.log.Warn("ack", "subject", msg.Subject(), "err", err)
	}
}

// nakDelay is the pause before a notice whose task could not be stored
// is handed out again: 1s, doubling with each delivery up to a minute, so
// max_deliver deliveries outlast hours of Redis away, not minutes.
func nakDelay(msg jetstream.Msg) time.Duration {
	md, err := msg.Metadata()
	if err != nil || md.NumDelivered < 1 {
		return time.Second
	}
	return min(time.Second<<min(md.NumDelivered-1, 6), time.Minute)
}

// classify says what a message is and names its task.
func (c *consumer) classify(msg jetstream.Msg) (kind, typ, id string, notice Notice) {
	s := c.n.cfg.Subjects
	subject := msg.Subject()
	notice = Notice{Subject: subject, Body: msg.Data(), Enqueued: c.n.now()}
	var seq uint64
	if md, err := msg.Metadata(); err == nil {
		notice.Published = md.Timestamp
		seq = md.Sequence.Stream
	}
	fallback := "nats:" + c.n.cfg.Streams.Notify + ":" + strconv.FormatUint(seq, 10)
	switch {
	case strings.HasPrefix(subject, s.Notify+".confirm."):
		kind, typ = "confirm", TypeConfirmEmail
	case strings.HasPrefix(subject, s.Notify+".usage."):
		kind, typ = "usage", TypeUsageEmail
	default:
		return "unknown", "", fallback, notice
	}
	// The uid is part of the id: a message for another uid that reuses an
	// id cannot suppress this one.
	uid := subject[strings.LastIndexByte(subject, '.')+1:]
	if id, ok := bodyID(msg.Data()); ok && events.IsToken(uid) {
		return kind, typ, kind + ":" + uid + ":" + id, notice
	}
	return kind, typ, fallback, notice
}
