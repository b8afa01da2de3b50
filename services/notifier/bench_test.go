package notifier

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/services/notifier/internal/mail"
	"github.com/allot/allot/services/notifier/internal/smtptest"
	"github.com/hibiken/asynq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// benchEnv is the real NATS and Redis of ALLOT_BENCH_NATS_URL and
// ALLOT_BENCH_REDIS_URL when both are set, else the embedded ones.
func benchEnv(b *testing.B) *env {
	natsURL, redisURL := os.Getenv("ALLOT_BENCH_NATS_URL"), os.Getenv("ALLOT_BENCH_REDIS_URL")
	if natsURL == "" || redisURL == "" {
		return newMiniEnv(b)
	}
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		b.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	b.Cleanup(func() { _ = rdb.Close() })
	return realEnvAt(b, natsURL, rdb)
}

func benchParams(b *testing.B) (rate int, d time.Duration) {
	rate, d = 200, 5*time.Second
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_NOTICE_RATE")); err == nil && v > 0 {
		rate = v
	}
	if v, err := time.ParseDuration(os.Getenv("ALLOT_BENCH_DURATION")); err == nil && v > 0 {
		d = v
	}
	return rate, d
}

// BenchmarkNoticeLatency publishes usage notices at a fixed rate
// (ALLOT_BENCH_NOTICE_RATE, default 200/s) for ALLOT_BENCH_DURATION
// (default 5s) and measures each from its intended publish time to its
// acceptance by the in-process SMTP server: NOTIFY stream, consumer,
// asynq, charge through the real meter, template, SMTP. The baseline, in
// the same run, enqueues asynq tasks at the same rate straight into a
// handler that sends the same email: asynq and SMTP alone. It runs once
// whatever b.N is.
func BenchmarkNoticeLatency(b *testing.B) {
	rate, d := benchParams(b)
	const uids = 1000
	e := benchEnv(b)
	e.cfg.Notifier.Concurrency = 20
	ctx := context.Background()
	for i := range uids {
		if err := e.rdb.Set(ctx, e.keys.ConfirmedAddress("u-"+strconv.Itoa(i)), fmt.Sprintf("user%d@example.com", i), 0).Err(); err != nil {
			b.Fatal(err)
		}
	}
	for range b.N {
		raw := e.rawAsynqLatency(b, rate, d, uids)
		e.smtp.Reset()
		e.start()
		got := e.noticeLatency(b, rate, d, uids)
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(float64(rate), "notices/s")
		b.ReportMetric(ms(quantile(raw, 0.5)), "raw_p50_ms")
		b.ReportMetric(ms(quantile(raw, 0.99)), "raw_p99_ms")
		b.ReportMetric(ms(quantile(got, 0.5)), "p50_ms")
		b.ReportMetric(ms(quantile(got, 0.99)), "p99_ms")
		b.ReportMetric(ms(slices.Max(got)), "max_ms")
		b.ReportMetric(ms(quantile(got, 0.99))/ms(quantile(raw, 0.99)), "p99_ratio")
	}
}

// noticeLatency publishes rate notices a second for d, open loop, and
// returns each one's latency, publish (as scheduled) to SMTP acceptance.
func (e *env) noticeLatency(b *testing.B, rate int, d time.Duration, uids int) []time.Duration {
	b.Helper()
	n := int(float64(rate) * d.Seconds())
	intended := make(map[string]time.Time, n)
	start := time.Now().Add(50 * time.Millisecond)
	interval := time.Second / time.Duration(rate)
	periodStart := time.Now().UTC().Truncate(24 * time.Hour)
	for i := range n {
		at := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(at))
		uid := "u-" + strconv.Itoa(i%uids)
		notice := events.UsageNotice{ID: fmt.Sprintf("%s.photo_daily_total.%d.b%d", uid, periodStart.UnixMilli(), i), UID: uid,
			Metric: "photo_daily_total", Threshold: 80, Used: 160, Limit: 200, Period: "day", PeriodStart: periodStart, ResetsAt: periodStart.Add(24 * time.Hour)}
		body, err := json.Marshal(notice)
		if err != nil {
			b.Fatal(err)
		}
		msg := nats.NewMsg(e.cfg.Subjects.NotifyUsage(uid))
		msg.Data = body
		msg.Header.Set(nats.MsgIdHdr, notice.ID)
		if _, err := e.js.PublishMsgAsync(msg, jetstream.WithExpectStream(e.cfg.Streams.Notify)); err != nil {
			b.Fatal(err)
		}
		intended["usage:"+uid+":"+notice.ID] = at
	}
	got := e.waitAll(b, n, d)
	lat := make([]time.Duration, 0, n)
	for _, r := range got {
		task := r.MustParse(b).Header.Get("X-Allot-Task")
		at, ok := intended[task]
		if !ok {
			b.Fatalf("an email for no notice sent: task %q", task)
		}
		lat = append(lat, r.At.Sub(at))
	}
	return lat
}

// rawAsynqLatency is the baseline: asynq tasks enqueued at rate straight
// into a handler that sends the same kind of email, nothing else.
func (e *env) rawAsynqLatency(b *testing.B, rate int, d time.Duration, uids int) []time.Duration {
	b.Helper()
	sender, err := mail.New(mailConfig(e.cfg))
	if err != nil {
		b.Fatal(err)
	}
	queue := e.cfg.Notifier.UsageQueue
	srv := asynq.NewServerFromRedisClient(e.rdb, asynq.Config{Concurrency: 20, Queues: map[string]int{queue: 1},
		TaskCheckInterval: e.cfg.Notifier.Poll, LogLevel: asynq.ErrorLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc("bench:raw", func(ctx context.Context, t *asynq.Task) error {
		return sender.Send(ctx, mail.Message{To: string(t.Payload()), Subject: "Your photo_daily_total use crossed 80%",
			Text: "You have used 160 of 200 photo_daily_total this day.", MessageID: taskIDOf(ctx) + "@bench",
			Headers: map[string]string{"X-Allot-Task": taskIDOf(ctx)}})
	})
	if err := srv.Start(mux); err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	client := asynq.NewClientFromRedisClient(e.rdb)
	n := int(float64(rate) * d.Seconds())
	intended := make(map[string]time.Time, n)
	start := time.Now().Add(50 * time.Millisecond)
	interval := time.Second / time.Duration(rate)
	for i := range n {
		at := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(at))
		id := "raw-" + strconv.Itoa(i)
		to := fmt.Sprintf("user%d@example.com", i%uids)
		if _, err := client.Enqueue(asynq.NewTask("bench:raw", []byte(to)), asynq.TaskID(id), asynq.Queue(queue), asynq.Retention(time.Minute)); err != nil {
			b.Fatal(err)
		}
		intended[id] = at
	}
	got := e.waitAll(b, n, d)
	lat := make([]time.Duration, 0, n)
	for _, r := range got {
		lat = append(lat, r.At.Sub(intended[r.MustParse(b).Header.Get("X-Allot-Task")]))
	}
	return lat
}

// waitAll waits for n emails, at most d plus a minute.
func (e *env) waitAll(b *testing.B, n int, d time.Duration) []smtptest.Received {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+time.Minute)
	defer cancel()
	got, err := e.smtp.Wait(ctx, n)
	if err != nil {
		b.Fatalf("%d of %d emails arrived: %v", len(e.smtp.Messages()), n, err)
	}
	return got
}

func quantile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
