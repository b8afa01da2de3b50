package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
)

// Registration is what one service instance tells the registry about
// itself.
type Registration struct {
	// Name is the service, e.g. "meter".
	Name string
	// ID is the instance; InstanceID turns cfg.Instance into one.
	ID string
	// Addr is the host:port it serves HTTP on (/metrics, the probes); an
	// unspecified host is replaced by this machine's first non-loopback
	// IPv4 address.
	Addr string
	// Endpoints are the top-level resources it serves over HTTP; allot's
	// own services serve none.
	Endpoints []string
	// PublicURL is the URL that serves Endpoints; empty for none.
	PublicURL string
}

// SelfRegistration keeps one instance registered: it registers at start
// and again every registry.heartbeat, which renews the TTL. It does not
// deregister: a stopped instance expires after registry.ttl, and the
// registry publishes that.
type SelfRegistration struct {
	cancel context.CancelFunc
	done   chan struct{}
	client *events.Client
	req    events.RegisterRequest
	log    *slog.Logger
}

// StartSelfRegistration registers reg through the registry on nc and
// keeps it registered until Stop. A registry that does not answer is
// logged and asked again, never an error: the service runs without it.
func StartSelfRegistration(nc *nats.Conn, cfg Config, reg Registration, log *slog.Logger) (*SelfRegistration, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	req, err := registerRequest(reg)
	if err != nil {
		return nil, err
	}
	c, err := events.NewClient(nc, events.ClientOptions{Subjects: cfg.Subjects, Timeout: cfg.NATS.RequestTimeout})
	if err != nil {
		return nil, fmt.Errorf("service: self-registration: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &SelfRegistration{cancel: cancel, done: make(chan struct{}), client: c, req: req, log: log}
	go func() {
		defer close(s.done)
		heartbeat(ctx, c, req, cfg.Registry.Heartbeat, log.With("registry_name", req.Name, "registry_id", req.ID))
	}()
	return s, nil
}

// heartbeat registers now and every interval; after a failure it tries
// again sooner (1s, doubling up to interval).
func heartbeat(ctx context.Context, c *events.Client, req events.RegisterRequest, interval time.Duration, log *slog.Logger) {
	retry := time.Second
	failing := false
	for {
		wait := interval
		_, err := c.Register(ctx, req)
		switch {
		case err == nil:
			if failing {
				log.Info("registered in the registry again")
			}
			failing, retry = false, time.Second
		case ctx.Err() != nil:
			return
		default:
			if !failing {
				log.Warn("cannot register in the registry; retrying", "err", err)
			} else {
				log.Debug("cannot register in the registry; retrying", "err", err)
			}
			failing = true
			wait = min(retry, interval)
			retry *= 2
			if errors.Is(err, events.ErrBadRequest) || errors.Is(err, events.ErrConflict) {
				wait = interval // asking sooner will not help
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Stop stops the heartbeats; the registration expires on its own.
func (s *SelfRegistration) Stop(ctx context.Context) error {
	s.cancel()
	select {
	case <-s.done:
	case <-ctx.Done():
		return fmt.Errorf("service: self-registration still busy at shutdown: %w", ctx.Err())
	}
	// Leave the registry at once rather than after the TTL. A registry that
	// does not answer is no reason to fail the shutdown: the entry expires.
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := s.client.Deregister(dctx, s.req.Name, s.req.ID); err != nil {
		s.log.Info("not deregistered; the registration will expire", "name", s.req.Name, "id", s.req.ID, "err", err)
	}
	return nil
}

// InstanceID turns an instance name (a hostname or pod name) into a
// registry id: every character outside A-Z a-z 0-9 _ - becomes '-', and
// it is cut to 128 characters.
func InstanceID(instance string) string {
	b := []byte(instance)
	if len(b) > events.MaxTokenLen {
		b = b[:events.MaxTokenLen]
	}
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return "unknown"
	}
	return string(b)
}

func registerRequest(reg Registration) (events.RegisterRequest, error) {
	host, portText, err := net.SplitHostPort(reg.Addr)
	if err != nil {
		return events.RegisterRequest{}, fmt.Errorf("service: self-registration: address %q: %w", reg.Addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return events.RegisterRequest{}, fmt.Errorf("service: self-registration: port %q: %w", portText, err)
	}
	req := events.RegisterRequest{Name: reg.Name, ID: reg.ID, Endpoints: reg.Endpoints, IPv4: hostIPv4(host),
		Port: port, PublicURL: reg.PublicURL}
	if err := req.Validate(); err != nil {
		return req, fmt.Errorf("service: self-registration: %w", err)
	}
	return req, nil
}

// hostIPv4 returns host when it is a specific IPv4 address, else this
// machine's first non-loopback IPv4 address (the pod's, in Kubernetes),
// else 127.0.0.1.
func hostIPv4(host string) string {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil && a.Is4() && !a.IsUnspecified() {
		return a.String()
	}
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, ad := range addrs {
			if n, ok := ad.(*net.IPNet); ok {
				if ip4 := n.IP.To4(); ip4 != nil && !ip4.IsLoopback() {
					return ip4.String()
				}
			}
		}
	}
	return "127.0.0.1"
}
