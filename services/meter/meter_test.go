package meter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/pkg/usage"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// env is a meter on an embedded NATS and miniredis.
type env struct {
	t      *testing.T
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	mr     *miniredis.Miniredis
	rdb    redis.UniversalClient
	reg    *prometheus.Registry
	meter  *Meter
	pub    *events.Publisher
	client *events.Client
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Instance = "test"
	cfg.Streams.Memory = true
	cfg.Streams.MaxBytes, cfg.Streams.DeadMaxBytes, cfg.Streams.NotifyMaxBytes = 64<<20, 16<<20, 16<<20
	cfg.Meter.RetryDelay = 100 * time.Millisecond
	cfg.Meter.Handlers = 2
	cfg.NATS.RequestTimeout = 500 * time.Millisecond
	cfg.Usage.Metrics["queue_depth"] = usage.MetricConfig{Style: usage.StyleGauge, Scope: usage.ScopeInstance}
	cfg.Usage.Metrics["jobs_total"] = usage.MetricConfig{Style: usage.StyleCounter, Scope: usage.ScopeGlobal, Labels: []string{"kind"}}
	cfg.Usage.Metrics["tiny_daily_total"] = usage.MetricConfig{Style: usage.StyleGrant, Period: usage.PeriodDay, Align: usage.AlignCalendar, Notify: []float64{50, 100}}
	cfg.Usage.Grants["tiny_daily_total"] = 4
	return cfg
}

func startEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond, ReadTimeout: 5 * time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	return startEnvOn(t, cfg, rdb, mr)
}

// startEnvOn starts a meter on an embedded NATS and rdb, under
// cfg.Redis.KeyPrefix; mr is rdb's miniredis, or nil for a real Redis.
func startEnvOn(t *testing.T, cfg Config, rdb redis.UniversalClient, mr *miniredis.Miniredis) *env {
	t.Helper()
	nc, err := nats.Connect(testenv.EmbeddedNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	e := &env{t: t, cfg: cfg, nc: nc, js: js, mr: mr, rdb: rdb, reg: prometheus.NewRegistry()}
	e.start()
	e.pub, _ = events.NewPublisher(nc, events.PublisherOptions{Source: "test"})
	e.client, _ = events.NewClient(nc, events.ClientOptions{Timeout: 2 * time.Second})
	return e
}

func (e *env) start() {
	e.t.Helper()
	m, err := Start(e.t.Context(), e.cfg, Deps{NATS: e.nc, Redis: e.rdb, Registerer: e.reg, Log: slog.New(slog.NewTextHandler(testLogOutput(), nil))})
	if err != nil {
		e.t.Fatalf("Start: %v", err)
	}
	e.meter = m
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = m.Stop(ctx)
	})
}

func (e *env) publish(ev events.Event) {
	e.t.Helper()
	if _, err := e.pub.Publish(e.t.Context(), ev); err != nil {
		e.t.Fatalf("publish: %v", err)
	}
}

// publishRaw puts bytes on a usage subject as an app that ignores the
// contract might.
func (e *env) publishRaw(subject string, body []byte, id string) {
	e.t.Helper()
	msg := nats.NewMsg(subject)
	msg.Data = body
	if id != "" {
		msg.Header.Set(events.MsgIDHeader, id)
	}
	if _, err := e.js.PublishMsg(e.t.Context(), msg); err != nil {
		e.t.Fatalf("publish raw to %s: %v", subject, err)
	}
}

// waitIdle waits until the meter has acked everything in the stream: its
// ack floor has reached the stream's last sequence.
func (e *env) waitIdle() {
	e.t.Helper()
	ctx := e.t.Context()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		st, err := e.js.Stream(ctx, e.cfg.Streams.Usage)
		if err != nil {
			e.t.Fatal(err)
		}
		sinfo, err := st.Info(ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		caughtUp := true
		for _, name := range e.cfg.consumerNames() {
			c, err := e.js.Consumer(ctx, e.cfg.Streams.Usage, name)
			if err != nil {
				caughtUp = false
				break
			}
			info, err := c.Info(ctx)
			// Partitioned, a consumer's floor is its partition's last
			// event: nothing pending and nothing unacked says it is done.
			done := err == nil && info.NumAckPending == 0 &&
				(info.AckFloor.Stream >= sinfo.State.LastSeq || e.cfg.Streams.Partitions > 0 && info.NumPending == 0)
			if !done {
				caughtUp = false
				break
			}
		}
		if caughtUp {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatal("meter did not catch up within 15s")
}

func ev(uid, metric string, value float64, id string) events.Event {
	e := events.NewUsage(uid, metric, value)
	e.ID = id
	return e
}

func TestEventsBecomeCredit(t *testing.T) {
	e := startEnv(t, testConfig())
	for i := range 5 {
		e.publish(ev("u-1", "photo_daily_total", 1, fmt.Sprint("p", i)))
	}
	e.publish(ev("u-1", "photo_daily_total", 1, "p0"))                                           // the stream drops it
	e.publishRaw("usage.u-1", mustEvent(t, "u-1", "photo_daily_total", 1, "p1"), "other-msg-id") // the stream keeps it, the meter drops it
	e.waitIdle()

	c, err := e.client.Credit(t.Context(), "u-1", "photo_daily_total")
	if err != nil {
		t.Fatal(err)
	}
	if c.Used != 5 || c.Limit != 200 || c.Remaining != 195 || c.Overage != 0 || c.Period != "day" || c.ResetsAt.IsZero() {
		t.Errorf("credit = %+v", c)
	}
	all, err := e.client.Credits(t.Context(), "u-1")
	if err != nil || len(all.Credits) < 7 {
		t.Fatalf("credits = %+v, %v", all, err)
	}
	if got := testutil.ToFloat64(e.meter.metrics.events.WithLabelValues("applied")); got != 5 {
		t.Errorf("applied = %v, want 5", got)
	}
	if got := testutil.ToFloat64(e.meter.metrics.events.WithLabelValues("duplicate")); got != 1 {
		t.Errorf("duplicates = %v, want 1", got)
	}
	// A grant never used: rolling, so no reset time yet.
	c, err = e.client.Credit(t.Context(), "u-new", "video_daily_total")
	if err != nil || c.Used != 0 || c.Remaining != 50 || !c.ResetsAt.IsZero() {
		t.Errorf("unused grant = %+v, %v", c, err)
	}
}

func mustEvent(t *testing.T, uid, metric string, v float64, id string) []byte {
	t.Helper()
	x := ev(uid, metric, v, id)
	if _, err := events.Prepare(&x, events.PublisherOptions{}); err != nil {
		t.Fatal(err)
	}
	return x.AppendJSON(nil)
}

func TestBadEventsGoToTheDeadLetters(t *testing.T) {
	e := startEnv(t, testConfig())
	good := string(mustEvent(t, "u-1", "api_calls_total", 1, "g1"))
	withLabel := strings.Replace(good, `"value":1`, `"value":1,"labels":{"resource":"photo"}`, 1)
	for _, tc := range []struct {
		name, subject, body, reason string
	}{
		{"not JSON", "usage.u-1", "photo!", "event: is not valid JSON"},
		{"missing id", "usage.u-1", strings.Replace(good, `"id":"g1",`, "", 1), "id: is required"},
		{"empty id", "usage.u-1", strings.Replace(good, `"id":"g1"`, `"id":""`, 1), "id: is required"},
		{"unknown metric", "usage.u-1", strings.Replace(good, "api_calls_total", "bogus_total", 1), `data.metric: unknown metric "bogus_total"`},
		{"string value", "usage.u-1", strings.Replace(good, `"value":1`, `"value":"1"`, 1), "data.value: must be a number"},
		{"overflow value", "usage.u-1", strings.Replace(good, `"value":1`, `"value":1e999`, 1), "data.value: must be a number from -1e15 to 1e15 (got 1e999)"},
		{"negative counter", "usage.u-1", strings.Replace(good, `"value":1`, `"value":-2`, 1), "data.value: must be a number from 0 to 1e15 for a counter (got -2)"},
		{"subject mismatch", "usage.u-2", good, `subject: must equal the subject token "u-2"`},
		// usage.dead is in USAGE (usage.*), but "dead" is never a uid.
		{"reserved uid", "usage.dead", strings.Replace(good, `"subject":"u-1"`, `"subject":"dead"`, 1), `subject: "dead" is reserved`},
		{"undeclared label", "usage.u-1", strings.Replace(withLabel, `"resource"`, `"colour"`, 1), "data.labels.colour: not declared"},
		{"oversized", "usage.u-1", strings.Replace(good, `"source":"allot"`, `"source":"`+strings.Repeat("x", 70000)+`"`, 1), "event: must be at most 65536 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := deadCount(t, e)
			e.publishRaw(tc.subject, []byte(tc.body), "")
			e.waitIdle()
			if got := deadCount(t, e); got != before+1 {
				t.Fatalf("dead letters %d -> %d, want one more", before, got)
			}
			st, _ := e.js.Stream(t.Context(), e.cfg.Streams.Dead)
			info, _ := st.Info(t.Context())
			msg, err := st.GetMsg(t.Context(), info.State.LastSeq)
			if err != nil {
				t.Fatal(err)
			}
			if reason := msg.Header.Get(events.ErrorHeader); !strings.Contains(reason, tc.reason) {
				t.Errorf("Allot-Error = %q, want it to contain %q", reason, tc.reason)
			}
			if string(msg.Data) != tc.body || msg.Header.Get("Allot-Original-Subject") != tc.subject {
				t.Errorf("the dead letter must carry the original body and subject")
			}
		})
	}
	// None of them touched state, and a good event still flows.
	if keys, _ := e.rdb.Keys(t.Context(), "allot:{*").Result(); len(keys) != 0 {
		t.Errorf("bad events left state: %v", keys)
	}
	e.publishRaw("usage.u-1", []byte(withLabel), "")
	e.waitIdle()
	vals, _ := e.rdb.HGetAll(t.Context(), keys.New("allot:").Values("u-1", "api_calls_total")).Result()
	if diff := cmp.Diff(map[string]string{"resource=photo": "1"}, vals); diff != "" {
		t.Errorf("counter after the bad events (-want +got):\n%s", diff)
	}
	if got := testutil.ToFloat64(e.meter.metrics.dead.WithLabelValues("invalid")); got < 4 {
		t.Errorf("dead letters counted as invalid = %v", got)
	}
}

func deadCount(t *testing.T, e *env) uint64 {
	t.Helper()
	st, err := e.js.Stream(t.Context(), e.cfg.Streams.Dead)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestCountersGaugesAndScopes(t *testing.T) {
	e := startEnv(t, testConfig())
	gauge := func(source string, v float64, id string) {
		x := ev("u-1", "queue_depth", v, id)
		x.Source = source
		e.publish(x)
	}
	gauge("web-1", 5, "q1")
	gauge("web-1", 3, "q2")
	gauge("web-2", 9, "q3")
	jobs := ev("u-7", "jobs_total", 2, "j1")
	jobs.Data.Labels = map[string]string{"kind": "resize"}
	e.publish(jobs)
	e.waitIdle()
	k := keys.New("allot:")
	for key, want := range map[string]map[string]string{
		k.Values(keys.InstanceTag("web-1"), "queue_depth"): {"": "3"},
		k.Values(keys.InstanceTag("web-2"), "queue_depth"): {"": "9"},
		k.Values(keys.GlobalTag, "jobs_total"):             {"kind=resize": "2"},
	} {
		got, _ := e.rdb.HGetAll(t.Context(), key).Result()
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", key, diff)
		}
	}
	// /metrics exports them from Redis with bounded labels.
	n, err := testutil.GatherAndCount(e.reg, "allot_usage_queue_depth", "allot_usage_jobs_total")
	if err != nil || n != 3 {
		t.Errorf("usage series = %d, %v; want 3", n, err)
	}
	if err := testutil.GatherAndCompare(e.reg, strings.NewReader(`
# HELP allot_usage_jobs_total allot usage metric jobs_total
# TYPE allot_usage_jobs_total counter
allot_usage_jobs_total{kind="resize"} 2
`), "allot_usage_jobs_total"); err != nil {
		t.Error(err)
	}
}

func TestAuthorizeAndGrants(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := t.Context()
	auth := func(id string, amount float64) (events.AuthorizeReply, error) {
		return e.client.Authorize(ctx, "u-5", events.AuthorizeRequest{ID: id, Metric: "tiny_daily_total", Amount: amount})
	}
	if r, err := auth("a1", 3); err != nil || !r.Allowed || r.Remaining != 1 || r.ResetsAt.IsZero() {
		t.Errorf("a1 = %+v, %v", r, err)
	}
	r, err := auth("a2", 2)
	if !errors.Is(err, events.ErrOverLimit) || r.Allowed || r.Remaining != 1 {
		t.Errorf("over the limit = %+v, %v; want a 429 with the decision", r, err)
	}
	if r, err := auth("a1", 3); err != nil || !r.Allowed || r.Remaining != 1 {
		t.Errorf("a1 again must answer the same without charging twice: %+v, %v", r, err)
	}
	// Raise the grant: it applies at once, on every replica, with no cache.
	g, err := e.client.Grants(ctx, "u-5", events.GrantsRequest{Set: map[string]float64{"tiny_daily_total": 10}})
	if err != nil || g.Grants["tiny_daily_total"] != 10 || g.Grants["photo_daily_total"] != 200 {
		t.Fatalf("grants = %+v, %v", g, err)
	}
	if r, err := auth("a2", 2); err != nil || !r.Allowed || r.Remaining != 5 {
		t.Errorf("after raising = %+v, %v", r, err)
	}
	if c, _ := e.client.Credit(ctx, "u-5", "tiny_daily_total"); c.Limit != 10 || c.Used != 5 {
		t.Errorf("credit after raising = %+v", c)
	}
	g, err = e.client.Grants(ctx, "u-5", events.GrantsRequest{Unset: []string{"tiny_daily_total"}})
	if err != nil || g.Grants["tiny_daily_total"] != 4 {
		t.Errorf("after unset = %+v, %v", g, err)
	}
	if c, _ := e.client.Credit(ctx, "u-5", "tiny_daily_total"); c.Overage != 1 || c.Remaining != 0 {
		t.Errorf("credit past a lowered grant = %+v", c)
	}
}

func TestBadRequests(t *testing.T) {
	e := startEnv(t, testConfig())
	for _, tc := range []struct {
		subject, body string
		status        int
		field         string
	}{
		{"meter.credit.u-1", `{"metric":`, 400, "request"},
		{"meter.credit.u-1", `{"metrics":"x"}`, 400, "metrics"},
		{"meter.credit.u-1", `{"metric":"nope"}`, 404, "metric"},
		{"meter.credit.u-1", `{"metric":"api_calls_total"}`, 400, "metric"},
		{"meter.credit.é", `{}`, 400, "uid"},
		{"meter.authorize.u-1", `{"metric":"tiny_daily_total","amount":1}`, 400, "id"},
		{"meter.authorize.u-1", `{"id":"x","metric":"tiny_daily_total","amount":-1}`, 400, "amount"},
		{"meter.authorize.u-1", `{"id":"x","metric":"nope","amount":1}`, 404, "metric"},
		{"meter.grants.u-1", `{"set":{"a":"many"}}`, 400, "set"},
		{"meter.grants.u-1", `{"set":{"a":1},"unset":["a"]}`, 400, "unset"},
	} {
		msg, err := e.nc.Request(tc.subject, []byte(tc.body), 2*time.Second)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.subject, tc.body, err)
		}
		serr := events.DecodeServiceError(msg)
		if serr == nil || serr.Status != tc.status || serr.Field != tc.field {
			t.Errorf("%s %s = %+v, want %d on %s", tc.subject, tc.body, serr, tc.status, tc.field)
		}
	}
	keys, _ := e.rdb.Keys(t.Context(), "*").Result()
	keys = slices.DeleteFunc(keys, func(k string) bool { return bookkeeping(k, e.cfg.Redis.KeyPrefix) })
	if len(keys) != 0 {
		t.Errorf("bad requests changed state: %v", keys)
	}
}

// bookkeeping tells the meter's own keys, which say nothing of usage:
// the epoch marker and the rebuild lock.
func bookkeeping(key, prefix string) bool {
	return key == prefix+"meter:epoch" || key == prefix+"meter:replicas" || strings.HasPrefix(key, prefix+"lock:")
}

func TestNoticesExactlyOncePerThreshold(t *testing.T) {
	e := startEnv(t, testConfig())
	for i := range 6 {
		e.publish(ev("u-3", "tiny_daily_total", 1, fmt.Sprint("t", i))) // limit 4: 50% at 2, 100% at 4
	}
	e.waitIdle()
	st, _ := e.js.Stream(t.Context(), e.cfg.Streams.Notify)
	info, _ := st.Info(t.Context())
	if info.State.Msgs != 2 {
		t.Fatalf("NOTIFY holds %d notices, want 2", info.State.Msgs)
	}
	var got []events.UsageNotice
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, _ := st.GetMsg(t.Context(), seq)
		var n events.UsageNotice
		if err := json.Unmarshal(m.Data, &n); err != nil {
			t.Fatal(err)
		}
		if m.Subject != "notify.usage.u-3" || m.Header.Get(events.MsgIDHeader) != n.ID {
			t.Errorf("notice on %s with id header %q", m.Subject, m.Header.Get(events.MsgIDHeader))
		}
		got = append(got, n)
	}
	if got[0].Threshold != 50 || got[0].Used != 2 || got[1].Threshold != 100 || got[1].Used != 4 || got[1].Limit != 4 || got[1].ResetsAt.IsZero() {
		t.Errorf("notices = %+v", got)
	}
	if pending, _ := e.rdb.HGet(t.Context(), keys.New("allot:").Grant("u-3", "tiny_daily_total"), "q").Result(); pending != "" {
		t.Errorf("published notices still pending: %q", pending)
	}
}

// Redis going away: requests answer 503 within the timeout, events wait,
// and the meter resumes on its own when Redis is back, losing nothing.
func TestRedisOutage(t *testing.T) {
	cfg := testConfig()
	cfg.Meter.AckWait = time.Second // the outage below outlasts it
	e := startEnv(t, cfg)
	e.publish(ev("u-1", "photo_daily_total", 1, "before"))
	e.waitIdle()
	addr := e.mr.Addr()
	e.mr.Close()
	start := time.Now()
	_, err := e.client.Credit(t.Context(), "u-1", "photo_daily_total")
	if !errors.Is(err, events.ErrUnavailable) {
		t.Errorf("credit with Redis down = %v, want 503", err)
	}
	if time.Since(start) > 1500*time.Millisecond {
		t.Errorf("503 took %v", time.Since(start))
	}
	for i := range 20 {
		e.publish(ev("u-1", "photo_daily_total", 1, fmt.Sprint("during", i)))
		depth := ev("u-1", "queue_depth", float64(i), fmt.Sprint("depth", i))
		depth.Source = "web-1"
		e.publish(depth)
	}
	// The worker meets the outage, holds the chunk and pauses.
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(e.meter.metrics.redisErrors) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(2500 * time.Millisecond) // two and a half ack waits
	if err := e.mr.StartAddr(addr); err != nil {
		t.Fatal(err)
	}
	e.waitIdle()
	c, err := e.client.Credit(t.Context(), "u-1", "photo_daily_total")
	if err != nil {
		t.Fatal(err)
	}
	// miniredis kept its data: the event before and the 20 during.
	if c.Used != 21 {
		t.Errorf("used after the outage = %v, want 21", c.Used)
	}
	if got := testutil.ToFloat64(e.meter.metrics.redisErrors); got < 1 {
		t.Errorf("redis errors not counted")
	}
	// The chunk that met the outage was held and applied in place, before
	// the events after it: the gauge's last value is the last published.
	// Held in progress, none of the events was redelivered, though the
	// outage outlasted their ack wait.
	if got, _ := e.rdb.HGet(t.Context(), keys.New("allot:").Values(keys.InstanceTag("web-1"), "queue_depth"), "").Result(); got != "19" {
		t.Errorf("queue_depth after the outage = %q, want the last value published, 19", got)
	}
	if got := testutil.ToFloat64(e.meter.metrics.redelivered); got != 0 {
		t.Errorf("redeliveries = %v, want none: the chunk is held, not nak'ed", got)
	}
}

// Ordered (the default): of two replicas sharing the consumer, one
// applies the events, in stream order, and the other stands by; stopped,
// the first hands over at once and the second applies the rest. A
// gauge's value is each time the last one published.
func TestOrderedReplicasTakeTurns(t *testing.T) {
	e := startEnv(t, testConfig())
	second := e.startReplica()
	depthKey := keys.New("allot:").Values(keys.InstanceTag("web-1"), "queue_depth")
	publish := func(from, to int) {
		apub, _ := events.NewAsyncPublisher(e.nc, events.AsyncOptions{})
		for i := from; i < to; i++ {
			depth := ev("u-1", "queue_depth", float64(i), fmt.Sprint("d", i))
			depth.Source = "web-1"
			for _, x := range []events.Event{depth, ev(fmt.Sprint("u-", i%7), "api_calls_total", 1, fmt.Sprint("r", i))} {
				if err := apub.Publish(t.Context(), x); err != nil {
					t.Fatal(err)
				}
			}
		}
		if failed, err := apub.Close(t.Context()); err != nil || len(failed) > 0 {
			t.Fatal(failed, err)
		}
		e.waitIdle()
		if got, _ := e.rdb.HGet(t.Context(), depthKey, "").Result(); got != fmt.Sprint(to-1) {
			t.Errorf("queue_depth = %q, want the last value published, %d", got, to-1)
		}
	}
	publish(0, 1000)
	applied := func(m *Meter) float64 { return testutil.ToFloat64(m.metrics.events.WithLabelValues("applied")) }
	first, standby := e.meter, second
	if applied(second) > 0 {
		first, standby = second, e.meter
	}
	if applied(standby) != 0 || applied(first) != 2000 {
		t.Fatalf("applied %v and %v, want 2000 by one replica and none by the other", applied(first), applied(standby))
	}
	waitPinned(t, first, standby)
	if err := first.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	publish(1000, 1500)
	if applied(standby) != 1000 {
		t.Errorf("the standby applied %v after the first stopped, want 1000", applied(standby))
	}
	waitPinned(t, standby, first)
	if total := e.callsTotal(); total != 1500 {
		t.Errorf("total = %v, want 1500", total)
	}
}

// waitPinned waits until allot_meter_consumer_pinned says pinned holds
// the pin and other does not (read every followEvery).
func waitPinned(t *testing.T, pinned, other *Meter) {
	t.Helper()
	deadline := time.Now().Add(3 * followEvery)
	for {
		p, o := testutil.ToFloat64(pinned.metrics.pinned), testutil.ToFloat64(other.metrics.pinned)
		if p == 1 && o == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("allot_meter_consumer_pinned: %v for the meter applying, %v for the other; want 1 and 0", p, o)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startReplica starts another meter on e's connections and config.
func (e *env) startReplica() *Meter {
	e.t.Helper()
	m, err := Start(e.t.Context(), e.cfg, Deps{NATS: e.nc, Redis: e.rdb, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = m.Stop(context.Background()) })
	return m
}

// callsTotal is api_calls_total summed over the uids u-0 to u-6.
func (e *env) callsTotal() float64 {
	total := 0.0
	for i := range 7 {
		v, _ := e.rdb.HGet(e.t.Context(), keys.New("allot:").Values(fmt.Sprint("u-", i), "api_calls_total"), "").Float64()
		total += v
	}
	return total
}

// Unordered, two replicas pull from the durable consumer at once; each
// event counts once.
func TestReplicasShareTheConsumer(t *testing.T) {
	cfg := testConfig()
	cfg.Meter.Ordered = false
	e := startEnv(t, cfg)
	e.startReplica()
	apub, _ := events.NewAsyncPublisher(e.nc, events.AsyncOptions{})
	for i := range 1000 {
		if err := apub.Publish(t.Context(), ev(fmt.Sprint("u-", i%7), "api_calls_total", 1, fmt.Sprint("r", i%900))); err != nil {
			t.Fatal(err)
		}
	}
	if failed, err := apub.Close(t.Context()); err != nil || len(failed) > 0 {
		t.Fatal(failed, err)
	}
	e.waitIdle()
	if total := e.callsTotal(); total != 900 {
		t.Errorf("total = %v, want 900 (1000 events, 100 repeated ids)", total)
	}
}

func TestStartRefusesBadSetups(t *testing.T) {
	if _, err := Start(t.Context(), testConfig(), Deps{}); err == nil {
		t.Error("Start without connections succeeded")
	}
	e := startEnv(t, testConfig())
	bad := testConfig()
	bad.Meter.Batch = 0
	if _, err := Start(t.Context(), bad, Deps{NATS: e.nc, Redis: e.rdb}); err == nil || !strings.Contains(err.Error(), "meter.batch") {
		t.Errorf("Start with a bad config = %v", err)
	}
}

func testLogOutput() io.Writer {
	if testing.Verbose() {
		return os.Stderr
	}
	return io.Discard
}
