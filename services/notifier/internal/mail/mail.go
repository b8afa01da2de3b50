// Package mail sends the notifier's emails to an SMTP server, one
// connection per message, and classifies failures so that the caller
// knows whether to retry: see SendError and IsPermanent.
package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	netmail "net/mail"
	"net/textproto"
	"slices"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"
)

// Message is one email to one recipient.
type Message struct {
	// To is the recipient's bare address, such as ada@example.com;
	// ToName is the optional display name.
	To      string
	ToName  string
	Subject string
	// Text is the text/plain body and must not be empty. HTML is an
	// optional text/html alternative.
	Text string
	HTML string
	// MessageID must be set, such as "confirm.42@notifier.example.com",
	// with or without angle brackets. Derived from the task id, it lets
	// mail systems spot a resend of the same message.
	MessageID string
	// Headers are added as they are, such as List-Unsubscribe. They may
	// not replace the headers Sender sets itself (From, To, Subject,
	// Date, Message-ID, the MIME headers and other address headers).
	Headers map[string]string
}

// reservedHeaders are the headers Sender writes or that carry addresses;
// Message.Headers may not set them. Keys are lower case.
var reservedHeaders = map[string]bool{
	"from": true, "to": true, "cc": true, "bcc": true, "reply-to": true, "sender": true,
	"subject": true, "date": true, "message-id": true, "mime-version": true,
	"content-type": true, "content-transfer-encoding": true, "return-path": true,
}

// Sender sends messages through one SMTP server. It is safe for
// concurrent use: every Send has its own connection.
type Sender struct {
	cfg     Config
	options []gomail.Option // the go-mail client options every Send shares
	now     func() time.Time
}

// New checks cfg and returns a Sender for it. It does not connect.
func New(cfg Config) (*Sender, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := []gomail.Option{
		gomail.WithPort(cfg.Port),
		gomail.WithTimeout(cfg.timeout()),
		gomail.WithTLSConfig(&tls.Config{
			ServerName:         cfg.Host,
			RootCAs:            cfg.RootCAs,
			InsecureSkipVerify: cfg.InsecureSkipVerify, //nolint:gosec // documented as for tests only
			MinVersion:         tls.VersionTLS12,
		}),
	}
	switch cfg.tlsMode() {
	case TLSStartTLS:
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory))
	case TLSOpportunistic:
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSOpportunistic))
	case TLSImplicit, TLSNone:
		// Implicit TLS is done by our dialer (see dialer.dial), so go-mail
		// must not try STARTTLS on top.
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
	}
	switch cfg.authMechanism() {
	case AuthPlain:
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthPlain))
	case AuthLogin:
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthLogin))
	case AuthCRAMMD5:
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthCramMD5))
	}
	if cfg.authMechanism() != AuthNone {
		opts = append(opts, gomail.WithUsername(cfg.Username), gomail.WithPassword(cfg.Password))
	}
	if cfg.HELO != "" {
		opts = append(opts, gomail.WithHELO(cfg.HELO))
	}
	return &Sender{cfg: cfg, options: opts, now: time.Now}, nil
}

// Send delivers m over a new connection, which it closes before
// returning. It gives up when ctx is done or Config.Timeout has passed,
// whatever the conversation is waiting for.
//
// A message that cannot be sent as it is returns an error matching
// ErrInvalid, without connecting. A failed delivery returns a *SendError;
// IsPermanent tells whether to retry either. When the data was sent in
// full and no reply came, the error also matches ErrOutcomeUnknown.
func (s *Sender) Send(ctx context.Context, m Message) error {
	return s.SendWith(ctx, m, Steps{})
}

// Steps are a caller's hooks at the two moments that decide whether a
// message went out, for a caller that records it (the notifier's sent
// mark). Either may be nil.
type Steps struct {
	// BeforeEnd runs when the message has been written but for the line
	// that ends its data, after which the server takes it or refuses it.
	// An error abandons the message: the connection is closed without
	// that line, so the server discards what it got, and Send returns
	// the error wrapped.
	BeforeEnd func() error
	// Accepted runs once the server has taken the message, before the
	// goodbye (QUIT) and before Send returns.
	Accepted func()
}

// SendWith is Send with steps. Once the server has taken the message,
// SendWith returns nil whatever the goodbye brings.
func (s *Sender) SendWith(ctx context.Context, m Message, st Steps) error {
	msg, err := s.build(m)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout())
	defer cancel()
	d := &dialer{ctx: ctx}
	if s.cfg.tlsMode() == TLSImplicit {
		d.tls = &tls.Config{
			ServerName:         s.cfg.Host,
			RootCAs:            s.cfg.RootCAs,
			InsecureSkipVerify: s.cfg.InsecureSkipVerify, //nolint:gosec // documented as for tests only
			MinVersion:         tls.VersionTLS12,
		}
	}
	defer d.release()

	client, err := gomail.NewClient(s.cfg.Host, slices.Concat(s.options, []gomail.Option{gomail.WithDialContextFunc(d.dial)})...)
	if err != nil {
		return fmt.Errorf("mail: new client: %w", err)
	}
	conn, err := client.DialToSMTPClientWithContext(ctx)
	if err != nil {
		return classify(ctx, err)
	}
	defer func() { _ = conn.Close() }()
	if err := s.transmit(ctx, conn, msg, st.BeforeEnd); err != nil {
		return err
	}
	if st.Accepted != nil {
		st.Accepted()
	}
	_ = conn.Quit() // the message is taken: a failed goodbye changes nothing
	return nil
}

// transmit is the conversation for one message on conn: MAIL, RCPT, DATA
// and the data, with beforeEnd run before the data's last line.
func (s *Sender) transmit(ctx context.Context, conn *smtp.Client, msg *gomail.Msg, beforeEnd func() error) error {
	if err := conn.UpdateDeadline(s.cfg.timeout()); err != nil {
		return classify(ctx, err)
	}
	from, err := msg.GetSender(false)
	if err != nil {
		return fmt.Errorf("%w: sender: %v", ErrInvalid, err)
	}
	rcpts, err := msg.GetRecipients()
	if err != nil {
		return fmt.Errorf("%w: recipients: %v", ErrInvalid, err)
	}
	if err := conn.Mail(from); err != nil {
		return classify(ctx, err)
	}
	for _, rcpt := range rcpts {
		if err := conn.Rcpt(rcpt); err != nil {
			return classify(ctx, err)
		}
	}
	w, err := conn.Data()
	if err != nil {
		return classify(ctx, err)
	}
	if _, err := msg.WriteTo(w); err != nil {
		return classify(ctx, err)
	}
	if beforeEnd != nil {
		if err := beforeEnd(); err != nil {
			return fmt.Errorf("mail: not sent: %w", err)
		}
	}
	err = w.Close()
	var refused *textproto.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &refused):
		return classify(ctx, err)
	}
	// The last line went out (or its write failed unseen, the writer
	// does not say) and no reply came: taken or not, nobody here knows.
	se := classify(ctx, err)
	se.Err = fmt.Errorf("%w: %w", ErrOutcomeUnknown, se.Err)
	return se
}

// build checks m and turns it into a go-mail message.
func (s *Sender) build(m Message) (*gomail.Msg, error) {
	to, err := parseBareAddress(m.To)
	if err != nil {
		return nil, fmt.Errorf("%w: recipient %q: %v", ErrInvalid, m.To, err)
	}
	if len(to) > 254 {
		return nil, fmt.Errorf("%w: recipient is longer than 254 bytes", ErrInvalid)
	}
	if hasCRLF(m.ToName) {
		return nil, fmt.Errorf("%w: recipient name contains CR or LF", ErrInvalid)
	}
	if hasCRLF(m.Subject) {
		return nil, fmt.Errorf("%w: subject contains CR or LF", ErrInvalid)
	}
	if strings.TrimSpace(m.Text) == "" {
		return nil, fmt.Errorf("%w: text body is empty", ErrInvalid)
	}
	id, err := messageID(m.MessageID)
	if err != nil {
		return nil, fmt.Errorf("%w: message id %q: %v", ErrInvalid, m.MessageID, err)
	}
	for name, value := range m.Headers {
		if err := checkHeader(name, value); err != nil {
			return nil, fmt.Errorf("%w: header %q: %v", ErrInvalid, name, err)
		}
	}

	msg := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
	msg.FromMailAddress(&netmail.Address{Name: s.cfg.FromName, Address: s.cfg.From})
	msg.ToMailAddress(&netmail.Address{Name: m.ToName, Address: to})
	msg.Subject(m.Subject)
	msg.SetMessageIDWithValue(id)
	msg.SetDateWithValue(s.now())
	for name, value := range m.Headers {
		msg.SetGenHeader(gomail.Header(name), value)
	}
	msg.SetBodyString(gomail.TypeTextPlain, m.Text)
	if m.HTML != "" {
		msg.AddAlternativeString(gomail.TypeTextHTML, m.HTML)
	}
	return msg, nil
}

// messageID checks a Message-ID of the form left@right, dropping the
// angle brackets if it has them.
func messageID(id string) (string, error) {
	id = strings.TrimSuffix(strings.TrimPrefix(id, "<"), ">")
	if id == "" {
		return "", fmt.Errorf("must be set")
	}
	left, right, ok := strings.Cut(id, "@")
	if !ok || left == "" || right == "" || strings.Contains(right, "@") {
		return "", fmt.Errorf("must be of the form left@right")
	}
	for _, c := range id {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune(`<>()[]\,;:"`, c) {
			return "", fmt.Errorf("must be printable ASCII without spaces or specials")
		}
	}
	return id, nil
}

// checkHeader checks an extra header's name and value.
func checkHeader(name, value string) error {
	if name == "" {
		return fmt.Errorf("empty name")
	}
	for _, c := range name {
		if c <= ' ' || c >= 0x7f || c == ':' {
			return fmt.Errorf("name must be printable ASCII without spaces or ':'")
		}
	}
	if reservedHeaders[strings.ToLower(name)] {
		return fmt.Errorf("is set by the sender")
	}
	if hasCRLF(value) {
		return fmt.Errorf("value contains CR or LF")
	}
	return nil
}

// dialer connects for one Send and ties the connection to its context:
// go-mail uses the dial context only to dial, and reads and writes the
// conversation under deadlines it renews itself, so without this a
// cancelled Send would wait for a hung server until those run out.
type dialer struct {
	ctx  context.Context // the Send's context
	tls  *tls.Config     // non-nil for implicit TLS
	stop func() bool     // unties the connection from ctx
}

func (d *dialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	// Closing the TCP connection also breaks a TLS connection on top,
	// whether made here or by STARTTLS later.
	d.stop = context.AfterFunc(d.ctx, func() { _ = conn.Close() })
	if d.tls == nil {
		return conn, nil
	}
	tc := tls.Client(conn, d.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	// go-mail's smtp client sees a *tls.Conn and treats the session as
	// encrypted, which PLAIN and LOGIN require.
	return tc, nil
}

func (d *dialer) release() {
	if d.stop != nil {
		d.stop()
	}
}
