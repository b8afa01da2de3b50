package devstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/usage"
	"github.com/allot/allot/services/auth"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Every service's metrics, as allot dev serves them on its one /metrics
// (each binary's own registry holds a subset of these, through the same
// code), pass client_golang's promlint: counters end in _total and
// nothing else does, units are base units, every metric has help. The
// stack is driven first, good requests and bad, so the labelled series
// and the notifier's queues exist.
func TestMetricsPassPromlint(t *testing.T) {
	for _, withAuth := range []bool{false, true} {
		t.Run(fmt.Sprintf("auth=%v", withAuth), func(t *testing.T) {
			// Every kind of usage series too: per uid, and an instance gauge.
			sec := DefaultSections()
			sec.Meter.ExportPerUID = true
			sec.Usage.Metrics["queue_depth"] = usage.MetricConfig{Style: usage.StyleGauge, Scope: usage.ScopeInstance, Help: "Jobs waiting"}
			opts := Options{Config: service.Default(), Sections: &sec, NATSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", SMTPAddr: "127.0.0.1:0", StoreDir: t.TempDir()}
			opts.Config.Instance = "laptop"
			if withAuth {
				opts.Auth = testAuthConfig(t)
			}
			st, err := Start(t.Context(), opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = st.Close(context.Background()) })
			drive(t, st, opts.Config)

			resp, err := http.Get(st.HTTPURL + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /metrics: %s", resp.Status)
			}
			text, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			parser := expfmt.NewTextParser(model.UTF8Validation)
			families, err := parser.TextToMetricFamilies(bytes.NewReader(text))
			if err != nil {
				t.Fatal(err)
			}
			problems, err := promlint.New(bytes.NewReader(text)).Lint()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("promlint: %s: %s", p.Metric, p.Text)
			}
			// A scrape missing a service's metrics would pass the lint
			// without checking them.
			want := []string{"allot_build_info", "allot_meter_events_total", "allot_ratelimit_decision_seconds",
				"allot_usage_api_calls_total", "allot_usage_queue_depth", "allot_grant_used", "allot_meter_consumer_lag_seconds",
				"allot_ratelimit_peeks_total", "allot_ratelimit_near_limit_total", "allot_ratelimit_over_limit_total",
				"allot_registry_instances", "allot_notifier_emails_sent_total", "asynq_queue_tasks",
				"asynq_tasks_processed_total", "allot_mutex_acquisitions_total", "go_goroutines", "process_start_time_seconds",
				"allot_dependency_up", "allot_meter_rebuilds_total", "allot_meter_rebuild_progress_ratio"}
			if withAuth {
				want = append(want, "allot_auth_decisions_total", "allot_auth_requests_total")
			}
			for _, name := range want {
				if families[name] == nil {
					t.Errorf("/metrics has no %s", name)
				}
			}
		})
	}
}

// testAuthConfig is the auth section allot dev runs with: the shipped
// roles, a random issuer and system password.
func testAuthConfig(t *testing.T) *auth.Config {
	t.Helper()
	cfg, err := auth.DefaultConfig()
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := issuer.Seed()
	cfg.IssuerSeed, cfg.SysPassword = service.Secret(seed), "a-system-password-for-this-test-only"
	return &cfg
}

// drive sends st good and bad traffic for every service: events (one
// dead-lettered), every request endpoint, a confirmation email and a
// token verification, and waits for the email and the applied event.
func drive(t *testing.T, st *Stack, cfg service.Config) {
	t.Helper()
	ctx := t.Context()
	nc := st.NATS
	if st.AdminKey != "" {
		c := cfg.NATS
		c.URL, c.Name, c.Key = service.URL(st.NATSURL), "promlint-test", service.Secret(st.AdminKey)
		var err error
		if nc, err = service.ConnectNATS(ctx, c, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
	}
	pub, err := events.NewPublisher(nc, events.PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []events.Event{
		events.NewUsage("u-1", "photo_daily_total", 1),
		events.NewUsage("u-1", "api_calls_total", 1),
		events.NewUsage("u-1", "queue_depth", 3),
	} {
		if _, err := pub.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: cfg.Subjects.UsageFor("u-1"), Data: []byte("not json")}); err != nil {
		t.Fatal(err)
	}
	c, err := events.NewClient(nc, events.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var refused *events.ServiceError
	expect := func(what string, err error, wantRefusal bool) {
		t.Helper()
		switch {
		case wantRefusal && !errors.As(err, &refused):
			t.Errorf("%s: got %v, want a refusal", what, err)
		case !wantRefusal && err != nil:
			t.Errorf("%s: %v", what, err)
		}
	}
	_, err = c.Credit(ctx, "u-1", "photo_daily_total")
	expect("credit", err, false)
	_, err = c.Credit(ctx, "u-1", "bogus")
	expect("credit of an unknown metric", err, true)
	_, err = c.Authorize(ctx, "u-1", events.AuthorizeRequest{ID: "a-1", Metric: "photo_daily_total", Amount: 1})
	expect("authorize", err, false)
	_, err = c.Grants(ctx, "u-1", events.GrantsRequest{})
	expect("grants", err, false)
	_, err = c.Check(ctx, "u-1", events.CheckRequest{Cost: events.Cost(1)})
	expect("check", err, false)
	_, err = c.Check(ctx, "u-1", events.CheckRequest{Cost: events.Cost(0)})
	expect("peek", err, false)
	// u-2 at its limit: near it, then over it.
	_, err = c.Grants(ctx, "u-2", events.GrantsRequest{Set: map[string]float64{"ratelimit": 1}})
	expect("set u-2's ratelimit grant", err, false)
	for range 2 {
		_, _ = c.Check(ctx, "u-2", events.CheckRequest{Cost: events.Cost(1)})
	}
	_, err = c.Check(ctx, "u-1", events.CheckRequest{Service: "bogus"})
	expect("check of an unknown service", err, true)
	expect("reset", c.Reset(ctx, "u-1", "bogus"), true)
	_, err = c.Find(ctx, "")
	expect("find", err, false)
	_, err = c.Verify(ctx, "not-a-token")
	expect("verify", err, false)
	if st.AdminKey != "" {
		_, err = c.ListKeys(ctx)
		expect("list keys", err, false)
	}
	if _, err := events.RequestConfirmation(ctx, js, cfg.Subjects, "u-1", events.ConfirmRequest{ID: "c-1", Email: "ada@example.com"}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		credit, err := c.Credit(ctx, "u-1", "photo_daily_total")
		// The notifier counts a sent email after the SMTP server has it:
		// wait for the count too, not only the mail.
		if err == nil && credit.Used >= 2 && strings.Contains(get(t, st.HTTPURL+"/dev/mail"), "to ada@example.com") &&
			strings.Contains(get(t, st.HTTPURL+"/metrics"), "allot_notifier_emails_sent_total{") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the event was not applied or the email not sent: %+v %v", credit, err)
		}
	}
}
