package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MsgIDHeader carries the event id, so the stream drops a repeated event
// within its duplicate window.
const MsgIDHeader = jetstream.MsgIDHeader

// ErrorHeader carries the reason a dead letter was refused, such as
// "data.value: must be a finite number".
const ErrorHeader = "Allot-Error"

// ErrNoStream means no JetStream stream captures the subject published
// to: the streams were not created, or the subject prefix is wrong.
var ErrNoStream = errors.New("events: no stream captures the subject")

// PublisherOptions configures a [Publisher] or an [AsyncPublisher]. The
// zero value is ready to use.
type PublisherOptions struct {
	// Subjects holds the subject prefixes; zero means DefaultSubjects().
	Subjects Subjects
	// Source fills in Event.Source when an event has none (default "allot").
	Source string
	// MaxEventBytes refuses larger encoded events before they reach the
	// wire (default DefaultMaxEventBytes).
	MaxEventBytes int
	// Now fills in Event.Time when an event has none (default time.Now).
	Now func() time.Time
	// NewID fills in Event.ID when an event has none (default: a UUIDv7,
	// which sorts by time).
	NewID func() (string, error)
}

func (o PublisherOptions) withDefaults() PublisherOptions {
	if o.Subjects == (Subjects{}) {
		o.Subjects = DefaultSubjects()
	}
	if o.Source == "" {
		o.Source = "allot"
	}
	if o.MaxEventBytes <= 0 {
		o.MaxEventBytes = DefaultMaxEventBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.NewID == nil {
		o.NewID = NewID
	}
	return o
}

// NewID returns a new event id: a UUIDv7, whose text sorts by creation
// time.
func NewID() (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("events: new id: %w", err)
	}
	return id.String(), nil
}

// Publisher publishes usage events and waits for each stream ack.
type Publisher struct {
	js   jetstream.JetStream
	opts PublisherOptions
}

// NewPublisher returns a Publisher on nc.
func NewPublisher(nc *nats.Conn, opts PublisherOptions) (*Publisher, error) {
	if nc == nil {
		return nil, errors.New("events: new publisher: nil NATS connection")
	}
	opts = opts.withDefaults()
	if err := opts.Subjects.Validate(); err != nil {
		return nil, fmt.Errorf("events: new publisher: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("events: new publisher: %w", err)
	}
	return &Publisher{js: js, opts: opts}, nil
}

// Prepare fills in the missing id, source, time, specversion and type of
// ev, validates it and encodes it as the message to publish. An invalid
// event returns a [ValidationError] and never reaches the wire.
func Prepare(ev *Event, opts PublisherOptions) (*nats.Msg, error) {
	p, err := prepare(ev, opts)
	if err != nil {
		return nil, err
	}
	return p.msg(), nil
}

// Prepared is an event filled in, validated and encoded, ready for the
// wire: PublishPrepared sends its encoding as it is. A caller that needs
// the filled-in event before publishing it (its id, to trace a failure
// to its line) prepares it once with the publisher's Prepare, instead of
// preparing it and then having Publish prepare it again.
type Prepared struct {
	ev      Event
	subject string
	data    []byte
}

// Event returns the event as prepared: its id, source, time, specversion
// and type filled in.
func (p Prepared) Event() Event { return p.ev }

// msg is a new message of p, each with its own header.
func (p Prepared) msg() *nats.Msg {
	return &nats.Msg{
		Subject: p.subject,
		Data:    p.data,
		Header:  nats.Header{MsgIDHeader: []string{p.ev.ID}},
	}
}

// errNotPrepared refuses a Prepared that no Prepare made.
var errNotPrepared = errors.New("events: publish: the event was not prepared (use the publisher's Prepare)")

// prepare fills in ev's missing attributes, validates and encodes it.
func prepare(ev *Event, opts PublisherOptions) (Prepared, error) {
	opts = opts.withDefaults()
	if ev.SpecVersion == "" {
		ev.SpecVersion = SpecVersion
	}
	if ev.Type == "" {
		ev.Type = UsageType
	}
	if ev.Source == "" {
		ev.Source = opts.Source
	}
	if ev.Time.IsZero() {
		ev.Time = opts.Now()
	}
	if ev.ID == "" {
		id, err := opts.NewID()
		if err != nil {
			return Prepared{}, err
		}
		ev.ID = id
	}
	if err := ev.Validate(); err != nil {
		return Prepared{}, err
	}
	if err := opts.Subjects.ValidateUID("subject", ev.Subject); err != nil {
		return Prepared{}, err
	}
	data := ev.AppendJSON(make([]byte, 0, 256))
	if len(data) > opts.MaxEventBytes {
		return Prepared{}, invalid("event", "must be at most %d bytes encoded (got %d)", opts.MaxEventBytes, len(data))
	}
	return Prepared{ev: *ev, subject: opts.Subjects.UsageFor(ev.Subject), data: data}, nil
}

// Prepare fills in, validates and encodes ev as Publish would, once;
// PublishPrepared sends the result. An invalid event returns a
// [ValidationError].
func (p *Publisher) Prepare(ev Event) (Prepared, error) { return prepare(&ev, p.opts) }

// Publish publishes ev and waits for the stream's ack. The returned ack
// says whether the stream dropped it as a duplicate of an earlier event
// with the same id. ev's missing fields are filled in as by Prepare.
func (p *Publisher) Publish(ctx context.Context, ev Event) (*jetstream.PubAck, error) {
	pe, err := p.Prepare(ev)
	if err != nil {
		return nil, err
	}
	return p.PublishPrepared(ctx, pe)
}

// PublishPrepared publishes an event Prepare made, as it was encoded, and
// waits for the stream's ack, as Publish does.
func (p *Publisher) PublishPrepared(ctx context.Context, pe Prepared) (*jetstream.PubAck, error) {
	if pe.subject == "" {
		return nil, errNotPrepared
	}
	ack, err := p.js.PublishMsg(ctx, pe.msg())
	if err != nil {
		return nil, publishError(pe.subject, err)
	}
	return ack, nil
}

func publishError(subject string, err error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("%w %s: create the streams with `allot streams` or events.EnsureStreams (%v)", ErrNoStream, subject, err)
	}
	return fmt.Errorf("events: publish to %s: %w", subject, err)
}
