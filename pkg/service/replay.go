package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ReplayOptions says what Replay reads and how it reports.
type ReplayOptions struct {
	// Subject filters the stream; "" reads every subject.
	Subject string
	// From is the oldest message read, by the time the stream stored it;
	// zero reads the whole stream.
	From time.Time
	// Batch is the largest chunk handed over (default 500).
	Batch int
	// Progress, when set, is called at most once per ProgressEvery
	// (default 1 s), and once at the end.
	Progress      func(ReplayProgress)
	ProgressEvery time.Duration
}

// ReplayProgress is how far a replay has come.
type ReplayProgress struct {
	FirstSeq uint64 // the first stream sequence read
	Seq      uint64 // the last sequence handed over
	LastSeq  uint64 // the last sequence the replay will read
	Events   int64  // messages handed over so far
	Elapsed  time.Duration
}

// Rate is the messages handed over per second so far.
func (p ReplayProgress) Rate() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Events) / p.Elapsed.Seconds()
}

// Percent is how far Seq is from FirstSeq to LastSeq.
func (p ReplayProgress) Percent() float64 {
	if p.LastSeq <= p.FirstSeq {
		return 100
	}
	return 100 * float64(p.Seq-p.FirstSeq) / float64(p.LastSeq-p.FirstSeq)
}

// ReplayResult is what a replay read.
type ReplayResult struct {
	// FirstSeq and LastSeq are the sequences read (0, 0: none).
	FirstSeq, LastSeq uint64
	// UpTo is the stream's last sequence when the replay began: later
	// messages are not read (the live consumer has them).
	UpTo   uint64
	Events int64
	// Missing is set when the stream no longer holds every message asked
	// for (its oldest were removed by max_age or by hand): what came
	// before HeldSince cannot be replayed.
	Missing   bool
	HeldSince time.Time
}

// Replay reads the stream from opts.From up to the last message it holds
// when the replay begins, in stream order, with an ordered consumer of its
// own (never a service's durable one), and hands the messages to fn in
// chunks of up to opts.Batch: a chunk is what has arrived while fn worked
// on the previous one. It returns when fn has had the last message, fn
// fails, or ctx ends.
func Replay(ctx context.Context, js jetstream.JetStream, streamName string, opts ReplayOptions, fn func(context.Context, []jetstream.Msg) error) (ReplayResult, error) {
	var res ReplayResult
	stream, err := js.Stream(ctx, streamName)
	if err != nil {
		return res, fmt.Errorf("service: replay: stream %s: %w", streamName, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return res, fmt.Errorf("service: replay: stream %s: %w", streamName, err)
	}
	state := info.State
	res.UpTo = state.LastSeq
	if state.FirstSeq > 1 && (opts.From.IsZero() || opts.From.Before(state.FirstTime)) {
		res.Missing, res.HeldSince = true, state.FirstTime.UTC()
	}
	last, lastTime := state.LastSeq, state.LastTime
	if opts.Subject != "" {
		msg, err := stream.GetLastMsgForSubject(ctx, opts.Subject)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return res, nil
		}
		if err != nil {
			return res, fmt.Errorf("service: replay: last message of %s: %w", opts.Subject, err)
		}
		last, lastTime = msg.Sequence, msg.Time
	}
	if state.Msgs == 0 || last == 0 || (!opts.From.IsZero() && lastTime.Before(opts.From)) {
		return res, nil
	}
	occ := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if opts.Subject != "" {
		occ.FilterSubjects = []string{opts.Subject}
	}
	if !opts.From.IsZero() {
		f := opts.From
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &f
	}
	cons, err := js.OrderedConsumer(ctx, streamName, occ)
	if err != nil {
		return res, fmt.Errorf("service: replay: consumer on %s: %w", streamName, err)
	}
	batch := opts.Batch
	if batch <= 0 {
		batch = 500
	}
	msgs, stop, err := pullAll(ctx, cons, 4*batch)
	if err != nil {
		return res, fmt.Errorf("service: replay: read %s: %w", streamName, err)
	}
	defer stop()

	every := opts.ProgressEvery
	if every <= 0 {
		every = time.Second
	}
	began, lastReport := time.Now(), time.Now()
	progress := ReplayProgress{LastSeq: last}
	chunk := make([]jetstream.Msg, 0, batch)
	for done := false; !done; {
		chunk = chunk[:0]
		// The first message of a chunk is waited for; the rest are what
		// has arrived already.
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case p, ok := <-msgs:
			if !ok {
				return res, fmt.Errorf("service: replay: the reader of %s stopped at sequence %d of %d", streamName, progress.Seq, last)
			}
			if p.err != nil {
				return res, fmt.Errorf("service: replay: read %s: %w", streamName, p.err)
			}
			chunk = append(chunk, p.msg)
		}
	fill:
		for len(chunk) < batch {
			select {
			case p, ok := <-msgs:
				if !ok || p.err != nil {
					break fill
				}
				chunk = append(chunk, p.msg)
			default:
				break fill
			}
		}
		// Stop at the last message the stream held when the replay
		// began: later ones are the live consumer's.
		for i, msg := range chunk {
			md, err := msg.Metadata()
			if err != nil {
				return res, fmt.Errorf("service: replay: %w", err)
			}
			if progress.FirstSeq == 0 {
				progress.FirstSeq, res.FirstSeq = md.Sequence.Stream, md.Sequence.Stream
			}
			if md.Sequence.Stream >= last || md.NumPending == 0 {
				chunk, done = chunk[:i+1], true
				break
			}
		}
		if err := fn(ctx, chunk); err != nil {
			return res, err
		}
		md, _ := chunk[len(chunk)-1].Metadata()
		progress.Seq, res.LastSeq = md.Sequence.Stream, md.Sequence.Stream
		progress.Events += int64(len(chunk))
		res.Events = progress.Events
		if opts.Progress != nil && (done || time.Since(lastReport) >= every) {
			lastReport = time.Now()
			progress.Elapsed = time.Since(began)
			opts.Progress(progress)
		}
	}
	return res, nil
}

// pulled is one message, or the error that ended the reading.
type pulled struct {
	msg jetstream.Msg
	err error
}

// pullAll reads cons continuously into a channel of up to buffer
// messages, so that a chunk is handled while the next one arrives.
func pullAll(ctx context.Context, cons jetstream.Consumer, buffer int) (<-chan pulled, func(), error) {
	it, err := cons.Messages(jetstream.PullMaxMessages(buffer))
	if err != nil {
		return nil, nil, err
	}
	out := make(chan pulled, buffer)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		for {
			msg, err := it.Next()
			if err != nil {
				if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					select {
					case out <- pulled{err: err}:
					case <-ctx.Done():
					}
				}
				return
			}
			select {
			case out <- pulled{msg: msg}:
			case <-ctx.Done():
				it.Stop()
				return
			}
		}
	}()
	stop := func() {
		it.Stop()
		// Let the reader see the stop (it may be blocked on a full channel).
		for range out {
		}
		<-done
	}
	return out, stop, nil
}
