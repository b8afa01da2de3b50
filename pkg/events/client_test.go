package events

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// responder is a small stand-in for the allot services: a real micro
// service on the embedded server that decodes each request as a service
// will and answers from a table.
func responder(t *testing.T, nc *nats.Conn) {
	t.Helper()
	svc, err := micro.AddService(nc, micro.Config{Name: "fake", Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	s := DefaultSubjects()
	add := func(subject string, h micro.HandlerFunc) {
		t.Helper()
		if err := svc.AddEndpoint(strings.NewReplacer(".", "_", "*", "any").Replace(subject), h, micro.WithEndpointSubject(subject)); err != nil {
			t.Fatal(err)
		}
	}
	resetsAt := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	add(s.Credit("*"), func(r micro.Request) {
		var req CreditRequest
		if err := DecodeRequest(r.Data(), &req); err != nil {
			_ = RespondError(r, err)
			return
		}
		uid, _ := ParseToken(r.Subject(), s.Meter+".credit")
		switch {
		case uid == "down":
			_ = RespondError(r, NewServiceError(CodeUnavailable, "", "redis: connection refused"))
		case req.Metric == "":
			_ = Respond(r, CreditsReply{UID: uid, Credits: []Credit{{UID: uid, Metric: "photo_daily_total", Limit: 200, Used: 3, Remaining: 197, Period: "day", ResetsAt: resetsAt}}})
		case req.Metric == "photo_daily_total":
			_ = Respond(r, Credit{UID: uid, Metric: req.Metric, Limit: 200, Used: 3, Remaining: 197, Period: "day", ResetsAt: resetsAt})
		default:
			_ = RespondError(r, NewServiceError(CodeNotFound, "metric", "unknown metric %q", req.Metric))
		}
	})
	add(s.Authorize("*"), func(r micro.Request) {
		var req AuthorizeRequest
		if err := DecodeRequest(r.Data(), &req); err != nil {
			_ = RespondError(r, err)
			return
		}
		if req.Amount > 10 {
			serr := NewServiceError(CodeOverLimit, "amount", "over the limit of %s", req.Metric)
			_ = r.Error(serr.StatusText(), serr.Message, []byte(`{"error":{"code":"over_limit","message":"over"},"allowed":false,"remaining":2,"resets_at":"2026-11-23T00:00:00Z"}`))
			return
		}
		_ = Respond(r, AuthorizeReply{Allowed: true, Remaining: 10 - req.Amount, ResetsAt: resetsAt})
	})
	add(s.Grants("*"), func(r micro.Request) {
		var req GrantsRequest
		if err := DecodeRequest(r.Data(), &req); err != nil {
			_ = RespondError(r, err)
			return
		}
		grants := map[string]float64{"photo_daily_total": 200}
		for k, v := range req.Set {
			grants[k] = v
		}
		_ = Respond(r, GrantsReply{UID: "u-1", Grants: grants})
	})
	add(s.Check("*"), func(r micro.Request) {
		var req CheckRequest
		if err := DecodeRequest(r.Data(), &req); err != nil {
			_ = RespondError(r, err)
			return
		}
		if req.Service == "slow" {
			time.Sleep(300 * time.Millisecond)
		}
		cost := req.CostOrDefault()
		_ = Respond(r, CheckReply{Allowed: cost <= 5, Limit: 5, Remaining: max(0, 5-cost), ResetAfterMs: 1000})
	})
	add(s.Reset("*"), func(r micro.Request) { _ = Respond(r, OKReply{OK: true}) })
	add(s.Register(), func(r micro.Request) {
		var req RegisterRequest
		if err := DecodeRequest(r.Data(), &req); err != nil {
			_ = RespondError(r, err)
			return
		}
		_ = Respond(r, RegisterReply{OK: true, TTLS: 60})
	})
	add(s.Find("*"), func(r micro.Request) {
		_ = Respond(r, FindReply{Instances: []Instance{{Name: "media", ID: "m1", Endpoints: []string{"photo"}, IPv4: "10.0.0.1", Port: 80}}, URLMap: map[string]string{"photo": "http://10.0.0.1:80"}})
	})
	add(s.Find(""), func(r micro.Request) { _ = Respond(r, FindReply{Instances: []Instance{}, URLMap: map[string]string{}}) })
	add("meter.broken.*", func(r micro.Request) { _ = r.Respond([]byte("not json")) })
}

func newTestClient(t *testing.T, timeout time.Duration) (*Client, *nats.Conn) {
	t.Helper()
	s := startServer(t, "", 0)
	nc := connect(t, s.ClientURL())
	responder(t, nc)
	c, err := NewClient(nc, ClientOptions{Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return c, nc
}

func TestClientReplies(t *testing.T) {
	c, _ := newTestClient(t, 2*time.Second)
	ctx := t.Context()
	resetsAt := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)

	credit, err := c.Credit(ctx, "u-1", "photo_daily_total")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Credit{UID: "u-1", Metric: "photo_daily_total", Limit: 200, Used: 3, Remaining: 197, Period: "day", ResetsAt: resetsAt}, credit); diff != "" {
		t.Errorf("Credit (-want +got):\n%s", diff)
	}
	all, err := c.Credits(ctx, "u-1")
	if err != nil || len(all.Credits) != 1 || all.UID != "u-1" {
		t.Errorf("Credits = %+v, %v", all, err)
	}
	auth, err := c.Authorize(ctx, "u-1", AuthorizeRequest{Metric: "email_daily_total", Amount: 1})
	if err != nil || !auth.Allowed || auth.Remaining != 9 {
		t.Errorf("Authorize = %+v, %v", auth, err)
	}
	grants, err := c.Grants(ctx, "u-1", GrantsRequest{Set: map[string]float64{"albums": 20}})
	if err != nil || grants.Grants["albums"] != 20 {
		t.Errorf("Grants = %+v, %v", grants, err)
	}
	check, err := c.Check(ctx, "u-1", CheckRequest{Service: "upload", Cost: Cost(0)})
	if err != nil || !check.Allowed || check.Remaining != 5 {
		t.Errorf("Check peek = %+v, %v", check, err)
	}
	check, err = c.Check(ctx, "u-1", CheckRequest{Service: "upload", Cost: Cost(6)})
	if err != nil || check.Allowed {
		t.Errorf("Check over the limit = %+v, %v; want a denial without error", check, err)
	}
	if err := c.Reset(ctx, "u-1", "upload"); err != nil {
		t.Errorf("Reset = %v", err)
	}
	reg, err := c.Register(ctx, RegisterRequest{Name: "media", ID: "m1", IPv4: "10.0.0.1", Port: 80})
	if err != nil || !reg.OK || reg.TTLS != 60 {
		t.Errorf("Register = %+v, %v", reg, err)
	}
	found, err := c.Find(ctx, "media")
	if err != nil || len(found.Instances) != 1 || found.URLMap["photo"] == "" {
		t.Errorf("Find = %+v, %v", found, err)
	}
	if _, err := c.Find(ctx, ""); err != nil {
		t.Errorf("Find all = %v", err)
	}
}

func TestClientErrors(t *testing.T) {
	c, nc := newTestClient(t, 200*time.Millisecond)
	ctx := t.Context()

	_, err := c.Credit(ctx, "u-1", "nope")
	var serr *ServiceError
	if !errors.Is(err, ErrNotFound) || !errors.As(err, &serr) || serr.Status != 404 || serr.Field != "metric" || !strings.Contains(serr.Message, `unknown metric "nope"`) {
		t.Errorf("unknown metric: %v (%+v)", err, serr)
	}
	if _, err := c.Credit(ctx, "down", "photo_daily_total"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("backend down: %v, want ErrUnavailable", err)
	}
	auth, err := c.Authorize(ctx, "u-1", AuthorizeRequest{ID: "a-1", Metric: "m", Amount: 11})
	if !errors.Is(err, ErrOverLimit) || auth.Allowed || auth.Remaining != 2 || auth.ResetsAt.IsZero() {
		t.Errorf("over limit: %+v, %v; want the decision and ErrOverLimit", auth, err)
	}
	if _, err := c.Check(ctx, "u-1", CheckRequest{Service: "slow"}); !errors.Is(err, ErrTimeout) {
		t.Errorf("slow service: %v, want ErrTimeout", err)
	}
	if err := c.request(ctx, "nobody.listens", CreditRequest{}, &Credit{}); !errors.Is(err, ErrNoResponders) {
		t.Errorf("no service: %v, want ErrNoResponders", err)
	}
	if err := c.request(ctx, "meter.broken.u", CreditRequest{}, &Credit{}); err == nil || !strings.Contains(err.Error(), "decode reply") {
		t.Errorf("garbled reply: %v", err)
	}
	// A 400 from the service names the field.
	msg, err := nc.Request(DefaultSubjects().Check("u-1"), []byte(`{"service":"x","cost":-4}`), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	bad := DecodeServiceError(msg)
	if bad == nil || bad.Status != 400 || bad.Field != "cost" || !errors.Is(bad, ErrBadRequest) {
		t.Errorf("bad request reply = %+v", bad)
	}
}

// Bad input is refused before it reaches the wire.
func TestClientRefusesBadInputLocally(t *testing.T) {
	c, _ := newTestClient(t, time.Second)
	ctx := t.Context()
	for name, call := range map[string]func() error{
		"uid":          func() error { _, err := c.Credit(ctx, "u.1", "m"); return err },
		"empty uid":    func() error { _, err := c.Credits(ctx, ""); return err },
		"metric":       func() error { _, err := c.Credit(ctx, "u", "a b"); return err },
		"amount":       func() error { _, err := c.Authorize(ctx, "u", AuthorizeRequest{Metric: "m", Amount: -1}); return err },
		"cost":         func() error { _, err := c.Check(ctx, "u", CheckRequest{Cost: Cost(-1)}); return err },
		"service":      func() error { return c.Reset(ctx, "u", "a*") },
		"grant":        func() error { _, err := c.Grants(ctx, "u", GrantsRequest{Unset: []string{""}}); return err },
		"registration": func() error { _, err := c.Register(ctx, RegisterRequest{Name: "n"}); return err },
		"find name":    func() error { _, err := c.Find(ctx, "a.b"); return err },
	} {
		if err := call(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestNilConnections(t *testing.T) {
	if _, err := NewClient(nil, ClientOptions{}); err == nil {
		t.Error("NewClient(nil) succeeded")
	}
	if _, err := NewPublisher(nil, PublisherOptions{}); err == nil {
		t.Error("NewPublisher(nil) succeeded")
	}
	if _, err := NewAsyncPublisher(nil, AsyncOptions{}); err == nil {
		t.Error("NewAsyncPublisher(nil) succeeded")
	}
}

// A request whose reply never comes ends at the client's Timeout even
// when the caller's context has a later deadline (an asynq task's 30
// minutes, say): a service that died holding the request must not hold
// the caller until then. Plain and batched.
func TestClientTimeoutBoundsALaterDeadline(t *testing.T) {
	s := startServer(t, "", 0)
	nc := connect(t, s.ClientURL())
	subj := DefaultSubjects()
	subj.Meter = "mute"
	// Takes every request in and never answers, as a killed service does.
	sub, err := nc.Subscribe("mute.>", func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			c, err := NewClient(nc, ClientOptions{Subjects: subj, Timeout: 100 * time.Millisecond, Batch: BatchOptions{Enabled: batch}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			_, err = c.Credit(ctx, "u-1", "photo_daily_total")
			if !errors.Is(err, ErrTimeout) {
				t.Fatalf("Credit = %v, want ErrTimeout", err)
			}
			if ctx.Err() != nil {
				t.Fatalf("Credit returned only when the caller's deadline passed (%v), not at the client's timeout", ctx.Err())
			}
		})
	}
}
