package registry

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

// benchSetup connects to ALLOT_BENCH_NATS_URL and ALLOT_BENCH_REDIS_URL
// (the real servers the README's figures come from) or to an embedded
// NATS and miniredis, and returns a config whose subjects and keys are
// the benchmark's own and are removed afterwards.
func benchSetup(b *testing.B) (natsURL, redisURL string, rdb *redis.Client, cfg Config) {
	b.Helper()
	natsURL = os.Getenv("ALLOT_BENCH_NATS_URL")
	if natsURL == "" {
		natsURL = testenv.EmbeddedCoreNATS(b)
	}
	redisURL = os.Getenv("ALLOT_BENCH_REDIS_URL")
	if redisURL == "" {
		mr := miniredis.RunT(b)
		redisURL = "redis://" + mr.Addr()
	}
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		b.Fatal(err)
	}
	opts.PoolSize = 64
	rdb = redis.NewClient(opts)
	b.Cleanup(func() { _ = rdb.Close() })

	var r [4]byte
	_, _ = rand.Read(r[:])
	tag := hex.EncodeToString(r[:])
	cfg = DefaultConfig()
	cfg.Instance = "bench"
	cfg.Redis.KeyPrefix = "b" + tag + ":"
	cfg.Subjects.Registry = "b" + tag + ".registry"
	cfg.Registry.Keys = []service.Secret{"bench-key-0123456789abcdef"}
	cfg.Registry.Handlers = 4
	cfg.Registry.SelfRegister = false
	b.Cleanup(func() {
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, cfg.Redis.KeyPrefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})
	return natsURL, redisURL, rdb, cfg
}

// benchInstances are n instances of 10 services, two resources each.
func benchInstances(n int) []events.RegisterRequest {
	out := make([]events.RegisterRequest, n)
	for i := range out {
		svc := i % 10
		out[i] = events.RegisterRequest{Name: fmt.Sprint("svc-", svc), ID: fmt.Sprintf("svc-%d-pod-%04d", svc, i),
			Endpoints: []string{fmt.Sprint("res-", svc), fmt.Sprint("res-", svc, "-admin")},
			IPv4:      fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), Port: 8080, PublicURL: fmt.Sprintf("https://svc-%d.example.com", svc)}
	}
	return out
}

// registerAll registers reqs over conc connections and returns when all
// are answered.
func registerAll(b *testing.B, natsURL string, subj events.Subjects, reqs []events.RegisterRequest, conc int) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, conc)
	for w := range conc {
		nc, err := nats.Connect(natsURL)
		if err != nil {
			b.Fatal(err)
		}
		c, _ := events.NewClient(nc, events.ClientOptions{Subjects: subj, Timeout: 10 * time.Second})
		wg.Go(func() {
			defer nc.Close()
			for i := w; i < len(reqs); i += conc {
				if _, err := c.Register(context.Background(), reqs[i]); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// findClients is how many clients BenchmarkFind and BenchmarkFindFloor
// run at once, each on its own connection.
const findClients = 16

// roundTrips has findClients clients call do in a loop and reports the
// percentiles of its latency (do's own time: request to reply received
// and, for gzip, inflated), the bytes of a reply on the wire and, when do
// inflates, the mean time that took and the percentiles without it
// (wire_ms: what the client waited for; the clients share the machine's
// cores with the servers, so their inflating still slows the others).
func roundTrips(b *testing.B, natsURL string, do func(nc *nats.Conn, buf *[]byte) (wire int, inflate time.Duration, err error)) {
	b.Helper()
	per := max(b.N/findClients, 50)
	lat := make([][]time.Duration, findClients)
	wait := make([][]time.Duration, findClients)
	var size atomic.Int64
	var wg sync.WaitGroup
	conns := make([]*nats.Conn, findClients)
	for w := range conns {
		nc, err := nats.Connect(natsURL)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		conns[w] = nc
	}
	b.ResetTimer()
	for w, nc := range conns {
		wg.Go(func() {
			var buf []byte // each client's, as events.Client keeps a pool
			for range per {
				start := time.Now()
				wire, inflate, err := do(nc, &buf)
				took := time.Since(start)
				if err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], took)
				wait[w] = append(wait[w], took-inflate)
				size.Store(int64(wire))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	var all, waited []time.Duration
	for w := range lat {
		all = append(all, lat[w]...)
		waited = append(waited, wait[w]...)
	}
	if len(all) == 0 {
		return
	}
	var inflated time.Duration
	for i := range all {
		inflated += all[i] - waited[i]
	}
	pct := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(all, 0.5), "p50_ms")
	b.ReportMetric(pct(all, 0.99), "p99_ms")
	b.ReportMetric(float64(size.Load())/1024, "reply_KiB")
	if inflated > 0 {
		b.ReportMetric(float64(inflated.Microseconds())/float64(len(all)), "inflate_us")
		b.ReportMetric(pct(waited, 0.5), "p50_wire_ms")
		b.ReportMetric(pct(waited, 0.99), "p99_wire_ms")
	}
	b.ReportMetric(0, "ns/op")
}

// findRequest asks subject for a find, accepting gzip or not, and
// returns the body as events.Client uses it (inflated into *buf, kept
// from one request to the next), the bytes on the wire and the time
// inflating took.
func findRequest(nc *nats.Conn, buf *[]byte, subject string, gz bool) (body []byte, wire int, inflate time.Duration, err error) {
	req := &nats.Msg{Subject: subject}
	if gz {
		req.Header = nats.Header{events.HeaderAcceptEncoding: {events.EncodingGzip}}
	}
	msg, err := nc.RequestMsg(req, 10*time.Second)
	if err != nil {
		return nil, 0, 0, err
	}
	if serr := events.DecodeServiceError(msg); serr != nil {
		return nil, 0, 0, serr
	}
	if msg.Header.Get(events.HeaderContentEncoding) == "" {
		return msg.Data, len(msg.Data), 0, nil
	}
	start := time.Now()
	if body, err = events.AppendReplyBody((*buf)[:0], msg); err != nil {
		return nil, 0, 0, err
	}
	*buf = body
	return body, len(msg.Data), time.Since(start), nil
}

// BenchmarkFind: 16 clients, each on its own connection, ask
// registry.find (all 1,000 instances) or registry.find.<name> (100) in a
// loop, plain (enc=plain, no Accept-Encoding, as a raw NATS user or an
// older client asks) and gzipped (enc=gzip, as events.Client.Find asks),
// one after the other on the same registry and instances. It reports the
// latency percentiles of the round trip: request to reply received and,
// for gzip, inflated, which a client must do to use it (the JSON decoding
// is timed in neither); the reply's size on the wire; and the mean time
// inflating took. cache=1s is the default find_cache (no changes arrive
// during the run, so finds are served from memory, and the gzipped reply
// is made once); cache=0 reads Redis and decrypts all 1,000 entries, and
// compresses, on every find.
func BenchmarkFind(b *testing.B) {
	for _, cache := range []time.Duration{time.Second, 0} {
		for _, name := range []string{"", "svc-3"} {
			label := "all"
			if name != "" {
				label = "one"
			}
			b.Run(fmt.Sprintf("cache=%v/find=%s", cache, label), func(b *testing.B) {
				natsURL, _, rdb, cfg := benchSetup(b)
				cfg.Registry.FindCache = cache
				nc, err := nats.Connect(natsURL)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(nc.Close)
				r, err := Start(b.Context(), cfg, Deps{NATS: nc, Redis: rdb, Log: slog.New(slog.DiscardHandler)})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = r.Stop(context.Background()) })
				registerAll(b, natsURL, cfg.Subjects, benchInstances(1000), 16)
				subject := cfg.Subjects.Find(name)
				for _, gz := range []bool{false, true} {
					b.Run("enc="+map[bool]string{false: "plain", true: "gzip"}[gz], func(b *testing.B) {
						roundTrips(b, natsURL, func(nc *nats.Conn, buf *[]byte) (int, time.Duration, error) {
							_, wire, inflate, err := findRequest(nc, buf, subject, gz)
							if err == nil && gz && inflate == 0 {
								err = fmt.Errorf("find %s accepting gzip: a plain reply of %d bytes", subject, wire)
							}
							return wire, inflate, err
						})
					})
				}
			})
		}
	}
}

// benchFindReply is the find reply of all benchInstances(1000), plain
// and as the registry gzips it.
func benchFindReply(b *testing.B) (plain, gz []byte) {
	b.Helper()
	reqs := benchInstances(1000)
	insts := make([]events.Instance, len(reqs))
	// Registered as registerAll does, about two a millisecond; Redis
	// keeps milliseconds.
	created := time.Now().UTC().Truncate(time.Millisecond)
	for i, r := range reqs {
		insts[i] = events.Instance{Name: r.Name, ID: r.ID, Endpoints: r.Endpoints, IPv4: r.IPv4, Port: r.Port,
			PublicURL: r.PublicURL, Created: created.Add(time.Duration(i/2) * time.Millisecond)}
	}
	sort.Slice(insts, func(i, j int) bool {
		if insts[i].Name != insts[j].Name {
			return insts[i].Name < insts[j].Name
		}
		return insts[i].ID < insts[j].ID
	})
	plain, err := json.Marshal(BuildFindReply(insts, ""))
	if err != nil {
		b.Fatal(err)
	}
	gz, err = gzipBytes(plain)
	if err != nil {
		b.Fatal(err)
	}
	return plain, gz
}

// BenchmarkFindFloor is the floor BenchmarkFind is measured against: a
// bare NATS responder that answers every request with the same
// 1,000-instance find reply, under the same 16 clients, built in advance:
// size=plain sends it as it is, size=gzip gzipped with Content-Encoding,
// and its clients inflate it as BenchmarkFind's enc=gzip do.
func BenchmarkFindFloor(b *testing.B) {
	plain, gz := benchFindReply(b)
	for _, zipped := range []bool{false, true} {
		b.Run("size="+map[bool]string{false: "plain", true: "gzip"}[zipped], func(b *testing.B) {
			natsURL, _, _, cfg := benchSetup(b)
			nc, err := nats.Connect(natsURL)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(nc.Close)
			reply := &nats.Msg{Data: plain}
			if zipped {
				reply = &nats.Msg{Header: nats.Header{events.HeaderContentEncoding: {events.EncodingGzip}}, Data: gz}
			}
			for range 4 {
				if _, err := nc.QueueSubscribe(cfg.Subjects.Find(""), "floor", func(m *nats.Msg) {
					_ = m.RespondMsg(&nats.Msg{Header: reply.Header, Data: reply.Data})
				}); err != nil {
					b.Fatal(err)
				}
			}
			_ = nc.Flush()
			subject := cfg.Subjects.Find("")
			roundTrips(b, natsURL, func(nc *nats.Conn, buf *[]byte) (int, time.Duration, error) {
				_, wire, inflate, err := findRequest(nc, buf, subject, zipped)
				return wire, inflate, err
			})
		})
	}
}

// BenchmarkFindGzipLevel compresses the 1,000-instance find reply at each
// gzip level and inflates it as the client does: the figures gzipLevel
// was chosen from. It reports the size, the time to compress (once per
// cached reply, on the first gzip find after a change) and the time to
// inflate (on every client, on every find).
func BenchmarkFindGzipLevel(b *testing.B) {
	plain, _ := benchFindReply(b)
	for _, level := range []int{gzip.HuffmanOnly, 1, 2, 3, 4, 5, 6, 7, 9} {
		b.Run(fmt.Sprintf("level=%d", level), func(b *testing.B) {
			w, err := gzip.NewWriterLevel(nil, level)
			if err != nil {
				b.Fatal(err)
			}
			var buf bytes.Buffer
			compress := func() {
				buf.Reset()
				w.Reset(&buf)
				_, _ = w.Write(plain)
				_ = w.Close()
			}
			compress() // warm up
			rounds := max(b.N, 50)
			b.ResetTimer()
			start := time.Now()
			for range rounds {
				compress()
			}
			compressed := time.Since(start)
			msg := &nats.Msg{Header: nats.Header{events.HeaderContentEncoding: {events.EncodingGzip}}, Data: buf.Bytes()}
			var body []byte // reused, as events.Client does
			start = time.Now()
			for range rounds {
				if body, err = events.AppendReplyBody(body[:0], msg); err != nil {
					b.Fatal(err)
				}
			}
			inflated := time.Since(start)
			b.StopTimer()
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(buf.Len()), "gzip_B")
			b.ReportMetric(100*float64(buf.Len())/float64(len(plain)), "gzip_%")
			b.ReportMetric(float64(compressed.Microseconds())/float64(rounds), "compress_us")
			b.ReportMetric(float64(inflated.Microseconds())/float64(rounds), "inflate_us")
		})
	}
}

// BenchmarkHeartbeatCPU runs the registry binary (cmd/registry) as a
// child process and sends it rounds of 1,000 heartbeats (re-registering
// 1,000 unchanged instances, from this process over 16 connections),
// reading the child's CPU time (utime+stime in /proc/<pid>/stat) before
// and after. cpu_ms/round is the registry's CPU per heartbeat round of
// 1,000 instances; core_% is that over the 30s heartbeat interval: the
// share of one core that 1,000 instances cost. Redis's and the clients'
// CPU are not the registry's and are not counted.
func BenchmarkHeartbeatCPU(b *testing.B) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		b.Skip("needs /proc")
	}
	natsURL, redisURL, _, cfg := benchSetup(b)
	bin := filepath.Join(b.TempDir(), "registry")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/registry").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "NATS_URL="+natsURL, "REDIS_URL="+redisURL, "ALLOT_HTTP_ADDR=127.0.0.1:0",
		"ALLOT_INSTANCE=bench", "ALLOT_REGISTRY_KEYS=bench-key-0123456789abcdef", "ALLOT_LOG_LEVEL=warn")
	cfgFile := filepath.Join(b.TempDir(), "allot.yaml")
	body := fmt.Sprintf("redis: {key_prefix: %q}\nsubjects: {registry: %q}\nregistry: {handlers: 4, self_register: false}\n", cfg.Redis.KeyPrefix, cfg.Subjects.Registry)
	if err := os.WriteFile(cfgFile, []byte(body), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd.Env = append(cmd.Env, "ALLOT_CONFIG="+cfgFile)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	nc, err := nats.Connect(natsURL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	c, _ := events.NewClient(nc, events.ClientOptions{Subjects: cfg.Subjects})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := c.Find(context.Background(), ""); err == nil {
			break
		} else if time.Now().After(deadline) {
			b.Fatalf("the registry did not answer: %v", err)
		}
	}
	reqs := benchInstances(1000)
	registerAll(b, natsURL, cfg.Subjects, reqs, 16) // they appear
	rounds := max(b.N, 5)
	b.ResetTimer()
	before := cpuTime(b, cmd.Process.Pid)
	start := time.Now()
	for range rounds {
		registerAll(b, natsURL, cfg.Subjects, reqs, 16)
	}
	wall := time.Since(start)
	used := cpuTime(b, cmd.Process.Pid) - before
	b.StopTimer()
	perRound := used / time.Duration(rounds)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(perRound.Microseconds())/1000, "cpu_ms/round")
	b.ReportMetric(float64(perRound)/float64(30*time.Second)*100, "core_%")
	b.ReportMetric(float64(rounds*len(reqs))/wall.Seconds(), "heartbeats/s")
}

// cpuTime reads a process's user+system CPU time from /proc (clock ticks
// of 10ms).
func cpuTime(b *testing.B, pid int) time.Duration {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
