package mail_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/allot/allot/services/notifier/internal/mail"
	"github.com/allot/allot/services/notifier/internal/smtptest"
)

// link has what quoted-printable must escape ('=') and is long enough
// to need a soft line break.
const link = "https://app.example.com/confirm?token=eyJhbGciOiJIUzI1NiJ9.eyJ1aWQiOiJ1c2VyLTQyIiwiZXhwIjoxNzAwMDAwMDAwfQ.c2lnbmF0dXJl&uid=user-42"

func newSender(t *testing.T, cfg mail.Config) *mail.Sender {
	t.Helper()
	s, err := mail.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// config is a valid configuration for srv, without TLS or auth.
func config(srv *smtptest.Server) mail.Config {
	return mail.Config{
		Host:    srv.Host(),
		Port:    srv.Port(),
		TLS:     mail.TLSNone,
		From:    "no-reply@example.com",
		Timeout: 5 * time.Second,
	}
}

func message() mail.Message {
	return mail.Message{
		To:        "ada@example.com",
		ToName:    "Ada Lovelace",
		Subject:   "Bitte bestätigen Sie Ihre Adresse",
		Text:      "Hello Ada,\n\nplease open " + link + "\n",
		MessageID: "confirm.task-1@notifier.example.com",
	}
}

func TestSendStartTLSAuthPlain(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: true, RequireAuth: true, Username: "notifier", Password: "s3cret"})
	cfg := config(srv)
	cfg.TLS = "" // starttls
	cfg.Username, cfg.Password = "notifier", "s3cret"
	cfg.RootCAs = srv.RootCAs()
	cfg.FromName = "Allot"
	sender := newSender(t, cfg)

	textOnly := message()
	textOnly.Headers = map[string]string{"X-Allot-Task": "task-1"}
	both := message()
	both.MessageID = "<confirm.task-2@notifier.example.com>"
	both.HTML = `<p>Hello Ada,</p><p><a href="` + strings.ReplaceAll(link, "&", "&amp;") + `">Confirm</a></p>`

	tests := []struct {
		name      string
		msg       mail.Message
		mediaType string
		messageID string
	}{
		{"text", textOnly, "text/plain", "<confirm.task-1@notifier.example.com>"},
		{"text and html", both, "multipart/alternative", "<confirm.task-2@notifier.example.com>"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now().Add(-time.Second)
			if err := sender.Send(t.Context(), tt.msg); err != nil {
				t.Fatal(err)
			}
			msgs, err := srv.Wait(t.Context(), i+1)
			if err != nil {
				t.Fatal(err)
			}
			got := msgs[i]
			if !got.TLS || got.Username != "notifier" {
				t.Errorf("tls=%v user=%q, want STARTTLS and AUTH as notifier", got.TLS, got.Username)
			}
			if diff := cmp.Diff([]string{"ada@example.com"}, got.To); got.From != "no-reply@example.com" || diff != "" {
				t.Errorf("envelope from %q, to (-want +got):\n%s", got.From, diff)
			}
			p := got.MustParse(t)
			if p.MediaType != tt.mediaType {
				t.Errorf("media type = %q, want %q", p.MediaType, tt.mediaType)
			}
			from, err := p.Header.AddressList("From")
			if err != nil || len(from) != 1 || from[0].Name != "Allot" || from[0].Address != "no-reply@example.com" {
				t.Errorf("From = %v (%v)", from, err)
			}
			to, err := p.Header.AddressList("To")
			if err != nil || len(to) != 1 || to[0].Name != "Ada Lovelace" || to[0].Address != "ada@example.com" {
				t.Errorf("To = %v (%v)", to, err)
			}
			if p.Subject != tt.msg.Subject {
				t.Errorf("Subject = %q, want %q", p.Subject, tt.msg.Subject)
			}
			if id := p.Header.Get("Message-ID"); id != tt.messageID {
				t.Errorf("Message-ID = %q, want %q", id, tt.messageID)
			}
			if date, err := p.Header.Date(); err != nil || date.Before(before) || date.After(time.Now().Add(time.Second)) {
				t.Errorf("Date = %v (%v), want about now", date, err)
			}
			if v := p.Header.Get("MIME-Version"); v != "1.0" {
				t.Errorf("MIME-Version = %q", v)
			}
			for k, v := range tt.msg.Headers {
				if got := p.Header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if p.Text != tt.msg.Text && p.Text != strings.ReplaceAll(tt.msg.Text, "\n", "\r\n") {
				t.Errorf("text = %q, want %q", p.Text, tt.msg.Text)
			}
			if !strings.Contains(p.Text, link) {
				t.Errorf("text lost the link %s:\n%s", link, p.Text)
			}
			if tt.msg.HTML != "" && p.HTML != tt.msg.HTML {
				t.Errorf("html = %q, want %q", p.HTML, tt.msg.HTML)
			}
		})
	}
}

func TestSendModes(t *testing.T) {
	tests := []struct {
		name    string
		opts    smtptest.Options
		cfg     func(c *mail.Config)
		wantTLS bool
	}{
		{"none to a plain server", smtptest.Options{}, func(*mail.Config) {}, false},
		{"opportunistic without STARTTLS", smtptest.Options{}, func(c *mail.Config) { c.TLS = mail.TLSOpportunistic }, false},
		{"opportunistic with STARTTLS", smtptest.Options{TLS: true}, func(c *mail.Config) { c.TLS = mail.TLSOpportunistic }, true},
		{"implicit TLS with LOGIN", smtptest.Options{ImplicitTLS: true, RequireAuth: true, Username: "u", Password: "p"}, func(c *mail.Config) {
			c.TLS, c.Auth, c.Username, c.Password = mail.TLSImplicit, mail.AuthLogin, "u", "p"
		}, true},
		{"plain auth over loopback without TLS", smtptest.Options{RequireAuth: true, Username: "u", Password: "p"}, func(c *mail.Config) {
			c.Username, c.Password = "u", "p"
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := smtptest.Start(t, tt.opts)
			cfg := config(srv)
			cfg.RootCAs = srv.RootCAs()
			tt.cfg(&cfg)
			if err := newSender(t, cfg).Send(t.Context(), message()); err != nil {
				t.Fatal(err)
			}
			msgs := srv.Messages()
			if len(msgs) != 1 || msgs[0].TLS != tt.wantTLS {
				t.Errorf("messages = %+v, want one with TLS %v", msgs, tt.wantTLS)
			}
		})
	}
}

func TestSendFailures(t *testing.T) {
	tests := []struct {
		name      string
		opts      smtptest.Options
		setup     func(t *testing.T, srv *smtptest.Server, c *mail.Config)
		code      int
		permanent bool
	}{
		{
			name:  "starttls required but not offered",
			setup: func(_ *testing.T, _ *smtptest.Server, c *mail.Config) { c.TLS = mail.TLSStartTLS },
		},
		{
			name:  "untrusted certificate",
			opts:  smtptest.Options{TLS: true},
			setup: func(_ *testing.T, _ *smtptest.Server, c *mail.Config) { c.TLS, c.RootCAs = mail.TLSStartTLS, nil },
		},
		{
			name: "wrong password",
			opts: smtptest.Options{TLS: true, RequireAuth: true, Username: "u", Password: "p"},
			setup: func(_ *testing.T, _ *smtptest.Server, c *mail.Config) {
				c.TLS, c.Username, c.Password = mail.TLSStartTLS, "u", "wrong"
			},
			code: 535, permanent: true,
		},
		{
			name: "mailbox busy",
			setup: func(_ *testing.T, srv *smtptest.Server, _ *mail.Config) {
				srv.RefuseNext(450, "mailbox busy, try later", 1)
			},
			code: 450,
		},
		{
			name:  "no such user",
			setup: func(_ *testing.T, srv *smtptest.Server, _ *mail.Config) { srv.RefuseNext(550, "no such user", 1) },
			code:  550, permanent: true,
		},
		{
			name:  "content rejected after DATA",
			setup: func(_ *testing.T, srv *smtptest.Server, _ *mail.Config) { srv.RefuseDataNext(554, "spam", 1) },
			code:  554, permanent: true,
		},
		{
			name:  "out of storage after DATA",
			setup: func(_ *testing.T, srv *smtptest.Server, _ *mail.Config) { srv.RefuseDataNext(452, "try later", 1) },
			code:  452,
		},
		{
			name:  "server down",
			setup: func(_ *testing.T, srv *smtptest.Server, _ *mail.Config) { srv.Stop() },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := smtptest.Start(t, tt.opts)
			cfg := config(srv)
			cfg.RootCAs = srv.RootCAs()
			tt.setup(t, srv, &cfg)

			err := newSender(t, cfg).Send(t.Context(), message())
			t.Log(err)
			var se *mail.SendError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v (%T), want a *mail.SendError", err, err)
			}
			if se.Code != tt.code || se.Permanent != tt.permanent || mail.IsPermanent(err) != tt.permanent {
				t.Errorf("code %d permanent %v, want %d %v: %v", se.Code, se.Permanent, tt.code, tt.permanent, err)
			}
			if errors.Is(err, mail.ErrInvalid) {
				t.Errorf("delivery failure matches ErrInvalid: %v", err)
			}
			if n := len(srv.Messages()); n != 0 {
				t.Errorf("%d messages delivered, want none", n)
			}
		})
	}
}

func TestRetryAfterTransientFailure(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	sender := newSender(t, config(srv))
	srv.RefuseNext(451, "local error", 1)
	if err := sender.Send(t.Context(), message()); mail.IsPermanent(err) || err == nil {
		t.Fatalf("first attempt: %v, want a transient error", err)
	}
	srv.Stop()
	if err := sender.Send(t.Context(), message()); mail.IsPermanent(err) || err == nil {
		t.Fatalf("attempt while down: %v, want a transient error", err)
	}
	srv.Restart(t)
	if err := sender.Send(t.Context(), message()); err != nil {
		t.Fatalf("attempt after restart: %v", err)
	}
	if got := srv.Connections(); got != 2 {
		t.Errorf("server saw %d connections, want 2", got)
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("%d messages delivered, want 1", n)
	}
}

func TestSendAbortsHungConversation(t *testing.T) {
	t.Run("cancel during DATA", func(t *testing.T) {
		srv := smtptest.Start(t, smtptest.Options{})
		srv.StallNext(1)
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := newSender(t, config(srv)).Send(ctx, message())
		checkAborted(t, err, context.DeadlineExceeded, time.Since(start))
	})
	t.Run("cancel while waiting for the greeting", func(t *testing.T) {
		addr := silentServer(t)
		cfg := mail.Config{Host: "127.0.0.1", Port: addr.Port, TLS: mail.TLSNone, From: "no-reply@example.com"}
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		err := newSender(t, cfg).Send(ctx, message())
		checkAborted(t, err, context.Canceled, time.Since(start))
	})
	t.Run("config timeout", func(t *testing.T) {
		addr := silentServer(t)
		cfg := mail.Config{Host: "127.0.0.1", Port: addr.Port, TLS: mail.TLSNone, From: "no-reply@example.com", Timeout: 150 * time.Millisecond}
		start := time.Now()
		err := newSender(t, cfg).Send(t.Context(), message())
		checkAborted(t, err, context.DeadlineExceeded, time.Since(start))
	})
}

func checkAborted(t *testing.T, err, want error, took time.Duration) {
	t.Helper()
	t.Logf("after %s: %v", took, err)
	if !errors.Is(err, want) {
		t.Errorf("err = %v, want %v", err, want)
	}
	if mail.IsPermanent(err) {
		t.Errorf("an aborted send is permanent: %v", err)
	}
	if took > 2*time.Second {
		t.Errorf("Send took %s to give up", took)
	}
}

// silentServer accepts connections and never says a word.
func silentServer(t *testing.T) *net.TCPAddr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				_ = c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	return l.Addr().(*net.TCPAddr)
}

func TestSendRejectsInvalidMessages(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	sender := newSender(t, config(srv))
	tests := []struct {
		name   string
		change func(m *mail.Message)
	}{
		{"empty recipient", func(m *mail.Message) { m.To = "" }},
		{"not an address", func(m *mail.Message) { m.To = "ada" }},
		{"display name in address", func(m *mail.Message) { m.To = "Ada <ada@example.com>" }},
		{"two recipients", func(m *mail.Message) { m.To = "ada@example.com, eve@example.com" }},
		{"recipient with CRLF", func(m *mail.Message) { m.To = "ada@example.com\r\nBcc: eve@example.com" }},
		{"recipient name with LF", func(m *mail.Message) { m.ToName = "Ada\nBcc: eve@example.com" }},
		{"subject with CRLF", func(m *mail.Message) { m.Subject = "Hi\r\nBcc: eve@example.com" }},
		{"header value with CR", func(m *mail.Message) { m.Headers = map[string]string{"X-Task": "1\rBcc: eve@example.com"} }},
		{"header name with colon", func(m *mail.Message) { m.Headers = map[string]string{"X-Task: 1\r\nBcc": "x"} }},
		{"header replacing Bcc", func(m *mail.Message) { m.Headers = map[string]string{"bcc": "eve@example.com"} }},
		{"header replacing Message-ID", func(m *mail.Message) { m.Headers = map[string]string{"Message-Id": "<x@y>"} }},
		{"empty text", func(m *mail.Message) { m.Text = " \n" }},
		{"no message id", func(m *mail.Message) { m.MessageID = "" }},
		{"message id without @", func(m *mail.Message) { m.MessageID = "task-1" }},
		{"message id with space", func(m *mail.Message) { m.MessageID = "task 1@example.com" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := message()
			tt.change(&m)
			err := sender.Send(t.Context(), m)
			if !errors.Is(err, mail.ErrInvalid) || !mail.IsPermanent(err) {
				t.Errorf("err = %v, want ErrInvalid", err)
			}
		})
	}
	if n := srv.Connections(); n != 0 {
		t.Errorf("invalid messages made %d connections, want none", n)
	}
}

func TestConfigValidate(t *testing.T) {
	valid := mail.Config{Host: "smtp.example.com", Port: 587, From: "no-reply@example.com", Username: "u", Password: "p"}
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	tests := []struct {
		name   string
		change func(c *mail.Config)
		want   []string // each must appear in the error
	}{
		{"no host", func(c *mail.Config) { c.Host = "" }, []string{"smtp.host: must not be empty"}},
		{"host with scheme", func(c *mail.Config) { c.Host = "smtp://x" }, []string{"smtp.host:"}},
		{"port zero", func(c *mail.Config) { c.Port = 0 }, []string{"smtp.port: must be 1..65535"}},
		{"port too big", func(c *mail.Config) { c.Port = 70000 }, []string{"smtp.port: must be 1..65535 (got 70000)"}},
		{"unknown tls", func(c *mail.Config) { c.TLS = "ssl" }, []string{`smtp.tls: must be starttls, opportunistic, tls or none (got "ssl")`}},
		{"unknown auth", func(c *mail.Config) { c.Auth = "xoauth2" }, []string{`smtp.auth: must be none, plain, login or cram-md5 (got "xoauth2")`}},
		{"auth without username", func(c *mail.Config) { c.Auth, c.Username, c.Password = mail.AuthLogin, "", "" }, []string{"smtp.auth: login needs smtp.username"}},
		{"password without username", func(c *mail.Config) { c.Username = "" }, []string{"smtp.password: is set but smtp.username is empty"}},
		{"password in clear to a remote host", func(c *mail.Config) { c.TLS = mail.TLSNone }, []string{"smtp.tls: none would send the password in clear"}},
		{"no from", func(c *mail.Config) { c.From = "" }, []string{"smtp.from: must not be empty"}},
		{"from not an address", func(c *mail.Config) { c.From = "x" }, []string{`smtp.from: "x" is not an email address`}},
		{"from with name", func(c *mail.Config) { c.From = "Allot <a@example.com>" }, []string{"smtp.from:"}},
		{"from name with LF", func(c *mail.Config) { c.FromName = "Allot\nBcc: x" }, []string{"smtp.from_name:"}},
		{"helo with space", func(c *mail.Config) { c.HELO = "a b" }, []string{"smtp.helo:"}},
		{"negative timeout", func(c *mail.Config) { c.Timeout = -time.Second }, []string{"smtp.timeout: must not be negative"}},
		{"all at once", func(c *mail.Config) { *c = mail.Config{Port: -1} }, []string{"smtp.host:", "smtp.port:", "smtp.from:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid
			tt.change(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate() = nil")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if _, nerr := mail.New(c); nerr == nil {
				t.Error("New accepted the config")
			}
		})
	}
}

func TestSendErrorMessage(t *testing.T) {
	err := error(&mail.SendError{Code: 550, Permanent: true, Err: errors.New("no such user")})
	if got, want := err.Error(), "mail: send failed (permanent, 550): no such user"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !mail.IsPermanent(err) || mail.IsPermanent(errors.New("x")) || mail.IsPermanent(nil) {
		t.Error("IsPermanent is wrong")
	}
}

// steps records what SendWith's hooks saw.
type steps struct {
	beforeEnd, accepted int
	kept                int // messages the server held when BeforeEnd ran
	failBeforeEnd       error
}

func (s *steps) hooks(srv *smtptest.Server) mail.Steps {
	return mail.Steps{
		BeforeEnd: func() error {
			s.beforeEnd++
			s.kept = len(srv.Messages())
			return s.failBeforeEnd
		},
		Accepted: func() { s.accepted++ },
	}
}

func TestSendWithSteps(t *testing.T) {
	errClaim := errors.New("claim failed")
	tests := []struct {
		name          string
		arrange       func(*smtptest.Server)
		failBeforeEnd error
		wantErr       func(error) bool
		wantAccepted  int
		wantKept      int // messages the server holds after the send
	}{
		{name: "taken", wantErr: func(err error) bool { return err == nil }, wantAccepted: 1, wantKept: 1},
		{
			name: "refused after the data", arrange: func(s *smtptest.Server) { s.RefuseDataNext(554, "content rejected", 1) },
			wantErr: func(err error) bool { return mail.IsPermanent(err) && !errors.Is(err, mail.ErrOutcomeUnknown) },
		},
		{
			name: "try again after the data", arrange: func(s *smtptest.Server) { s.RefuseDataNext(451, "later", 1) },
			wantErr: func(err error) bool {
				return err != nil && !mail.IsPermanent(err) && !errors.Is(err, mail.ErrOutcomeUnknown)
			},
		},
		{
			name: "hang up without a reply", arrange: func(s *smtptest.Server) { s.DropReplyNext(1) },
			wantErr: func(err error) bool { return errors.Is(err, mail.ErrOutcomeUnknown) && !mail.IsPermanent(err) },
			// the server took it, the sender cannot know
			wantKept: 1,
		},
		{
			name: "hook refuses", failBeforeEnd: errClaim,
			wantErr: func(err error) bool { return errors.Is(err, errClaim) && !errors.Is(err, mail.ErrOutcomeUnknown) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := smtptest.Start(t, smtptest.Options{})
			if tt.arrange != nil {
				tt.arrange(srv)
			}
			st := &steps{failBeforeEnd: tt.failBeforeEnd}
			err := newSender(t, config(srv)).SendWith(t.Context(), message(), st.hooks(srv))
			if !tt.wantErr(err) {
				t.Errorf("err = %v", err)
			}
			if st.beforeEnd != 1 || st.kept != 0 {
				t.Errorf("BeforeEnd ran %d times with %d messages already kept, want once with none", st.beforeEnd, st.kept)
			}
			if st.accepted != tt.wantAccepted {
				t.Errorf("Accepted ran %d times, want %d", st.accepted, tt.wantAccepted)
			}
			// A refused or abandoned message is never kept; give the
			// server a moment to finish a hung-up session.
			time.Sleep(20 * time.Millisecond)
			if n := len(srv.Messages()); n != tt.wantKept {
				t.Errorf("server kept %d messages, want %d", n, tt.wantKept)
			}
		})
	}
}

func TestSendWithStallIsUnknown(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	srv.StallNext(1)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	err := newSender(t, config(srv)).Send(ctx, message())
	if !errors.Is(err, mail.ErrOutcomeUnknown) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want ErrOutcomeUnknown and the deadline", err)
	}
}
