package meter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
)

// benchSetup connects to ALLOT_BENCH_NATS_URL and ALLOT_BENCH_REDIS_URL
// (the real servers the README's figures come from) or to an embedded
// NATS and miniredis, and returns a config whose streams, subjects and
// keys are the benchmark's own and are removed afterwards.
func benchSetup(b *testing.B) (*nats.Conn, *redis.Client, Config) {
	b.Helper()
	natsURL := os.Getenv("ALLOT_BENCH_NATS_URL")
	if natsURL == "" {
		natsURL = testenv.EmbeddedNATS(b)
	}
	redisURL := os.Getenv("ALLOT_BENCH_REDIS_URL")
	if redisURL == "" {
		mr := miniredis.RunT(b)
		redisURL = "redis://" + mr.Addr()
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		b.Fatal(err)
	}
	opts.PoolSize = 64
	rdb := redis.NewClient(opts)
	b.Cleanup(func() { _ = rdb.Close() })

	var r [4]byte
	_, _ = rand.Read(r[:])
	tag := hex.EncodeToString(r[:])
	cfg := DefaultConfig()
	cfg.Instance = "bench"
	cfg.Redis.KeyPrefix = "b" + tag[:4] + ":"
	cfg.Subjects.Usage, cfg.Subjects.Dead, cfg.Subjects.Notify, cfg.Subjects.Meter = "b"+tag+".usage", "b"+tag+".dead", "b"+tag+".notify", "b"+tag+".meter"
	cfg.Streams.Usage, cfg.Streams.Dead, cfg.Streams.Notify = "BU_"+tag, "BD_"+tag, "BN_"+tag
	cfg.Streams.MaxAge, cfg.Streams.DeadMaxAge, cfg.Streams.NotifyMaxAge = time.Hour, time.Hour, time.Hour
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_PARTITIONS")); err == nil {
		cfg.Streams.Partitions = v // the meter's ordered consumers, one per partition
	}
	js, _ := jetstream.New(nc)
	if err := events.EnsureStreams(context.Background(), js, cfg.Subjects, cfg.Streams); err != nil {
		b.Fatal(err)
	}
	// Redis holds the state of this (empty) stream: the events filled in
	// before the meter starts are a backlog to ingest, not a loss.
	if err := rdb.HSet(context.Background(), keys.New(cfg.Redis.KeyPrefix).MeterEpoch(), "seq", 0).Err(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx := context.Background()
		for _, s := range []string{cfg.Streams.Usage, cfg.Streams.Dead, cfg.Streams.Notify} {
			_ = js.DeleteStream(ctx, s)
		}
		iter := rdb.Scan(ctx, 0, cfg.Redis.KeyPrefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})
	return nc, rdb, cfg
}

// fill publishes n usage events over 1000 uids: counters and grants.
func fill(b *testing.B, nc *nats.Conn, cfg Config, n int) {
	b.Helper()
	fillUIDs(b, nc, cfg, n, 1000)
}

// fillUIDs publishes n usage events over uids uids: counters and grants.
func fillUIDs(b *testing.B, nc *nats.Conn, cfg Config, n, uids int) {
	b.Helper()
	pub, err := events.NewAsyncPublisher(nc, events.AsyncOptions{PublisherOptions: events.PublisherOptions{Subjects: cfg.Subjects, Source: "bench"}})
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		metric := "api_calls_total"
		if i%2 == 0 {
			metric = "photo_daily_total"
		}
		if err := pub.Publish(context.Background(), events.NewUsage("u-"+strconv.Itoa(i%uids), metric, 1)); err != nil {
			b.Fatal(err)
		}
	}
	if failed, err := pub.Close(context.Background()); err != nil || len(failed) > 0 {
		b.Fatalf("fill: %d failed, %v", len(failed), err)
	}
}

// rawWorker is the ingest baseline: fetch 500, decode, one pipelined
// INCRBY+EXPIRE per event, ack each. No dedup, no validation beyond the
// decoder, no grant periods.
func rawWorker(ctx context.Context, b *testing.B, js jetstream.JetStream, rdb *redis.Client, cfg Config, n int) time.Duration {
	b.Helper()
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.Streams.Usage, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 20000})
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	done := 0
	for done < n {
		batch, err := cons.Fetch(cfg.Meter.Batch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			b.Fatal(err)
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		pipe := rdb.Pipeline()
		for _, m := range msgs {
			ev, err := events.Decode(m.Data(), 0)
			if err != nil {
				b.Fatal(err)
			}
			key := cfg.Redis.KeyPrefix + "raw:" + ev.Subject + ":" + ev.Data.Metric
			pipe.IncrBy(ctx, key, int64(ev.Data.Value))
			pipe.Expire(ctx, key, 24*time.Hour)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
		for _, m := range msgs {
			_ = m.Ack()
		}
		done += len(msgs)
	}
	return time.Since(start)
}

// BenchmarkIngest applies the same events with the raw baseline loop and
// with the meter (dedup, Lua, grant periods, notices), one after the
// other on the same machine, and reports both rates and their ratio, and
// the Redis commands each ran per event (INFO commandstats, commands run
// inside scripts included: on a Redis of its own, exact; on a shared one,
// what else runs meanwhile counts too). Over 1000 uids a chunk holds
// about one event per (uid, metric); over 5 uids, about fifty; dedup=ids
// records every event's id (meter.dedup_ids, the default), dedup=stream
// dedups by stream position. b.N is the number of events.
// ALLOT_BENCH_BATCH sets meter.batch, and the raw loop's fetch, to it;
// ALLOT_BENCH_UNORDERED (any value) turns meter.ordered off;
// ALLOT_BENCH_PARTITIONS sets streams.partitions (the raw loop still
// reads the whole stream with one consumer).
func BenchmarkIngest(b *testing.B) {
	for _, uids := range []int{1000, 5} {
		for _, ids := range []bool{true, false} {
			dedup := "ids"
			if !ids {
				dedup = "stream"
			}
			b.Run("uids="+strconv.Itoa(uids)+"/dedup="+dedup, func(b *testing.B) { benchmarkIngest(b, uids, ids) })
		}
	}
}

// benchmarkIngest is BenchmarkIngest over uids uids, with the meter
// recording every event's id (ids) or deduplicating by stream position.
func benchmarkIngest(b *testing.B, uids int, ids bool) {
	nc, rdb, cfg := benchSetup(b)
	cfg.Meter.DedupIDs = ids
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_BATCH")); err == nil {
		cfg.Meter.Batch = v
	}
	if os.Getenv("ALLOT_BENCH_UNORDERED") != "" {
		cfg.Meter.Ordered = false
	}
	js, _ := jetstream.New(nc)
	n := max(b.N, 1000)
	fillUIDs(b, nc, cfg, n, uids)
	ctx := context.Background()
	b.ResetTimer()

	calls0 := testenv.RedisCalls(b, rdb)
	rawTime := rawWorker(ctx, b, js, rdb, cfg, n)
	calls1 := testenv.RedisCalls(b, rdb)

	start := time.Now()
	reg := prometheus.NewRegistry()
	m, err := Start(ctx, cfg, Deps{NATS: nc, Redis: rdb, Registerer: reg, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Stop(ctx)
	// Watch the meter's own counter: polling the consumer's info this
	// often would load the server and slow what is measured.
	for applied := 0.0; applied < float64(n); {
		applied = testutil.ToFloat64(m.metrics.events.WithLabelValues("applied"))
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("the meter applied %v of %d events in two minutes", applied, n)
		}
		time.Sleep(time.Millisecond)
	}
	meterTime := time.Since(start)
	b.StopTimer()
	calls2 := testenv.RedisCalls(b, rdb)
	raw := float64(n) / rawTime.Seconds()
	got := float64(n) / meterTime.Seconds()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(raw, "raw_ev/s")
	b.ReportMetric(got, "meter_ev/s")
	b.ReportMetric(got/raw, "ratio")
	// Events handed over again: none is expected here; some say
	// deliveries were lost on their way to the chunks and waited out
	// their ack wait (a run slower by about that much).
	b.ReportMetric(testutil.ToFloat64(m.metrics.redelivered), "redelivered")
	if calls0 >= 0 { // miniredis keeps no counts
		b.ReportMetric(float64(calls1-calls0)/float64(n), "raw_cmds/ev")
		b.ReportMetric(float64(calls2-calls1)/float64(n), "meter_cmds/ev")
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "allot_meter_batch_size" {
			h := mf.GetMetric()[0].GetHistogram()
			if c := h.GetSampleCount(); c > 0 {
				b.ReportMetric(h.GetSampleSum()/float64(c), "events/batch")
			}
		}
	}
}

// BenchmarkCredit runs 32 concurrent clients, on a connection of their
// own as apps would be, against meter.credit and two references in the
// same run: a raw micro responder doing one Redis GET per request with 16
// handlers (the baseline: a round trip per request, as credit was served
// before batching) and
// a bare NATS responder doing no work (the floor of request and reply on
// this machine). The three take turns for ALLOT_BENCH_ROUNDS rounds
// (default 3) of ALLOT_BENCH_DURATION each (default 2s), so a shared
// machine's noise falls on all of them; it reports each one's median rate
// and p99 over all rounds, the ratios to the baseline and to the floor,
// and the mean batch the meter served. credit_batched is the same credit
// through a client batching the calls in flight together
// (events.BatchOptions; ALLOT_BENCH_BATCH_WAIT and
// ALLOT_BENCH_BATCH_INFLIGHT override its MaxWait and MaxInFlight), and
// floor_batched the same client against bare responders
// (testenv.FloorBatchResponder): the floor of batching itself. It
// runs once whatever b.N is. ALLOT_BENCH_HANDLERS and
// ALLOT_BENCH_PIPELINES override the meter's handlers and pipelines, to
// compare settings.
func BenchmarkCredit(b *testing.B) {
	nc, rdb, cfg := benchSetup(b)
	ctx := context.Background()
	d, rounds := testenv.BenchTurns()
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_HANDLERS")); err == nil {
		cfg.Meter.Handlers = v
	}
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_PIPELINES")); err == nil {
		cfg.Meter.Pipelines = v
	}
	m, err := Start(ctx, cfg, Deps{NATS: nc, Redis: rdb, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Stop(ctx)
	// Some state to read.
	fill(b, nc, cfg, 2000)

	testenv.RawResponder(b, nc, rdb, "b.raw.*", cfg.Redis.KeyPrefix+"raw", 16)
	testenv.FloorResponder(b, nc, "b.floor.*", []byte(`{"v":"0"}`))
	cnc, err := nats.Connect(nc.ConnectedUrl())
	if err != nil {
		b.Fatal(err)
	}
	defer cnc.Close()
	load := func(subject func(string) string, body []byte) testenv.Load {
		return testenv.Load{Clients: 32, Duration: d, Body: body,
			Subject: func(i int) string { return subject("u-" + strconv.Itoa(i%1000)) },
			Check: func(msg *nats.Msg) error {
				if serr := events.DecodeServiceError(msg); serr != nil {
					return serr
				}
				return nil
			}}
	}
	// The same credit through the client with batching on: calls in
	// flight together travel as one batch message.
	bopts := events.BatchOptions{Enabled: true}
	if v, err := time.ParseDuration(os.Getenv("ALLOT_BENCH_BATCH_WAIT")); err == nil {
		bopts.MaxWait = v
	}
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_BATCH_INFLIGHT")); err == nil {
		bopts.MaxInFlight = v
	}
	batchedLoad := func(subjects events.Subjects) testenv.Load {
		bc, err := events.NewClient(cnc, events.ClientOptions{Subjects: subjects, Batch: bopts})
		if err != nil {
			b.Fatal(err)
		}
		return testenv.Load{Clients: 32, Duration: d, Call: func(i int) error {
			_, err := bc.Credit(ctx, "u-"+strconv.Itoa(i%1000), "photo_daily_total")
			return err
		}}
	}
	// The floor of batching: the same client against bare responders
	// answering a credit, doing no work.
	bare := cfg.Subjects
	bare.Meter = "b.floor_batched"
	testenv.FloorBatchResponder(b, nc, bare.Credit("*"), bare.CreditMany("*"),
		[]byte(`{"uid":"u-1","metric":"photo_daily_total","limit":200,"used":3,"remaining":197,"overage":0,"period":"forever"}`))
	var batches, batched float64
	var before *dto.Histogram
	b.ResetTimer()
	for range b.N {
		res := testenv.Interleave(b, cnc, rounds, []testenv.Phase{
			{Name: "floor", Load: load(func(u string) string { return "b.floor." + u }, nil)},
			{Name: "raw", Load: load(func(u string) string { return "b.raw." + u }, nil)},
			{Name: "credit", Load: load(cfg.Subjects.Credit, []byte(`{"metric":"photo_daily_total"}`)),
				Before: func() { before = histogramOf(b, m.metrics.requestBatch.WithLabelValues("credit")) },
				After: func() {
					after := histogramOf(b, m.metrics.requestBatch.WithLabelValues("credit"))
					batches += float64(after.GetSampleCount() - before.GetSampleCount())
					batched += after.GetSampleSum() - before.GetSampleSum()
				}},
			{Name: "credit_batched", Load: batchedLoad(cfg.Subjects)},
			{Name: "floor_batched", Load: batchedLoad(bare)},
		})
		b.ReportMetric(0, "ns/op")
		for _, name := range []string{"floor", "raw", "credit", "credit_batched", "floor_batched"} {
			b.ReportMetric(res[name].Rate, name+"_req/s")
			b.ReportMetric(testenv.Ms(res[name].Latencies.Quantile(0.99)), name+"_p99_ms")
		}
		b.ReportMetric(testenv.Ms(res["credit"].Latencies.Quantile(0.5)), "credit_p50_ms")
		b.ReportMetric(res["credit"].Rate/res["raw"].Rate, "ratio")
		b.ReportMetric(res["credit"].Rate/res["floor"].Rate, "of_floor")
		b.ReportMetric(res["credit_batched"].Rate/res["floor"].Rate, "batched_of_floor")
		b.ReportMetric(res["floor_batched"].Rate/res["floor"].Rate, "floor_batched_of_floor")
		b.ReportMetric(res["credit_batched"].Rate/res["floor_batched"].Rate, "batched_of_floor_batched")
		if batches > 0 {
			b.ReportMetric(batched/batches, "req/batch")
		}
	}
}

// histogramOf reads a histogram's current state.
func histogramOf(b *testing.B, o prometheus.Observer) *dto.Histogram {
	b.Helper()
	var pb dto.Metric
	if err := o.(prometheus.Metric).Write(&pb); err != nil {
		b.Fatal(err)
	}
	return pb.GetHistogram()
}
