package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MaxDeliveriesSubject is where the server announces that consumer of
// stream gave up on a message: delivered max_deliver times, never acked.
// The server only announces it; the message stays in the stream, and no
// consumer is handed it again.
func MaxDeliveriesSubject(stream, consumer string) string {
	return "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + stream + "." + consumer
}

// maxDeliveriesAdvisory is the part of the server's advisory
// (io.nats.jetstream.advisory.v1.max_deliver) that names the message.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// MaxDeliveries configures WatchMaxDeliveries.
type MaxDeliveries struct {
	// Stream and Consumer name the durable consumer watched.
	Stream, Consumer string
	// DeadLetters says where the message goes (Subject; Counted is told
	// the kind "max_deliver").
	DeadLetters *DeadLetters
	// Counted, when set, is told each advisory's outcome: dead_lettered
	// or failed (the message could not be read or stored; it stays in
	// its stream, and the log names its sequence).
	Counted func(outcome string)
	// Retries is how often storing a dead letter is tried again, a
	// second apart and doubling (default 5: about half a minute).
	Retries int
}

// WatchMaxDeliveries dead-letters every message the consumer gives up on
// so that none is dropped silently: it listens to the server's advisory
// in a queue group (one replica handles each), reads the message by its
// stream sequence and stores it in the dead letters with the reason in
// Allot-Error and the id dead.<stream>.<consumer>.<seq>, so that the
// dead-letter stream keeps one copy even if two replicas got the
// advisory. stop unsubscribes.
func WatchMaxDeliveries(js jetstream.JetStream, cfg MaxDeliveries, log *slog.Logger) (stop func(), err error) {
	if js == nil || cfg.DeadLetters == nil || cfg.DeadLetters.Subject == nil || cfg.Stream == "" || cfg.Consumer == "" {
		return nil, errors.New("service: max deliveries: JetStream, a stream, a consumer and dead letters with a subject are required")
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	log = orDiscard(log).With("consumer", cfg.Consumer, "stream", cfg.Stream)
	w := &maxDeliveries{js: js, cfg: cfg, log: log}
	subject := MaxDeliveriesSubject(cfg.Stream, cfg.Consumer)
	sub, err := js.Conn().QueueSubscribe(subject, "allot-max-deliveries-"+cfg.Consumer, w.handle)
	if err != nil {
		return nil, fmt.Errorf("service: max deliveries: subscribe %s: %w", subject, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

type maxDeliveries struct {
	js  jetstream.JetStream
	cfg MaxDeliveries
	log *slog.Logger
}

func (w *maxDeliveries) handle(msg *nats.Msg) {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(msg.Data, &adv); err != nil || adv.StreamSeq == 0 {
		w.log.Error("max deliveries advisory not understood; a message was given up on and is not dead-lettered", "advisory", string(msg.Data), "err", err)
		w.count("failed")
		return
	}
	reason := fmt.Sprintf("max_deliver: consumer %s was handed it %d times and never finished it (stream %s seq %d); it is no longer delivered",
		w.cfg.Consumer, adv.Deliveries, w.cfg.Stream, adv.StreamSeq)
	delay := time.Second
	var err error
	for try := 0; try <= w.cfg.Retries; try++ {
		if try > 0 {
			time.Sleep(delay)
			delay *= 2
		}
		if err = w.deadLetter(adv.StreamSeq, reason); err == nil || errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
	}
	if err != nil {
		w.log.Error("a message given up on could not be dead-lettered; it stays in its stream", "seq", adv.StreamSeq, "deliveries", adv.Deliveries, "err", err)
		w.count("failed")
		return
	}
	w.log.Warn("message given up on after max_deliver; dead-lettered", "seq", adv.StreamSeq, "deliveries", adv.Deliveries)
	w.count("dead_lettered")
	if c := w.cfg.DeadLetters.Counted; c != nil {
		c("max_deliver")
	}
}

// deadLetter reads message seq from the stream and stores its dead letter.
func (w *maxDeliveries) deadLetter(seq uint64, reason string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := w.js.Stream(ctx, w.cfg.Stream)
	if err != nil {
		return err
	}
	raw, err := st.GetMsg(ctx, seq)
	if err != nil {
		return fmt.Errorf("reading seq %d: %w", seq, err)
	}
	out := nats.NewMsg(w.cfg.DeadLetters.Subject(raw.Subject))
	out.Data = raw.Data
	out.Header.Set(events.ErrorHeader, reason)
	out.Header.Set("Allot-Original-Subject", raw.Subject)
	out.Header.Set("Allot-Original-Seq", strconv.FormatUint(seq, 10))
	out.Header.Set(events.MsgIDHeader, "dead."+w.cfg.Stream+"."+w.cfg.Consumer+"."+strconv.FormatUint(seq, 10))
	_, err = w.js.PublishMsg(ctx, out)
	return err
}

func (w *maxDeliveries) count(outcome string) {
	if w.cfg.Counted != nil {
		w.cfg.Counted(outcome)
	}
}
