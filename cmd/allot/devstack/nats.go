package devstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/allot/allot/services/auth"
	"github.com/nats-io/nats-server/v2/server"
)

func (s *Stack) startNATS(opts Options, callout *auth.ServerConfig, log *slog.Logger) (string, error) {
	addr := opts.NATSAddr
	if addr == "" {
		addr = "127.0.0.1:4222"
	}
	addr, note := freeAddr(addr, "NATS")
	if note != "" {
		s.Notes = append(s.Notes, note)
	}
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("devstack: NATS address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return "", fmt.Errorf("devstack: NATS address %q: %w", addr, err)
	}
	if port == 0 {
		port = -1 // nats-server's "any free port"
	}
	dir := opts.StoreDir
	if dir == "" {
		dir, err = os.MkdirTemp("", "allot-dev-jetstream-")
		if err != nil {
			return "", fmt.Errorf("devstack: JetStream directory: %w", err)
		}
		s.closers.Push("jetstream directory", func(context.Context) error { return os.RemoveAll(dir) })
	}
	s.StoreDir = dir
	sopts := &server.Options{}
	if callout != nil {
		blocks, err := callout.Render()
		if err != nil {
			return "", fmt.Errorf("devstack: %w", err)
		}
		if err := sopts.ProcessConfigString(blocks); err != nil {
			return "", fmt.Errorf("devstack: embedded NATS with auth callout: %w", err)
		}
	}
	sopts.ServerName, sopts.Host, sopts.Port = "allot-dev", host, port
	sopts.JetStream, sopts.StoreDir = true, dir
	// nats-server sets aside every stream's max_bytes against its store
	// limit when it creates the stream, and that limit defaults to 75% of
	// the free disk: the default caps (10 GiB) could not be created on a
	// laptop with less free than about 14 GB. The dev stack writes little;
	// the disk, not a reservation, is its limit.
	sopts.JetStreamMaxStore = devMaxStore
	sopts.NoLog, sopts.NoSigs = true, true
	ns, err := server.NewServer(sopts)
	if err != nil {
		return "", fmt.Errorf("devstack: embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return "", errors.New("devstack: embedded NATS did not start within 10s")
	}
	s.closers.Push("embedded nats-server", func(context.Context) error {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil
	})
	log.Debug("embedded nats-server started", "url", ns.ClientURL(), "store", dir)
	return ns.ClientURL(), nil
}

// devMaxStore is the embedded server's JetStream file store limit: far
// past what a laptop's streams reserve (streams: max_bytes and the rest).
const devMaxStore = 4 << 40 // 4 TiB
