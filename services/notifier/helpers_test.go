package notifier

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/services/meter"
	"github.com/allot/allot/services/notifier/internal/smtptest"
	"github.com/allot/allot/services/registry"
	"github.com/hibiken/asynq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

const testSecret = "a-test-secret-that-is-long-enough-0123456789"

// env is a notifier on an embedded NATS, miniredis (or a real Redis), a
// real meter for the charges and an in-process SMTP server.
type env struct {
	t      testing.TB
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	rdb    redis.UniversalClient
	keys   keys.Keys
	smtp   *smtptest.Server
	client *events.Client
	insp   *asynq.Inspector
	clock  *fakeClock
}

type fakeClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// envFunc makes a test environment: newMiniEnv, or the integration
// tests' realEnv.
type envFunc func(t testing.TB) *env

// newMiniEnv starts an embedded NATS, miniredis, a meter and an SMTP
// server; tweak cfg, then call start.
func newMiniEnv(t testing.TB) *env {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	cfg := DefaultConfig()
	cfg.NATS.URL = service.URL(testenv.EmbeddedNATS(t))
	return newEnvOn(t, cfg, meter.DefaultSettings(), rdb)
}

// newEnvOn starts a meter (with ms, its section) and an SMTP server on
// cfg's NATS and rdb. cfg names the NATS, the subjects, the streams, the
// key prefix and the queues; the rest is set here.
func newEnvOn(t testing.TB, cfg Config, ms meter.Settings, rdb redis.UniversalClient) *env {
	t.Helper()
	e := &env{t: t, rdb: rdb, clock: &fakeClock{}, keys: keys.New(cfg.Redis.KeyPrefix)}
	e.smtp = smtptest.Start(t, smtptest.Options{})
	cfg.Instance = "test"
	cfg.Notifier.TokenSecrets = []service.Secret{testSecret}
	cfg.Notifier.SMTP.Host = e.smtp.Host()
	cfg.Notifier.SMTP.Port = e.smtp.Port()
	cfg.Notifier.SMTP.TLS = "none"
	cfg.Notifier.SMTP.From = "noreply@allot.example"
	cfg.Notifier.SMTP.Timeout = 2 * time.Second
	cfg.Notifier.RefreshInterval = 0
	cfg.Notifier.RetryBase = 100 * time.Millisecond
	cfg.Notifier.RetryMax = 200 * time.Millisecond
	cfg.Notifier.Poll = 20 * time.Millisecond
	cfg.Notifier.ConfirmURL = "https://app.example/confirm?from=mail"
	e.cfg = cfg
	var err error
	if e.nc, err = nats.Connect(cfg.NATS.URL.String()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.nc.Close)
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	if err := events.EnsureStreams(t.Context(), e.js, cfg.Subjects, cfg.Streams); err != nil {
		t.Fatal(err)
	}
	if e.client, err = events.NewClient(e.nc, events.ClientOptions{Subjects: cfg.Subjects, Timeout: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	e.insp = asynq.NewInspectorFromRedisClient(rdb)
	m, err := meter.Start(t.Context(), meter.Config{Config: cfg.Config, Usage: cfg.Usage, Meter: ms}, meter.Deps{NATS: e.nc, Redis: rdb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Stop(context.Background()) })
	return e
}

// start starts a notifier on e's config, with its own metrics registry.
func (e *env) start() (*Notifier, *prometheus.Registry) {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	n, err := Start(e.t.Context(), e.cfg, Deps{NATS: e.nc, Redis: e.rdb, Registerer: reg, Now: e.clock.now})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.Stop(ctx); err != nil {
			e.t.Errorf("stop: %v", err)
		}
	})
	return n, reg
}

// startRegistry runs a real registry on e's NATS and Redis.
func (e *env) startRegistry() {
	e.t.Helper()
	cfg := registry.Config{Config: e.cfg.Config, Registry: registry.DefaultSettings()}
	cfg.Registry.Keys = []service.Secret{service.Secret(base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 32))))}
	r, err := registry.Start(e.t.Context(), cfg, registry.Deps{NATS: e.nc, Redis: e.rdb})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = r.Stop(context.Background()) })
}

// confirm publishes a confirmation request the way an app does.
func (e *env) confirm(uid string, req events.ConfirmRequest) {
	e.t.Helper()
	if _, err := events.RequestConfirmation(e.t.Context(), e.js, e.cfg.Subjects, uid, req); err != nil {
		e.t.Fatal(err)
	}
}

// publishRaw puts any body on a NOTIFY subject, as a broken app might.
func (e *env) publishRaw(subject string, body []byte, msgID string) {
	e.t.Helper()
	msg := nats.NewMsg(subject)
	msg.Data = body
	if msgID != "" {
		msg.Header.Set(nats.MsgIdHdr, msgID)
	}
	if _, err := e.js.PublishMsg(e.t.Context(), msg); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) publishNotice(n events.UsageNotice) {
	e.t.Helper()
	body, err := json.Marshal(n)
	if err != nil {
		e.t.Fatal(err)
	}
	e.publishRaw(e.cfg.Subjects.NotifyUsage(n.UID), body, n.ID)
}

// mails waits for n messages at the SMTP server.
func (e *env) mails(n int) []smtptest.Received {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), 15*time.Second)
	defer cancel()
	got, err := e.smtp.Wait(ctx, n)
	if err != nil {
		e.t.Fatalf("waiting for %d emails (have %d): %v", n, len(e.smtp.Messages()), err)
	}
	return got
}

// archived waits until queue holds n archived tasks and returns them.
func (e *env) archived(queue string, n int) []*asynq.TaskInfo {
	e.t.Helper()
	var got []*asynq.TaskInfo
	eventually(e.t, 15*time.Second, func() error {
		tasks, err := e.insp.ListArchivedTasks(queue, asynq.PageSize(1000))
		if err != nil && !strings.Contains(err.Error(), "not found") {
			return err
		}
		got = tasks
		if len(tasks) != n {
			return fmt.Errorf("%d archived tasks in %s, want %d", len(tasks), queue, n)
		}
		return nil
	})
	return got
}

func eventually(t testing.TB, within time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// counter reads one series of a counter vector in reg.
func counter(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

var linkRE = regexp.MustCompile(`https://app\.example/confirm\?[^\s"<>]+`)

// tokenOf finds the confirmation link in a text body and returns its token.
func tokenOf(t testing.TB, text string) string {
	t.Helper()
	link := linkRE.FindString(text)
	if link == "" {
		t.Fatalf("no confirmation link in:\n%s", text)
	}
	_, q, _ := strings.Cut(link, "?")
	for _, kv := range strings.Split(q, "&") {
		if v, ok := strings.CutPrefix(kv, "token="); ok {
			return v
		}
	}
	t.Fatalf("no token in link %s", link)
	return ""
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// realEnvAt is an env on a real NATS and Redis, under subjects, streams,
// keys and asynq queues of its own, all removed at the end.
func realEnvAt(t testing.TB, natsURL string, rdb redis.UniversalClient) *env {
	t.Helper()
	var r [4]byte
	_, _ = rand.Read(r[:])
	tag := "it" + hex.EncodeToString(r[:])
	prefix := "allot-" + tag + ":"

	cfg := DefaultConfig()
	cfg.NATS.URL = service.URL(natsURL)
	cfg.Redis.KeyPrefix = prefix
	cfg.Subjects = events.Subjects{Usage: tag + ".usage", Dead: tag + ".usage.dead", Meter: tag + ".meter",
		RateLimit: tag + ".ratelimit", Registry: tag + ".registry", Notify: tag + ".notify"}
	up := strings.ToUpper(tag)
	cfg.Streams.Usage, cfg.Streams.Dead, cfg.Streams.Notify = up+"_USAGE", up+"_USAGE_DEAD", up+"_NOTIFY"
	ms := meter.DefaultSettings()
	ms.Consumer = tag + "-meter"
	cfg.Notifier.Queues = map[string]int{tag + "-critical": 6, tag + "-default": 3, tag + "-low": 1}
	cfg.Notifier.ConfirmQueue, cfg.Notifier.UsageQueue, cfg.Notifier.RefreshQueue = tag+"-critical", tag+"-default", tag+"-low"

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	t.Cleanup(func() {
		ctx := context.Background()
		for _, s := range []string{cfg.Streams.Usage, cfg.Streams.Dead, cfg.Streams.Notify} {
			_ = js.DeleteStream(ctx, s)
		}
		nc.Close()
		// asynq keeps processed counters and finished tasks (for their
		// retention) under each queue's tag.
		for q := range cfg.Notifier.Queues {
			_ = insp.DeleteQueue(q, true)
			testenv.DeleteKeys(rdb, "asynq:{"+q+"}")
		}
		testenv.DeleteKeys(rdb, prefix)
	})
	return newEnvOn(t, cfg, ms, rdb)
}
