package smtptest_test

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/google/go-cmp/cmp"

	"github.com/allot/allot/services/notifier/internal/smtptest"
)

const multipartMessage = "From: a@example.com\r\n" +
	"To: b@example.com\r\n" +
	"Subject: =?UTF-8?q?Gr=C3=BC=C3=9Fe?=\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/alternative; boundary=XYZ\r\n" +
	"\r\n" +
	"--XYZ\r\n" +
	"Content-Type: text/plain; charset=UTF-8\r\n" +
	"Content-Transfer-Encoding: quoted-printable\r\n" +
	"\r\n" +
	"Open https://example.com/c?t=3Dabc&x=3D1 soon, a very long line that goes =\r\n" +
	"on.\r\n" +
	"--XYZ\r\n" +
	"Content-Type: text/html; charset=UTF-8\r\n" +
	"Content-Transfer-Encoding: base64\r\n" +
	"\r\n" +
	"PHA+SGk8L3A+\r\n" +
	"--XYZ--\r\n"

// send runs one SMTP transaction against s with go-smtp's client.
func send(t *testing.T, c *smtp.Client, from, to, data string) error {
	t.Helper()
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(data)); err != nil {
		return err
	}
	return w.Close()
}

func dial(t *testing.T, s *smtptest.Server) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func dialStartTLS(t *testing.T, s *smtptest.Server, cfg *tls.Config) *smtp.Client {
	t.Helper()
	c, err := smtp.DialStartTLS(s.Addr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestPlainReceiveAndParse(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	c := dial(t, s)
	if err := send(t, c, "a@example.com", "b@example.com", multipartMessage); err != nil {
		t.Fatal(err)
	}
	msgs, err := s.Wait(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	if m.From != "a@example.com" || !cmp.Equal(m.To, []string{"b@example.com"}) || m.TLS || m.Username != "" {
		t.Errorf("envelope = %q %q tls=%v user=%q", m.From, m.To, m.TLS, m.Username)
	}
	p := m.MustParse(t)
	want := smtptest.Parsed{
		Subject:   "Grüße",
		MediaType: "multipart/alternative",
		Text:      "Open https://example.com/c?t=abc&x=1 soon, a very long line that goes on.",
		HTML:      "<p>Hi</p>",
	}
	p.Header = nil
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("parsed (-want +got):\n%s", diff)
	}
}

func TestStartTLSAndAuth(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{TLS: true, RequireAuth: true, Username: "u", Password: "p"})
	tlsConfig := &tls.Config{RootCAs: s.RootCAs(), ServerName: s.Host()}

	if ok, _ := dial(t, s).Extension("AUTH"); ok {
		t.Error("AUTH offered before STARTTLS")
	}
	c := dialStartTLS(t, s, tlsConfig)
	if err := c.Mail("a@example.com", nil); !isCode(err, 502) {
		t.Errorf("MAIL before AUTH: err = %v, want 502", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "u", "wrong")); !isCode(err, 535) {
		t.Errorf("AUTH with a wrong password: err = %v, want 535", err)
	}

	for _, mech := range []sasl.Client{sasl.NewPlainClient("", "u", "p"), sasl.NewLoginClient("u", "p")} {
		c := dialStartTLS(t, s, tlsConfig)
		if err := c.Auth(mech); err != nil {
			t.Fatal(err)
		}
		if err := send(t, c, "a@example.com", "b@example.com", "Subject: x\r\n\r\nhi\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := s.Wait(t.Context(), 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if !m.TLS || m.Username != "u" {
			t.Errorf("tls=%v user=%q, want true and u", m.TLS, m.Username)
		}
	}
}

func TestImplicitTLS(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{ImplicitTLS: true})
	c, err := smtp.DialTLS(s.Addr(), &tls.Config{RootCAs: s.RootCAs(), ServerName: s.Host()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := send(t, c, "a@example.com", "b@example.com", "Subject: x\r\n\r\nhi\r\n"); err != nil {
		t.Fatal(err)
	}
	if msgs := s.Messages(); len(msgs) != 1 || !msgs[0].TLS {
		t.Errorf("messages = %+v, want one over TLS", msgs)
	}
}

func TestRefuseNext(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.RefuseNext(450, "mailbox busy", 2)
	c := dial(t, s)
	for range 2 {
		if err := send(t, c, "a@example.com", "b@example.com", "Subject: x\r\n\r\nhi\r\n"); !isCode(err, 450) {
			t.Errorf("err = %v, want 450", err)
		}
		if err := c.Reset(); err != nil {
			t.Fatal(err)
		}
	}
	if err := send(t, c, "a@example.com", "b@example.com", "Subject: x\r\n\r\nhi\r\n"); err != nil {
		t.Errorf("third message: %v", err)
	}
	if n := len(s.Messages()); n != 1 {
		t.Errorf("%d messages kept, want 1", n)
	}
}

func TestRefuseDataNext(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.RefuseDataNext(554, "content rejected", 1)
	c := dial(t, s)
	if err := send(t, c, "a@example.com", "b@example.com", "Subject: x\r\n\r\nhi\r\n"); !isCode(err, 554) {
		t.Errorf("err = %v, want 554", err)
	}
	if err := send(t, c, "a@example.com", "b@example.com", "Subject: x\r\n\r\nhi\r\n"); err != nil {
		t.Errorf("second message: %v", err)
	}
	if n := len(s.Messages()); n != 1 {
		t.Errorf("%d messages kept, want 1", n)
	}
}

func TestStopRestart(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	// The client reads the greeting lazily: a command makes sure the
	// server has accepted the connection before it stops.
	if err := dial(t, s).Noop(); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	if c, err := smtp.Dial(s.Addr()); err == nil {
		c.Close()
		t.Fatal("dial to a stopped server succeeded")
	}
	s.Restart(t)
	c := dial(t, s)
	if err := send(t, c, "a@example.com", "b@example.com", "Subject: x\r\n\r\nhi\r\n"); err != nil {
		t.Fatal(err)
	}
	if got := s.Connections(); got != 2 {
		t.Errorf("Connections() = %d, want 2", got)
	}
}

func TestStallNext(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.StallNext(1)
	c := dial(t, s)
	done := make(chan error, 1)
	go func() { done <- send(t, c, "a@example.com", "b@example.com", "Subject: x\r\n\r\nhi\r\n") }()
	select {
	case err := <-done:
		t.Fatalf("stalled DATA answered: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	s.Stop()
	if err := <-done; err == nil {
		t.Error("stalled DATA succeeded after Stop")
	}
}

func TestWaitTimesOut(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	msgs, err := s.Wait(ctx, 1)
	if !errors.Is(err, context.DeadlineExceeded) || len(msgs) != 0 {
		t.Errorf("Wait = %v, %v; want no messages and a deadline error", msgs, err)
	}
	if !strings.Contains(err.Error(), "0 of 1") {
		t.Errorf("error %q does not say how many arrived", err)
	}
}

func isCode(err error, code int) bool {
	var e *smtp.SMTPError
	return errors.As(err, &e) && e.Code == code
}

func TestDropReplyNext(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.DropReplyNext(1)
	if err := send(t, dial(t, s), "a@example.com", "b@example.com", "Subject: x\r\n\r\nhi\r\n"); err == nil || isCode(err, 250) {
		t.Fatalf("err = %v, want the connection to break without a reply", err)
	}
	if n := len(s.Messages()); n != 1 {
		t.Fatalf("%d messages kept, want the dropped reply's message", n)
	}
	if err := send(t, dial(t, s), "a@example.com", "b@example.com", "Subject: x\r\n\r\nhi\r\n"); err != nil {
		t.Errorf("second message: %v", err)
	}
	if n := len(s.Messages()); n != 2 {
		t.Errorf("%d messages kept, want 2", n)
	}
}

func TestBeforeReplyNext(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	ran := 0
	s.BeforeReplyNext(func() {
		ran++
		if n := len(s.Messages()); n != 0 {
			t.Errorf("hook ran with %d messages kept, want it before the message is kept", n)
		}
	})
	c := dial(t, s)
	for range 2 {
		if err := send(t, c, "a@example.com", "b@example.com", "Subject: x\r\n\r\nhi\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	if ran != 1 {
		t.Errorf("hook ran %d times, want once", ran)
	}
}
