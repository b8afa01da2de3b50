// Package devmail is the mail sink of "allot dev": an SMTP server on
// loopback that accepts every message, logs who it is for, its subject
// and its links, and shows the last ones over HTTP, so a laptop sees the
// notifier's emails (and can click a confirmation link) without a mail
// server. It is not for production: it keeps messages in memory and
// offers neither TLS nor authentication.
package devmail

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/http"
	"net/mail"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Keep is how many messages the sink remembers.
const Keep = 50

// maxMessageBytes bounds one message.
const maxMessageBytes = 1 << 20

// Message is one received email, decoded for reading.
type Message struct {
	Received time.Time
	From     string
	To       []string
	Subject  string
	Text     string
	Links    []string
}

// Sink is a running mail sink.
type Sink struct {
	srv  *smtp.Server
	addr string
	log  *slog.Logger

	mu   sync.Mutex
	msgs []Message
}

// Start listens on addr (such as 127.0.0.1:1025; port 0 picks one).
func Start(addr string, log *slog.Logger) (*Sink, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("devmail: listen: %w", err)
	}
	s := &Sink{addr: l.Addr().String(), log: log}
	s.srv = smtp.NewServer(backend{s})
	s.srv.Domain = "allot-dev"
	s.srv.MaxMessageBytes = maxMessageBytes
	s.srv.MaxRecipients = 10
	s.srv.ReadTimeout = 30 * time.Second
	s.srv.WriteTimeout = 30 * time.Second
	go func() {
		if err := s.srv.Serve(l); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
			log.Warn("mail sink stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr is where the sink listens.
func (s *Sink) Addr() string { return s.addr }

// Close stops the sink.
func (s *Sink) Close() error { return s.srv.Close() }

// Messages returns the remembered messages, newest last.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// ServeHTTP shows the remembered messages, newest first, as plain text.
func (s *Sink) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	msgs := s.Messages()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(msgs) == 0 {
		fmt.Fprintln(w, "No mail yet. The notifier's emails appear here.")
		return
	}
	for i := len(msgs) - 1; i >= 0; i-- {
		m := msgs[i]
		fmt.Fprintf(w, "=== %s  from %s  to %s\nSubject: %s\n\n%s\n\n", m.Received.UTC().Format(time.RFC3339), m.From, strings.Join(m.To, ", "), m.Subject, strings.TrimSpace(m.Text))
	}
}

func (s *Sink) add(m Message) {
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	if len(s.msgs) > Keep {
		s.msgs = s.msgs[len(s.msgs)-Keep:]
	}
	s.mu.Unlock()
	s.log.Info("mail received by the dev sink", "to", strings.Join(m.To, ","), "subject", m.Subject, "links", m.Links)
}

type backend struct{ s *Sink }

func (b backend) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{s: b.s}, nil }

type session struct {
	s    *Sink
	from string
	to   []string
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error { ss.from = from; return nil }
func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error   { ss.to = append(ss.to, to); return nil }
func (ss *session) Reset()                                      { ss.from, ss.to = "", nil }
func (ss *session) Logout() error                               { return nil }

func (ss *session) Data(r io.Reader) error {
	data, err := io.ReadAll(io.LimitReader(r, maxMessageBytes+1))
	if err != nil {
		return err
	}
	m := Message{Received: time.Now(), From: ss.from, To: append([]string(nil), ss.to...)}
	m.Subject, m.Text = decode(data)
	m.Links = links.FindAllString(m.Text, -1)
	ss.s.add(m)
	return nil
}

var links = regexp.MustCompile(`https?://[^\s<>"]+`)

// decode returns the subject and the text/plain part of a message, or
// the raw message when it cannot be taken apart.
func decode(data []byte) (subject, text string) {
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		return "", string(data)
	}
	subject, err = new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
	if err != nil {
		subject = msg.Header.Get("Subject")
	}
	return subject, textPart(msg.Header.Get("Content-Type"), msg.Header.Get("Content-Transfer-Encoding"), msg.Body)
}

func textPart(contentType, encoding string, body io.Reader) string {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		mt = "text/plain"
	}
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err != nil {
				return ""
			}
			if t := textPart(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p); t != "" {
				return t
			}
		}
	}
	if mt != "text/plain" {
		return ""
	}
	switch strings.ToLower(encoding) {
	case "quoted-printable":
		body = quotedprintable.NewReader(body)
	case "base64":
		body = base64.NewDecoder(base64.StdEncoding, body)
	}
	b, _ := io.ReadAll(io.LimitReader(body, maxMessageBytes))
	return string(b)
}
