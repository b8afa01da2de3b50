// Package smtptest runs a real SMTP server inside a test process, so that
// tests of code that sends mail drive a whole SMTP conversation: greeting,
// STARTTLS or implicit TLS, AUTH, MAIL, RCPT and DATA.
//
// The server keeps every message it accepts, parses it on request, and
// can be told to refuse messages, to stall, or to go down and come back,
// to test how a sender classifies and retries failures.
package smtptest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Options say what the server offers. The zero value is a plain server
// that accepts any mail without authentication.
type Options struct {
	// TLS offers STARTTLS with a self-signed certificate for 127.0.0.1
	// and localhost; clients trust it through Server.RootCAs. When set,
	// AUTH is offered only after STARTTLS, as real servers do.
	TLS bool
	// ImplicitTLS speaks TLS from the first byte, as on port 465.
	ImplicitTLS bool
	// RequireAuth refuses MAIL FROM until the client authenticated with
	// Username and Password through AUTH PLAIN or AUTH LOGIN.
	RequireAuth bool
	Username    string
	Password    string
}

// Server is a running test server. Its methods are safe for concurrent
// use.
type Server struct {
	opts    Options
	tls     *tls.Config // nil unless TLS or ImplicitTLS
	roots   *x509.CertPool
	addr    string
	arrived chan struct{} // receives a value, without blocking, on each message

	attempts atomic.Int64

	mu         sync.Mutex
	srv        *smtp.Server  // nil while stopped
	lis        net.Listener  // srv's listener
	stalled    chan struct{} // closed by Stop to release stalled DATA commands
	msgs       []Received
	refuse     refusal // at RCPT TO
	refuseData refusal // after the data
	stall      int
	dropReply  int
	beforeNext func() // BeforeReplyNext's
}

type refusal struct {
	code int
	msg  string
	n    int
}

// Start starts a server on 127.0.0.1 with a free port and closes it when
// the test ends. It fails the test if the server cannot start.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{opts: opts, arrived: make(chan struct{}, 1)}
	if opts.TLS || opts.ImplicitTLS {
		cert, roots, err := selfSigned()
		if err != nil {
			t.Fatalf("smtptest: %v", err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		s.roots = roots
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: listen: %v", err)
	}
	s.addr = l.Addr().String()
	s.serve(l)
	t.Cleanup(s.Stop)
	return s
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.addr }

// Host is the address's host, always 127.0.0.1.
func (s *Server) Host() string {
	host, _, _ := net.SplitHostPort(s.addr)
	return host
}

// Port is the address's port.
func (s *Server) Port() int {
	_, port, _ := net.SplitHostPort(s.addr)
	n, _ := strconv.Atoi(port)
	return n
}

// RootCAs holds the certificate the server presents; nil for a server
// without TLS.
func (s *Server) RootCAs() *x509.CertPool { return s.roots }

// Connections counts the connections the server has accepted since it
// started, across restarts. A sender's retries show up here; an attempt
// while the server is stopped does not, since nothing accepts it.
func (s *Server) Connections() int { return int(s.attempts.Load()) }

// Messages returns a copy of the messages accepted so far, oldest first.
func (s *Server) Messages() []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Received(nil), s.msgs...)
}

// Reset forgets the messages received so far.
func (s *Server) Reset() {
	s.mu.Lock()
	s.msgs = nil
	s.mu.Unlock()
}

// Wait blocks until at least n messages arrived and returns them, or
// returns ctx's error with the messages so far.
func (s *Server) Wait(ctx context.Context, n int) ([]Received, error) {
	for {
		msgs := s.Messages()
		if len(msgs) >= n {
			return msgs, nil
		}
		select {
		case <-s.arrived:
		case <-ctx.Done():
			return msgs, fmt.Errorf("smtptest: %d of %d messages arrived: %w", len(msgs), n, ctx.Err())
		}
	}
}

// RefuseNext makes the server answer RCPT TO of the next n messages with
// code and msg, such as 450 (try again later) or 550 (no such user). A
// later call replaces an earlier one.
func (s *Server) RefuseNext(code int, msg string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuse = refusal{code: code, msg: msg, n: n}
}

// RefuseDataNext makes the server take the data of the next n messages
// and then answer with code and msg instead of accepting them, as a
// server does that rejects content, such as 554 or 452. A later call
// replaces an earlier one.
func (s *Server) RefuseDataNext(code int, msg string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuseData = refusal{code: code, msg: msg, n: n}
}

// StallNext makes the server take the next n messages' data and then
// never answer, as a hung server does, until the client hangs up or the
// server stops. The message is not kept.
func (s *Server) StallNext(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stall = n
}

// DropReplyNext makes the server keep the next n messages and then hang
// up without answering their data, as a server does that dies, or whose
// connection breaks, just after it took a message: the client cannot
// know the message arrived.
func (s *Server) DropReplyNext(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropReply = n
}

// BeforeReplyNext runs f once the next message's data has arrived,
// before the server answers: a test's hook at the moment the message is
// out of the client's hands.
func (s *Server) BeforeReplyNext(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.beforeNext = f
}

// Stop closes the listener and every connection, so that connecting is
// refused until Restart. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	srv, lis := s.srv, s.lis
	s.srv, s.lis = nil, nil
	if srv != nil {
		close(s.stalled)
	}
	s.mu.Unlock()
	if srv != nil {
		// go-smtp learns of its listener only once Serve runs, in its own
		// goroutine, so close it here too in case that has not happened.
		_ = lis.Close()
		_ = srv.Close()
	}
}

// Restart listens again on the same address after Stop, keeping the
// messages received so far. It fails the test if the port was taken in
// the meantime. Restarting a running server does nothing.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	running := s.srv != nil
	s.mu.Unlock()
	if running {
		return
	}
	l, err := net.Listen("tcp", s.addr)
	if err != nil {
		t.Fatalf("smtptest: restart on %s: %v", s.addr, err)
	}
	s.serve(l)
}

// serve starts a go-smtp server on l.
func (s *Server) serve(l net.Listener) {
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "smtptest.localhost"
	srv.ReadTimeout = 30 * time.Second
	srv.WriteTimeout = 30 * time.Second
	srv.ErrorLog = log.New(io.Discard, "", 0)
	if s.tls != nil {
		srv.TLSConfig = s.tls
	}
	srv.AllowInsecureAuth = !s.opts.TLS && !s.opts.ImplicitTLS

	if s.opts.ImplicitTLS {
		l = tls.NewListener(l, s.tls)
	}
	l = &countingListener{Listener: l, n: &s.attempts}

	s.mu.Lock()
	s.srv, s.lis = srv, l
	s.stalled = make(chan struct{})
	s.mu.Unlock()
	go func() { _ = srv.Serve(l) }()
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	return &session{srv: s, tls: isTLS, conn: c.Conn()}, nil
}

// take uses up one refusal of r, if any is left.
func (s *Server) take(r *refusal) (*smtp.SMTPError, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.n <= 0 {
		return nil, false
	}
	r.n--
	return &smtp.SMTPError{Code: r.code, EnhancedCode: smtp.EnhancedCode{r.code / 100, 0, 0}, Message: r.msg}, true
}

// takeStall uses up one stall, if any is left, and returns the channel
// that Stop closes.
func (s *Server) takeStall() (<-chan struct{}, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stall <= 0 {
		return nil, false
	}
	s.stall--
	return s.stalled, true
}

// takeDropReply uses up one DropReplyNext, if any is left.
func (s *Server) takeDropReply() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dropReply <= 0 {
		return false
	}
	s.dropReply--
	return true
}

func (s *Server) deliver(r Received) {
	s.mu.Lock()
	s.msgs = append(s.msgs, r)
	s.mu.Unlock()
	select {
	case s.arrived <- struct{}{}:
	default:
	}
}

// session is one SMTP connection's state between EHLO and QUIT.
type session struct {
	srv      *Server
	tls      bool
	conn     net.Conn // to hang up on the client (DropReplyNext)
	username string   // who authenticated; "" before AUTH
	from     string
	to       []string
}

var _ smtp.AuthSession = (*session)(nil)

func (s *session) AuthMechanisms() []string {
	if !s.srv.opts.RequireAuth {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	check := func(username, password string) error {
		if username != s.srv.opts.Username || password != s.srv.opts.Password {
			return smtp.ErrAuthFailed
		}
		s.username = username
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return smtp.ErrAuthFailed
			}
			return check(username, password)
		}), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if s.srv.opts.RequireAuth && s.username == "" {
		return smtp.ErrAuthRequired
	}
	s.from = from
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err, ok := s.srv.take(&s.srv.refuse); ok {
		return err
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.srv.mu.Lock()
	before := s.srv.beforeNext
	s.srv.beforeNext = nil
	s.srv.mu.Unlock()
	if before != nil {
		before()
	}
	if stalled, ok := s.srv.takeStall(); ok {
		<-stalled
		return errors.New("smtptest: stalled message dropped")
	}
	if err, ok := s.srv.take(&s.srv.refuseData); ok {
		return err
	}
	s.srv.deliver(Received{
		From:     s.from,
		To:       append([]string(nil), s.to...),
		Data:     data,
		TLS:      s.tls,
		Username: s.username,
		At:       time.Now(),
	})
	if s.srv.takeDropReply() {
		_ = s.conn.Close()
		return errors.New("smtptest: hung up after taking the message")
	}
	return nil
}

func (s *session) Reset() {
	s.from = ""
	s.to = nil
}

func (s *session) Logout() error { return nil }

// loginServer is the server side of the LOGIN mechanism, which go-sasl
// has only as a client: the server asks "Username:" and "Password:", and
// the client answers each in turn.
type loginServer struct {
	check    func(username, password string) error
	username string
	step     int
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		l.step++
		if response == nil {
			return []byte("Username:"), false, nil
		}
		l.username = string(response) // sent as an initial response
		l.step++
		return []byte("Password:"), false, nil
	case 1:
		l.username = string(response)
		l.step++
		return []byte("Password:"), false, nil
	case 2:
		l.step++
		return nil, true, l.check(l.username, string(response))
	}
	return nil, false, errors.New("smtptest: unexpected LOGIN response")
}
