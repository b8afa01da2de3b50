package devstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/notifier"
	"github.com/allot/allot/services/notifier/devmail"
	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
)

// startMailSink starts devmail and points the notifier's smtp at it.
func (s *Stack) startMailSink(opts Options, smtp *notifier.SMTPConfig, log *slog.Logger) error {
	addr := opts.SMTPAddr
	if addr == "" {
		addr = "127.0.0.1:1025"
	}
	addr, note := freeAddr(addr, "SMTP")
	if note != "" {
		s.Notes = append(s.Notes, note)
	}
	sink, err := devmail.Start(addr, log.With("component", "devmail"))
	if err != nil {
		return fmt.Errorf("devstack: %w", err)
	}
	s.closers.Push("mail sink", func(context.Context) error { return sink.Close() })
	host, portText, err := net.SplitHostPort(sink.Addr())
	if err != nil {
		return fmt.Errorf("devstack: mail sink address: %w", err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return fmt.Errorf("devstack: mail sink address: %w", err)
	}
	*smtp = notifier.SMTPConfig{Host: host, Port: port, TLS: "none", Auth: "none",
		From: smtp.From, FromName: smtp.FromName, Timeout: smtp.Timeout}
	s.HTTP.Handle("/dev/mail", sink)
	// The confirmation links of the default notifier.confirm_url land
	// here: the page verifies the token, as an app's page would.
	s.HTTP.Handle("GET /confirm", http.HandlerFunc(s.confirmPage))
	s.SMTPAddr = sink.Addr()
	return nil
}

// confirmPage verifies the token of a confirmation link through
// notify.verify and shows the answer.
func (s *Stack) confirmPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	c, err := events.NewClient(s.NATS, events.ClientOptions{})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	reply, err := c.Verify(r.Context(), r.URL.Query().Get("token"))
	switch {
	case errors.Is(err, events.ErrInvalid):
		http.Error(w, "no token in the link: "+err.Error(), http.StatusBadRequest)
	case err != nil:
		http.Error(w, "the notifier did not answer: "+err.Error(), http.StatusBadGateway)
	case reply.Status == events.VerifyValid:
		fmt.Fprintf(w, "Confirmed: %s is the address of %s.\n", reply.Email, reply.UID)
	default:
		w.WriteHeader(http.StatusConflict)
		fmt.Fprintf(w, "Not confirmed: the link is %s.\n", reply.Status)
	}
}

// mountAsynqmon serves asynq's monitoring UI at /asynqmon/ when the
// Redis is one node (asynqmon takes an address, not a client).
func (s *Stack) mountAsynqmon(cfg service.Config, opts Options, log *slog.Logger) {
	var conn asynq.RedisConnOpt
	switch {
	case len(cfg.Redis.Addrs) > 0:
		s.Notes = append(s.Notes, "asynqmon: not mounted: it is wired for a single Redis node here, and redis.addrs names several")
		return
	default:
		o, err := asynq.ParseRedisURI(cfg.Redis.URL.Reveal())
		if err != nil {
			log.Warn("asynqmon not mounted", "err", err)
			return
		}
		conn = o
	}
	h := asynqmon.New(asynqmon.Options{RootPath: "/asynqmon", RedisConnOpt: conn, ReadOnly: false})
	s.closers.Push("asynqmon", func(context.Context) error { return h.Close() })
	s.HTTP.Handle("/asynqmon/", h)
	s.Asynqmon = true
}
