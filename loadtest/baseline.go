package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/redis/go-redis/v9"
)

// The baselines, in the baseline child process, on the same NATS and
// Redis as the stack:
//
//   - the raw worker loop: fetch 500 from the run's raw stream, decode
//     each event, one pipelined INCRBY+EXPIRE per event, ack each; no
//     dedup, no Lua, no grant periods. What the meter would cost if it did
//     nothing but count.
//   - the raw responder: a micro service doing one Redis GET per request,
//     with as many handlers as the meter has. What a request costs when
//     the service does the least it could.
//   - the bare responder: 16 queue subscriptions answering {} at once,
//     no work at all: the floor of one NATS message per request, which
//     batching (events.BatchOptions) is measured against.
//
// The third baseline, raw nats.go async publish with ids, runs in the
// harness beside the apps (publish.go).

// bareResponders is how many subscriptions the bare responder answers
// from; bareBody is its answer.
const bareResponders = 16

var bareBody = []byte("{}")

// bareCheck is the bare batch responder's answer to a check: allowed.
var bareCheck = []byte(`{"allowed":true,"limit":1000000,"remaining":999999,"reset_after_ms":60000,"retry_after_ms":0}`)

// answerBareBatch answers a batch message with bareCheck for each of its
// requests, and a message that is no batch with an empty list (which its
// sender counts as an error).
func answerBareBatch(m *nats.Msg) {
	b, _ := events.DecodeBatchRequest(m.Data)
	results := make([]events.BatchResult, len(b.Requests))
	for i := range results {
		results[i] = events.BatchResult{Status: 200, Body: bareCheck}
	}
	_ = m.Respond(events.AppendBatchReply(nil, results))
}

// rawKey is where the raw worker counts an event of uid and metric.
func rawKey(prefix, uid, metric string) string { return prefix + "raw:" + uid + ":" + metric }

func startBaseline(ctx context.Context, spec childSpec, log *slog.Logger) (func(context.Context) error, childReady, error) {
	nc, err := nats.Connect(spec.NATSURL, nats.Name("allot-loadtest-baseline"), nats.Timeout(5*time.Second), nats.MaxReconnects(-1))
	if err != nil {
		return nil, childReady{}, fmt.Errorf("baseline: connect to NATS %s: %w", spec.NATSURL, err)
	}
	rcfg := service.RedisConfig{URL: service.URL(spec.RedisURL), DialTimeout: 5 * time.Second, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second}
	if len(spec.RedisAddrs) > 0 {
		rcfg.URL, rcfg.Addrs = "", spec.RedisAddrs
	}
	rdb, err := service.ConnectRedis(ctx, rcfg)
	if err != nil {
		nc.Close()
		return nil, childReady{}, fmt.Errorf("baseline: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, childReady{}, err
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, spec.RawStream, jetstream.ConsumerConfig{
		Durable: spec.RawConsumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 20000,
	})
	if err != nil {
		nc.Close()
		_ = rdb.Close()
		return nil, childReady{}, fmt.Errorf("baseline: consumer on %s: %w", spec.RawStream, err)
	}
	var svcs []micro.Service
	for range max(spec.Handlers, 1) {
		svc, err := micro.AddService(nc, micro.Config{Name: "loadtestraw", Version: "0.0.1", QueueGroup: "loadtestraw"})
		if err == nil {
			err = svc.AddEndpoint("get", micro.HandlerFunc(func(req micro.Request) {
				rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				v, err := rdb.Get(rctx, spec.Prefix+"rawget").Result()
				if err != nil && !errors.Is(err, redis.Nil) {
					_ = req.Error("503", err.Error(), nil)
					return
				}
				_ = req.Respond([]byte(`{"v":"` + v + `"}`))
			}), micro.WithEndpointSubject(spec.RawReply+".*"))
		}
		if err != nil {
			nc.Close()
			_ = rdb.Close()
			return nil, childReady{}, fmt.Errorf("baseline: responder: %w", err)
		}
		svcs = append(svcs, svc)
	}
	var bare []*nats.Subscription
	for range bareResponders {
		sub, err := nc.QueueSubscribe(spec.BareReply+".*", "loadtestbare", func(m *nats.Msg) { _ = m.Respond(bareBody) })
		if err != nil {
			nc.Close()
			_ = rdb.Close()
			return nil, childReady{}, fmt.Errorf("baseline: bare responder: %w", err)
		}
		bare = append(bare, sub)
	}
	// The floor of batching: a check answered at once, alone on
	// <bare>.check.<uid> or as a batch message on <bare>.check_many.<scope>
	// (events.Client's subjects with <bare> as the rate limiter's).
	for range bareResponders {
		for subject, answer := range map[string]nats.MsgHandler{
			spec.BareReply + ".check.*":      func(m *nats.Msg) { _ = m.Respond(bareCheck) },
			spec.BareReply + ".check_many.*": answerBareBatch,
		} {
			sub, err := nc.QueueSubscribe(subject, "loadtestbare", answer)
			if err != nil {
				nc.Close()
				_ = rdb.Close()
				return nil, childReady{}, fmt.Errorf("baseline: bare batch responder: %w", err)
			}
			bare = append(bare, sub)
		}
	}
	if err := nc.Flush(); err != nil {
		return nil, childReady{}, err
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { rawWorker(wctx, cons, rdb, spec.Prefix, log) })
	stop := func(context.Context) error {
		for _, s := range svcs {
			_ = s.Stop()
		}
		for _, s := range bare {
			_ = s.Unsubscribe()
		}
		cancel()
		wg.Wait()
		nc.Close()
		return rdb.Close()
	}
	return stop, childReady{NATSURL: spec.NATSURL, RedisURL: spec.RedisURL}, nil
}

// rawWorker is the ingest baseline loop. An event it cannot decode is
// acked and skipped: the baseline is only ever sent good events.
func rawWorker(ctx context.Context, cons jetstream.Consumer, rdb redis.UniversalClient, prefix string, log *slog.Logger) {
	msgs := make([]jetstream.Msg, 0, 500)
	for ctx.Err() == nil {
		// Take what is there, up to 500; when nothing is, wait for the
		// next one, so a quiet stream costs little and a busy one waits
		// for no batch to fill.
		msgs = msgs[:0]
		batch, err := cons.FetchNoWait(500)
		if err == nil {
			for m := range batch.Messages() {
				msgs = append(msgs, m)
			}
			if len(msgs) == 0 {
				batch, err = cons.Fetch(1, jetstream.FetchMaxWait(500*time.Millisecond))
				if err == nil {
					for m := range batch.Messages() {
						msgs = append(msgs, m)
					}
				}
			}
		}
		if err != nil {
			log.Warn("raw worker: fetch", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if len(msgs) == 0 {
			continue
		}
		pipe := rdb.Pipeline()
		for _, m := range msgs {
			ev, err := events.Decode(m.Data(), 0)
			if err != nil {
				continue
			}
			key := rawKey(prefix, ev.Subject, ev.Data.Metric)
			pipe.IncrBy(ctx, key, int64(ev.Data.Value))
			pipe.Expire(ctx, key, time.Hour)
		}
		if _, err := pipe.Exec(context.WithoutCancel(ctx)); err != nil {
			log.Warn("raw worker: redis", "err", err)
			for _, m := range msgs {
				_ = m.NakWithDelay(time.Second)
			}
			continue
		}
		for _, m := range msgs {
			_ = m.Ack()
		}
	}
}
