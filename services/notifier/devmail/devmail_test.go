package devmail

import (
	"context"
	"io"
	"net/http/httptest"
	"net/smtp"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/services/notifier/internal/mail"
)

func TestSinkReceivesAndShows(t *testing.T) {
	s, err := Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	host, port := splitAddr(t, s.Addr())
	snd, err := mail.New(mail.Config{Host: host, Port: port, TLS: "none", From: "noreply@localhost", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	err = snd.Send(ctx, mail.Message{To: "ada@example.com", Subject: "Please confirm your address", MessageID: "x1@allot",
		Text: "Open https://app.example/confirm?token=abc.def to confirm.", HTML: "<p>hi</p>"})
	if err != nil {
		t.Fatal(err)
	}
	msgs := s.Messages()
	if len(msgs) != 1 || msgs[0].Subject != "Please confirm your address" || len(msgs[0].Links) != 1 || msgs[0].Links[0] != "https://app.example/confirm?token=abc.def" {
		t.Fatalf("messages %+v", msgs)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/dev/mail", nil))
	body, _ := io.ReadAll(rec.Body)
	if !strings.Contains(string(body), "to ada@example.com") || !strings.Contains(string(body), "token=abc.def") {
		t.Errorf("page:\n%s", body)
	}
}

// A client that sends garbage neither crashes the sink nor loses what it
// had.
func TestSinkSurvivesBadInput(t *testing.T) {
	s, err := Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := smtp.SendMail(s.Addr(), nil, "a@example.com", []string{"b@example.com"}, []byte("this is not\r\n\r\na mail message")); err != nil {
		t.Fatal(err)
	}
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("x@example.com"); err == nil {
		t.Error("RCPT before MAIL accepted")
	}
	_ = c.Close()
	if got := s.Messages(); len(got) != 1 || !strings.Contains(got[0].Text, "a mail message") {
		t.Errorf("messages %+v", got)
	}
	for i := 0; i < Keep+5; i++ {
		if err := smtp.SendMail(s.Addr(), nil, "a@example.com", []string{"b@example.com"}, []byte("Subject: n\r\n\r\nbody")); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(s.Messages()); got != Keep {
		t.Errorf("kept %d messages, want %d", got, Keep)
	}
}

func splitAddr(t *testing.T, addr string) (string, int) {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	var port int
	for _, c := range addr[i+1:] {
		port = port*10 + int(c-'0')
	}
	return addr[:i], port
}
