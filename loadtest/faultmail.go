package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/mail"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// mailSink is the fault suite's SMTP server: the notifier's mail goes
// here, and each usage notice received is counted under its identity,
// the notifier's task id (header X-Allot-Task, "usage:<uid>:<notice
// id>", the notice id being "<uid>.<metric>.<period start ms>.<threshold>",
// the same however often the notice is published). Two emails for one
// uid, metric and threshold within a scenario (one grant period) are a
// notice sent twice.
type mailSink struct {
	srv  *smtp.Server
	addr string

	mu      sync.Mutex
	notices map[noticeKey][]time.Time // when each email of a notice came
	other   int                       // emails that are not usage notices
	bad     []string                  // usage emails whose task id does not parse
}

// noticeKey is one notice: a threshold of a uid's grant metric.
type noticeKey struct {
	uid, metric, threshold string
}

func startMailSink() (*mailSink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("mail sink: %w", err)
	}
	s := &mailSink{addr: l.Addr().String(), notices: map[noticeKey][]time.Time{}}
	s.srv = smtp.NewServer(mailBackend{s})
	s.srv.Domain = "allot-loadtest"
	s.srv.MaxMessageBytes = 1 << 20
	s.srv.ReadTimeout, s.srv.WriteTimeout = 30*time.Second, 30*time.Second
	// A notifier killed mid-session resets its connection: expected here.
	s.srv.ErrorLog = log.New(io.Discard, "", 0)
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

func (s *mailSink) close() { _ = s.srv.Close() }

// record counts one received message from its headers.
func (s *mailSink) record(data []byte) {
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.bad = append(s.bad, "unreadable message: "+err.Error())
		return
	}
	task := msg.Header.Get("X-Allot-Task")
	if !strings.HasPrefix(task, "usage:") {
		s.other++
		return
	}
	k, err := parseNoticeTask(task)
	if err != nil {
		s.bad = append(s.bad, err.Error())
		return
	}
	s.notices[k] = append(s.notices[k], time.Now())
}

// parseNoticeTask reads a usage task id: usage:<uid>:<uid>.<metric>.<start ms>.<threshold>.
func parseNoticeTask(task string) (noticeKey, error) {
	rest, ok := strings.CutPrefix(task, "usage:")
	uid, id, ok2 := strings.Cut(rest, ":")
	parts := strings.SplitN(id, ".", 4)
	if !ok || !ok2 || uid == "" || len(parts) != 4 || parts[0] != uid || parts[1] == "" || parts[3] == "" || !digits(parts[2]) {
		return noticeKey{}, fmt.Errorf("usage email with task id %q, not usage:<uid>:<uid>.<metric>.<start>.<threshold>", task)
	}
	return noticeKey{uid: uid, metric: parts[1], threshold: parts[3]}, nil
}

// counts returns the distinct notices received and the emails beyond the
// first of each (notices sent twice), and copies of the per-notice counts.
func (s *mailSink) counts() (distinct, twice int, per map[noticeKey]int, bad []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	per = make(map[noticeKey]int, len(s.notices))
	for k, at := range s.notices {
		per[k] = len(at)
		distinct++
		twice += len(at) - 1
	}
	return distinct, twice, per, append([]string(nil), s.bad...)
}

// twice describes the notices mailed more than once: which, and when
// each copy came, in seconds since origin.
func (s *mailSink) twice(origin time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k, at := range s.notices {
		if len(at) < 2 {
			continue
		}
		when := make([]string, len(at))
		for i, t := range at {
			when[i] = fmt.Sprintf("%.2f", t.Sub(origin).Seconds())
		}
		out = append(out, fmt.Sprintf("%s of %s at %s%% mailed at %s s", k.metric, k.uid, k.threshold, strings.Join(when, ", ")))
	}
	sort.Strings(out)
	return out
}

type mailBackend struct{ s *mailSink }

func (b mailBackend) NewSession(*smtp.Conn) (smtp.Session, error) { return &mailSession{s: b.s}, nil }

type mailSession struct{ s *mailSink }

func (*mailSession) Mail(string, *smtp.MailOptions) error { return nil }
func (*mailSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (*mailSession) Reset()                               {}
func (*mailSession) Logout() error                        { return nil }

func (ss *mailSession) Data(r io.Reader) error {
	data, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return err
	}
	if len(data) == 0 {
		return errors.New("empty message")
	}
	ss.s.record(data)
	return nil
}

func digits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}
