package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Transport errors of a [Client]; replies from a service are
// [ServiceError]s instead.
var (
	// ErrTimeout: no reply within the timeout.
	ErrTimeout = errors.New("events: request timed out")
	// ErrNoResponders: no service listens on the subject.
	ErrNoResponders = errors.New("events: no service answers")
)

// ClientOptions configures a [Client]. The zero value is ready to use.
type ClientOptions struct {
	// Subjects holds the subject prefixes; zero means DefaultSubjects().
	Subjects Subjects
	// Timeout bounds each request whose context has no earlier deadline
	// (default 2s).
	Timeout time.Duration
	// Log receives what a registry watch does (reloads and why); nil
	// discards it.
	Log *slog.Logger
	// Batch turns on batching of Check, Credit(s) and Authorize calls
	// made at the same time (coalesce.go); off by default.
	Batch BatchOptions
}

// Client calls allot's request/reply endpoints. It is safe for concurrent
// use.
type Client struct {
	nc      requester
	conn    *nats.Conn // for subscriptions (registry watches)
	log     *slog.Logger
	subj    Subjects
	timeout time.Duration
	// Gzipped replies are inflated with readers and into buffers kept
	// between requests, so a client finding often does not allocate and
	// collect a large body each time.
	readers sync.Pool // of *gzip.Reader
	buffers sync.Pool // of *[]byte
	// coalescer batches calls; nil when batching is off.
	coalescer *coalescer
}

// requester is what a Client needs of a NATS connection (*nats.Conn).
type requester interface {
	RequestMsgWithContext(ctx context.Context, msg *nats.Msg) (*nats.Msg, error)
}

// NewClient returns a Client on nc.
func NewClient(nc *nats.Conn, opts ClientOptions) (*Client, error) {
	if nc == nil {
		return nil, errors.New("events: new client: nil NATS connection")
	}
	if opts.Subjects == (Subjects{}) {
		opts.Subjects = DefaultSubjects()
	}
	if err := opts.Subjects.Validate(); err != nil {
		return nil, fmt.Errorf("events: new client: %w", err)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	c := &Client{nc: nc, conn: nc, log: opts.Log, subj: opts.Subjects, timeout: opts.Timeout}
	if opts.Batch.Enabled {
		c.coalescer = &coalescer{c: c, opts: opts.Batch.withDefaults(), lanes: map[string]*lane{}}
	}
	return c, nil
}

// Credit returns uid's credit for one grant metric.
func (c *Client) Credit(ctx context.Context, uid, metric string) (Credit, error) {
	var reply Credit
	if err := ValidateToken("metric", metric); err != nil {
		return reply, err
	}
	err := c.batched(ctx, uid, c.subj.Credit, c.subj.CreditMany, CreditRequest{Metric: metric}, &reply)
	return reply, err
}

// Credits returns uid's credit for every grant.
func (c *Client) Credits(ctx context.Context, uid string) (CreditsReply, error) {
	var reply CreditsReply
	err := c.batched(ctx, uid, c.subj.Credit, c.subj.CreditMany, CreditRequest{}, &reply)
	return reply, err
}

// Authorize asks to admit req.Amount of req.Metric for uid, checking and
// recording in one step. A refusal returns the decision (Allowed false,
// with Remaining and ResetsAt) together with an error matching
// [ErrOverLimit]. An empty req.ID is filled with a new id.
func (c *Client) Authorize(ctx context.Context, uid string, req AuthorizeRequest) (AuthorizeReply, error) {
	var reply AuthorizeReply
	if req.ID == "" {
		id, err := NewID()
		if err != nil {
			return reply, err
		}
		req.ID = id
	}
	if err := req.Validate(); err != nil {
		return reply, err
	}
	err := c.batched(ctx, uid, c.subj.Authorize, c.subj.AuthorizeMany, req, &reply)
	return reply, err
}

// Grants reads (zero req), sets or unsets uid's grant overrides and
// returns the effective grants.
func (c *Client) Grants(ctx context.Context, uid string, req GrantsRequest) (GrantsReply, error) {
	var reply GrantsReply
	if err := req.Validate(); err != nil {
		return reply, err
	}
	err := c.call(ctx, uid, c.subj.Grants, req, &reply)
	return reply, err
}

// Check asks whether a call of uid to req.Service may go ahead. A denial
// is a normal reply with Allowed false, not an error.
func (c *Client) Check(ctx context.Context, uid string, req CheckRequest) (CheckReply, error) {
	var reply CheckReply
	if err := req.Validate(); err != nil {
		return reply, err
	}
	err := c.batched(ctx, uid, c.subj.Check, c.subj.CheckMany, req, &reply)
	return reply, err
}

// Reset clears uid's rate-limit window for service.
func (c *Client) Reset(ctx context.Context, uid, service string) error {
	req := ResetRequest{Service: service}
	if err := req.Validate(); err != nil {
		return err
	}
	var reply OKReply
	return c.call(ctx, uid, c.subj.Reset, req, &reply)
}

// Register registers one service instance.
func (c *Client) Register(ctx context.Context, req RegisterRequest) (RegisterReply, error) {
	var reply RegisterReply
	if err := req.Validate(); err != nil {
		return reply, err
	}
	err := c.request(ctx, c.subj.Register(), req, &reply)
	return reply, err
}

// Deregister removes a registration before it expires. Removing one that
// is not there is not an error.
func (c *Client) Deregister(ctx context.Context, name, id string) error {
	req := DeregisterRequest{Name: name, ID: id}
	if err := req.Validate(); err != nil {
		return err
	}
	var reply OKReply
	return c.request(ctx, c.subj.Deregister(), req, &reply)
}

// RefreshRegistry has the registry reap expired instances and rebuild
// its URL map now.
func (c *Client) RefreshRegistry(ctx context.Context) (RefreshReply, error) {
	var reply RefreshReply
	err := c.request(ctx, c.subj.RegistryRefresh(), RefreshRequest{}, &reply)
	return reply, err
}

// Find lists the live instances of service name, or of every service
// when name is empty, with the resource to URL map. It accepts a gzipped
// reply (a find of many instances is large; gzip makes it about a tenth)
// and inflates it.
func (c *Client) Find(ctx context.Context, name string) (FindReply, error) {
	var reply FindReply
	if name != "" {
		if err := ValidateToken("name", name); err != nil {
			return reply, err
		}
	}
	err := c.requestWith(ctx, c.subj.Find(name), acceptGzip(), FindRequest{}, &reply)
	return reply, err
}

// acceptGzip returns the header of a request that takes a gzipped reply,
// a new map each time: a message's header is the message's own, and
// whatever adds to it on the way out must not reach another request.
func acceptGzip() nats.Header { return nats.Header{HeaderAcceptEncoding: {EncodingGzip}} }

// call checks uid and sends req to subject(uid).
func (c *Client) call(ctx context.Context, uid string, subject func(string) string, req, reply any) error {
	if err := c.subj.ValidateUID("uid", uid); err != nil {
		return err
	}
	return c.request(ctx, subject(uid), req, reply)
}

// request sends req as JSON and decodes the reply into reply, or the
// error headers and body into a *ServiceError. On an error reply, reply
// is still filled from the body where the body carries its fields.
func (c *Client) request(ctx context.Context, subject string, req, reply any) error {
	return c.requestWith(ctx, subject, nil, req, reply)
}

// requestWith is request with headers (nil for none), which it does not
// change. A body is decoded as its Content-Encoding says.
func (c *Client) requestWith(ctx context.Context, subject string, header nats.Header, req, reply any) error {
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("events: encode request for %s: %w", subject, err)
	}
	return c.exchange(ctx, subject, header, data, reply)
}

// bound returns ctx bounded by the client's timeout, unless ctx's own
// deadline comes first. A caller's later deadline (an asynq task's 30
// minutes, a whole run's) must not stretch one request: a reply lost
// with its service would hold the caller until then.
func (c *Client) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= c.timeout {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

// exchange sends data, a request's JSON, and decodes the reply as
// requestWith says.
func (c *Client) exchange(ctx context.Context, subject string, header nats.Header, data []byte, reply any) error {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	msg, err := c.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Header: header, Data: data})
	switch {
	case err == nil:
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("%w on %s: is the service running?", ErrNoResponders, subject)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fmt.Errorf("%w: no reply on %s: %w", ErrTimeout, subject, err)
	default:
		return fmt.Errorf("events: request %s: %w", subject, err)
	}
	if serr := DecodeServiceError(msg); serr != nil {
		_ = json.Unmarshal(msg.Data, reply) // best effort: 429s carry the decision
		return serr
	}
	body := msg.Data
	if replyEncoded(msg) {
		// Inflated into a buffer of the pool: the JSON decoder copies what
		// it keeps.
		buf, _ := c.buffers.Get().(*[]byte)
		if buf == nil {
			buf = new([]byte)
		}
		defer c.putReplyBuffer(buf)
		if body, err = appendReplyBody((*buf)[:0], msg, MaxReplyBody, &c.readers); err != nil {
			return fmt.Errorf("events: reply from %s: %w", subject, err)
		}
		*buf = body
	}
	if err := unmarshalReply(body, reply); err != nil {
		return fmt.Errorf("events: decode reply from %s: %w", subject, err)
	}
	return nil
}

// maxPooledReply: a larger buffer is left to the collector rather than
// kept.
const maxPooledReply = 4 << 20

func (c *Client) putReplyBuffer(buf *[]byte) {
	if cap(*buf) <= maxPooledReply {
		c.buffers.Put(buf)
	}
}

// DecodeServiceError returns the error a reply carries in the micro error
// headers, or nil when it carries none.
func DecodeServiceError(msg *nats.Msg) *ServiceError {
	if msg.Header == nil {
		return nil
	}
	codeText := msg.Header.Get(micro.ErrorCodeHeader)
	if codeText == "" {
		return nil
	}
	status, err := strconv.Atoi(codeText)
	if err != nil {
		status = 500
	}
	serr := &ServiceError{Status: status, Code: CodeForStatus(status), Message: msg.Header.Get(micro.ErrorHeader)}
	var body ErrorBody
	if json.Unmarshal(msg.Data, &body) == nil && body.Error.Code != "" {
		serr.Code = body.Error.Code
		serr.Field = body.Error.Field
		if body.Error.Message != "" {
			serr.Message = body.Error.Message
		}
	}
	return serr
}
