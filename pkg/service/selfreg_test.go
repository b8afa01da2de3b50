package service_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

func TestInstanceID(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"meter-7d9f-abcde", "meter-7d9f-abcde"},
		{"laptop.local", "laptop-local"},
		{"", "unknown"},
		{string(make([]byte, 200)), ""}, // cut to 128 and checked below
	} {
		got := service.InstanceID(tc.in)
		if tc.in != "" && len(tc.in) > 128 {
			if len(got) != 128 || !events.IsToken(got) {
				t.Errorf("InstanceID(%d bytes) = %q", len(tc.in), got)
			}
			continue
		}
		if got != tc.want {
			t.Errorf("InstanceID(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// A service registers at start, again every heartbeat, and stops when
// told; a registry that is away is asked again.
func TestSelfRegistration(t *testing.T) {
	ns := runNATS(t, server.Options{})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cfg := service.Default()
	cfg.Registry.Heartbeat = 50 * time.Millisecond
	cfg.NATS.RequestTimeout = 200 * time.Millisecond

	got := make(chan events.RegisterRequest, 100)
	sub, err := nc.Subscribe(cfg.Subjects.Register(), func(m *nats.Msg) {
		var req events.RegisterRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			t.Errorf("register request %q: %v", m.Data, err)
		}
		got <- req
		_ = m.Respond([]byte(`{"ok":true,"ttl_s":60}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	sr, err := service.StartSelfRegistration(nc, cfg, service.Registration{Name: "meter", ID: "pod-1", Addr: "127.0.0.1:8080"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := events.RegisterRequest{Name: "meter", ID: "pod-1", IPv4: "127.0.0.1", Port: 8080}
	for i := range 3 {
		select {
		case req := <-got:
			if diff := cmp.Diff(want, req); diff != "" {
				t.Errorf("registration %d (-want +got):\n%s", i, diff)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("registration %d did not come", i)
		}
	}
	if err := sr.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	for len(got) > 0 {
		<-got
	}
	time.Sleep(150 * time.Millisecond)
	if len(got) != 0 {
		t.Error("heartbeats went on after Stop")
	}
	_ = sub.Unsubscribe()

	// Bad input is refused at start, naming the field.
	_, err = service.StartSelfRegistration(nc, cfg, service.Registration{Name: "a.b", ID: "x", Addr: ":8080"}, nil)
	if err == nil {
		t.Error("a bad name was accepted")
	}
	// With no registry listening the service keeps running and retries.
	sr, err = service.StartSelfRegistration(nc, cfg, service.Registration{Name: "meter", ID: "pod-1", Addr: ":8080"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sr.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}
