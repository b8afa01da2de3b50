package service_test

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// runNATS starts an embedded NATS server on a free port of 127.0.0.1
// (or on opts.Port if set) and stops it when the test ends.
func runNATS(t *testing.T, opts server.Options) *server.Server {
	t.Helper()
	opts.Host = "127.0.0.1"
	if opts.Port == 0 {
		opts.Port = -1
	}
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(&opts)
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(5 * time.Second) {
		s.Shutdown()
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// closedPort returns a 127.0.0.1 address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// portOf returns the port of a host:port address.
func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// logRecorder is a slog handler keeping the message and attributes of
// each record, safe for the goroutines of NATS callbacks.
type logRecorder struct {
	mu      sync.Mutex
	records []logRecord
}

type logRecord struct {
	Level slog.Level
	Msg   string
	Attrs map[string]string
}

func newLogRecorder() (*logRecorder, *slog.Logger) {
	r := &logRecorder{}
	return r, slog.New(r)
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	lr := logRecord{Level: rec.Level, Msg: rec.Message, Attrs: map[string]string{}}
	rec.Attrs(func(a slog.Attr) bool {
		lr.Attrs[a.Key] = a.Value.Resolve().String()
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, lr)
	return nil
}

// all returns a copy of the records so far.
func (r *logRecorder) all() []logRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.records)
}

// waitFor waits up to 5s for a record with msg and returns it.
func (r *logRecorder) waitFor(t *testing.T, msg string) logRecord {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, rec := range r.all() {
			if rec.Msg == msg {
				return rec
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %q logged; got %+v", msg, r.all())
	return logRecord{}
}

// runNATSCluster starts n embedded NATS servers with JetStream, routed
// into one cluster on free ports of 127.0.0.1, and returns them once
// JetStream answers through each.
func runNATSCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	ports := make([]int, n)
	urls := make([]string, n)
	for i := range ports {
		ports[i] = portOf(t, closedPort(t))
		urls[i] = "nats-route://127.0.0.1:" + strconv.Itoa(ports[i])
	}
	servers := make([]*server.Server, n)
	for i := range servers {
		servers[i] = runNATS(t, server.Options{ServerName: "n" + strconv.Itoa(i), JetStream: true, StoreDir: t.TempDir(),
			Cluster: server.ClusterOpts{Name: "t", Host: "127.0.0.1", Port: ports[i]}, Routes: server.RoutesFromStr(strings.Join(urls, ","))})
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range servers {
		js := jsOf(t, s.ClientURL())
		for {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			_, err := js.AccountInfo(ctx)
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("JetStream not ready on the cluster: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return servers
}

// jsOf connects to url (with opts) for the test and returns its
// JetStream context.
func jsOf(t *testing.T, url string, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
