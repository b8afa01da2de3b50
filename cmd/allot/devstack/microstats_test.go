package devstack

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Every endpoint of every service, batched or not, counts in $SRV.STATS
// the requests it answered and the errors among them, as its callers saw
// them, and allot_request_duration_seconds has as many samples. Each
// endpoint gets malformed requests (400s) and empty ones (answered or
// refused, whatever the endpoint makes of them).
func TestMicroStatsTellTheTruth(t *testing.T) {
	opts := Options{Config: service.Default(), NATSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", SMTPAddr: "127.0.0.1:0",
		StoreDir: t.TempDir(), Auth: testAuthConfig(t)}
	opts.Config.Instance = "laptop"
	st, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	c := opts.Config.NATS
	c.URL, c.Name, c.Key = service.URL(st.NATSURL), "microstats-test", service.Secret(st.AdminKey)
	nc, err := service.ConnectNATS(t.Context(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)

	const bad, empty = 7, 3
	type count struct{ requests, errors int }
	sent := map[string]count{} // by <service>/<endpoint>
	before := map[string]count{}
	for _, name := range []string{"meter", "ratelimit", "registry", "notifier", "auth"} {
		stats := microStats(t, nc, name)
		for _, ep := range stats.Endpoints {
			before[name+"/"+ep.Name] = count{ep.NumRequests, ep.NumErrors}
		}
		if stats.Metadata["instance"] != "laptop" {
			t.Errorf("%s: metadata %v", name, stats.Metadata)
		}
		for _, ep := range microInfo(t, nc, name).Endpoints {
			subject := strings.ReplaceAll(ep.Subject, "*", "u-1")
			var n count
			for i := range bad + empty {
				body := []byte("{not json")
				if i >= bad {
					body = []byte("{}")
				}
				msg, err := nc.Request(subject, body, 5*time.Second)
				if err != nil {
					t.Fatalf("%s: %v", subject, err)
				}
				n.requests++
				if events.DecodeServiceError(msg) != nil {
					n.errors++
				}
			}
			if n.errors < bad {
				t.Errorf("%s: %d errors for %d malformed requests", subject, n.errors, bad)
			}
			sent[name+"/"+ep.Name] = n
		}
	}
	t.Logf("sent %v", sent)
	samples := durationSamples(t, st.HTTPURL)
	for _, name := range []string{"meter", "ratelimit", "registry", "notifier", "auth"} {
		for _, ep := range microStats(t, nc, name).Endpoints {
			key := name + "/" + ep.Name
			got := count{ep.NumRequests - before[key].requests, ep.NumErrors - before[key].errors}
			if got != sent[key] {
				t.Errorf("%s: counted %d requests and %d errors, sent %d and got %d errors", key, got.requests, got.errors, sent[key].requests, sent[key].errors)
			}
			if ep.NumErrors > 0 && ep.LastError == "" {
				t.Errorf("%s: no last error", key)
			}
			if ep.NumRequests > 0 && ep.AverageProcessingTime <= 0 {
				t.Errorf("%s: average processing time %v", key, ep.AverageProcessingTime)
			}
			if samples[key] != ep.NumRequests {
				t.Errorf("%s: %d samples in allot_request_duration_seconds, %d requests", key, samples[key], ep.NumRequests)
			}
		}
	}
	for _, key := range []string{"meter/credit", "meter/authorize", "meter/grants", "ratelimit/check", "ratelimit/reset",
		"registry/register", "registry/find", "registry/deregister", "notifier/verify", "auth/create"} {
		if sent[key].requests == 0 {
			t.Errorf("%s: not in $SRV.INFO", key)
		}
	}
}

// microStats is the one answer to $SRV.STATS.<name>.
func microStats(t *testing.T, nc *nats.Conn, name string) micro.Stats {
	t.Helper()
	var st micro.Stats
	microAsk(t, nc, "$SRV.STATS."+name, &st)
	return st
}

// microInfo is the one answer to $SRV.INFO.<name>.
func microInfo(t *testing.T, nc *nats.Conn, name string) micro.Info {
	t.Helper()
	var info micro.Info
	microAsk(t, nc, "$SRV.INFO."+name, &info)
	return info
}

// microAsk decodes the one answer to subject into v, and fails when a
// second one comes: one process is one instance of each service.
func microAsk(t *testing.T, nc *nats.Conn, subject string, v any) {
	t.Helper()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		t.Fatal(err)
	}
	msg, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	if err := json.Unmarshal(msg.Data, v); err != nil {
		t.Fatal(err)
	}
	if extra, err := sub.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("%s: a second answer %s", subject, extra.Data)
	}
}

// durationSamples reads allot_request_duration_seconds's samples by
// <service>/<endpoint>, over every outcome, from /metrics.
func durationSamples(t *testing.T, url string) map[string]int {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	f := families["allot_request_duration_seconds"]
	if f == nil {
		t.Fatal("/metrics has no allot_request_duration_seconds")
	}
	out := map[string]int{}
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		out[labels["service"]+"/"+labels["endpoint"]] += int(m.GetHistogram().GetSampleCount())
	}
	return out
}
