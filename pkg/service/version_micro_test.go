package service_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// A service's micro version is this build's unless it names one.
func TestEndpointsVersionIsTheBuild(t *testing.T) {
	s := runNATS(t, server.Options{})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	eps, err := service.StartEndpoints(nc, service.EndpointsConfig{Name: "echo", Group: "test", Handlers: 1},
		[]service.Endpoint{{Name: "echo", Subject: "echo", Handler: func(req micro.Request) { _ = req.Respond(nil) }}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eps.Stop)
	msg, err := nc.Request("$SRV.INFO.echo", nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	if want := service.Build().Version; info.Version != want {
		t.Errorf("$SRV.INFO version %q, want %q", info.Version, want)
	}
}
