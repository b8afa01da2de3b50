package testenv

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/redis/go-redis/v9"
)

// Latencies are the latencies of the answered requests of a run, and how
// many of them were answers that the check counted apart (a 503 from a
// service that is up but whose backend is past its budget).
type Latencies struct {
	mu    sync.Mutex
	d     []time.Duration
	apart int
}

// Add merges other into l.
func (l *Latencies) Add(other *Latencies) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.d = append(l.d, other.d...)
	l.apart += other.apart
}

// Len is the number of answered requests.
func (l *Latencies) Len() int { return len(l.d) }

// Apart is the number of answers the check counted apart.
func (l *Latencies) Apart() int { return l.apart }

// Quantile returns the q-quantile (0..1) of the latencies.
func (l *Latencies) Quantile(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	sort.Slice(l.d, func(i, j int) bool { return l.d[i] < l.d[j] })
	if len(l.d) == 0 {
		return 0
	}
	return l.d[int(q*float64(len(l.d)-1))]
}

// Ms is d in milliseconds, for b.ReportMetric.
func Ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Load is a closed-loop request load: Clients goroutines, each sending
// its next request as soon as the last is answered, for Duration.
type Load struct {
	Clients  int
	Duration time.Duration
	// Subject names the i-th request's subject.
	Subject func(i int) string
	Body    []byte
	// Check judges a reply: nil is an answer; ErrApart an answer counted
	// apart; anything else fails the benchmark. Nil accepts every reply.
	Check func(*nats.Msg) error
	// Call, when set, makes the i-th request itself (through a client
	// library, say) instead of a request of Body on Subject(i); its error
	// is judged as Check's.
	Call func(i int) error
}

// ErrApart, from a Load's Check, counts an answer apart.
var ErrApart = fmt.Errorf("testenv: counted apart")

// Run sends the load on nc and returns the rate of answered requests and
// their latencies.
func (ld Load) Run(tb testing.TB, nc *nats.Conn) (float64, *Latencies) {
	tb.Helper()
	var wg sync.WaitGroup
	all := &Latencies{}
	deadline := time.Now().Add(ld.Duration)
	var failure sync.Once
	var failed error
	for c := range ld.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := &Latencies{}
			for i := c; time.Now().Before(deadline); i += ld.Clients {
				t0 := time.Now()
				err := ld.request(nc, i)
				if err == ErrApart {
					mine.apart++
					err = nil
				}
				if err != nil {
					failure.Do(func() { failed = fmt.Errorf("request %d: %w", i, err) })
					continue
				}
				mine.d = append(mine.d, time.Since(t0))
			}
			all.Add(mine)
		}()
	}
	wg.Wait()
	if failed != nil {
		tb.Fatal(failed)
	}
	return float64(all.Len()) / ld.Duration.Seconds(), all
}

// request makes the i-th request and judges its reply.
func (ld Load) request(nc *nats.Conn, i int) error {
	if ld.Call != nil {
		return ld.Call(i)
	}
	msg, err := nc.Request(ld.Subject(i), ld.Body, 2*time.Second)
	if err == nil && ld.Check != nil {
		err = ld.Check(msg)
	}
	return err
}

// RawResponder starts the request benchmarks' baseline on nc: handlers
// micro handlers in one queue group on subject, each answering with one
// Redis GET of key per request, a round trip per request.
func RawResponder(tb testing.TB, nc *nats.Conn, rdb redis.UniversalClient, subject, key string, handlers int) {
	tb.Helper()
	for range handlers {
		svc, err := micro.AddService(nc, micro.Config{Name: "rawbaseline", Version: "0.0.1", QueueGroup: "raw"})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = svc.Stop() })
		if err := svc.AddEndpoint("get", micro.HandlerFunc(func(req micro.Request) {
			v, _ := rdb.Get(context.Background(), key).Result()
			_ = req.Respond([]byte(`{"v":"` + v + `"}`))
		}), micro.WithEndpointSubject(subject)); err != nil {
			tb.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		tb.Fatal(err)
	}
}

// FloorResponder starts the floor of the request benchmarks on nc: a bare
// subscription on subject that answers reply at once, no work at all, so
// its figures are what request and reply cost on the machine.
func FloorResponder(tb testing.TB, nc *nats.Conn, subject string, reply []byte) {
	tb.Helper()
	sub, err := nc.Subscribe(subject, func(msg *nats.Msg) { _ = msg.Respond(reply) })
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		tb.Fatal(err)
	}
}

// FloorBatchResponder starts the floor of batched requests on nc: bare
// subscriptions that answer each request on single with reply, and each
// batch message on many (as events.Client sends it with batching on)
// with reply for each of its requests, no work at all: what batching
// itself reaches on the machine. It counts a batch's requests by their
// "uid" members, as the client writes them, and needs bodies without
// one.
func FloorBatchResponder(tb testing.TB, nc *nats.Conn, single, many string, reply []byte) {
	tb.Helper()
	FloorResponder(tb, nc, single, reply)
	sub, err := nc.Subscribe(many, func(msg *nats.Msg) {
		n := bytes.Count(msg.Data, []byte(`{"uid":`))
		out := make([]byte, 0, 16+n*(len(reply)+24))
		out = append(out, `{"replies":[`...)
		for i := range n {
			if i > 0 {
				out = append(out, ',')
			}
			out = append(out, `{"status":200,"body":`...)
			out = append(append(out, reply...), '}')
		}
		_ = msg.Respond(append(out, "]}"...))
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		tb.Fatal(err)
	}
}

// Phase is one named load of an interleaved run.
type Phase struct {
	Name string
	Load Load
	// Before and After, when set, run around each of its rounds (to read
	// a service's counters).
	Before, After func()
}

// PhaseResult is a phase's median rate over the rounds and its latencies
// over all of them.
type PhaseResult struct {
	Rate      float64
	Latencies *Latencies
}

// Interleave runs the phases in turns, rounds times, so that a shared
// machine's noise falls on all of them alike, and returns each phase's
// median rate and all its latencies.
func Interleave(tb testing.TB, nc *nats.Conn, rounds int, phases []Phase) map[string]PhaseResult {
	tb.Helper()
	rates := map[string][]float64{}
	lats := map[string]*Latencies{}
	for range max(rounds, 1) {
		for _, p := range phases {
			if p.Before != nil {
				p.Before()
			}
			rate, lat := p.Load.Run(tb, nc)
			if p.After != nil {
				p.After()
			}
			rates[p.Name] = append(rates[p.Name], rate)
			if lats[p.Name] == nil {
				lats[p.Name] = &Latencies{}
			}
			lats[p.Name].Add(lat)
		}
	}
	out := make(map[string]PhaseResult, len(phases))
	for name, rs := range rates {
		sort.Float64s(rs)
		out[name] = PhaseResult{Rate: rs[len(rs)/2], Latencies: lats[name]}
	}
	return out
}
