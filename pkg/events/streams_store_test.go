package events

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// A server whose JetStream store cannot hold the streams' caps refuses to
// create them; the error says why and what to change, not only the
// server's "insufficient storage resources".
func TestEnsureStreamsPastTheStore(t *testing.T) {
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		JetStreamMaxStore: 64 << 20, NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready within 10s")
	}
	t.Cleanup(s.Shutdown)
	js, err := jetstream.New(connect(t, s.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	err = EnsureStreams(t.Context(), js, DefaultSubjects(), DefaultStreamConfig())
	if err == nil {
		t.Fatal("EnsureStreams with 10 GiB of caps on a 64 MiB store: no error")
	}
	for _, want := range []string{"ensure stream USAGE", "insufficient storage resources", "max_bytes 8589934592", "max_file_store", "raise the limit or lower the caps"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// Caps that fit are created.
	cfg := DefaultStreamConfig()
	cfg.MaxBytes, cfg.DeadMaxBytes, cfg.NotifyMaxBytes = 16<<20, 8<<20, 8<<20
	if err := EnsureStreams(t.Context(), js, DefaultSubjects(), cfg); err != nil {
		t.Fatalf("EnsureStreams with 32 MiB of caps on a 64 MiB store: %v", err)
	}
}
