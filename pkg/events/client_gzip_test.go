package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
)

// The client's Find asks for gzip, inflates a gzipped reply, reads a
// plain one, and refuses a corrupt one with a clear error.
func TestClientFindGzip(t *testing.T) {
	s := startServer(t, "", 0)
	nc := connect(t, s.ClientURL())
	subj := DefaultSubjects()
	want := FindReply{Instances: []Instance{{Name: "media", ID: "m1", Endpoints: []string{"photo"}, IPv4: "10.0.0.1", Port: 80}},
		URLMap: map[string]string{"photo": "https://m.example"}}
	plain, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var accepts []string
	sub, err := nc.Subscribe(subj.Find(">"), func(m *nats.Msg) {
		mu.Lock()
		accepts = append(accepts, m.Header.Get(HeaderAcceptEncoding))
		mu.Unlock()
		reply := &nats.Msg{Header: nats.Header{}}
		switch m.Subject {
		case subj.Find("gz"):
			reply.Header.Set(HeaderContentEncoding, EncodingGzip)
			reply.Data = gzipped(t, plain)
		case subj.Find("plain"):
			reply.Data = plain
		case subj.Find("corrupt"):
			reply.Header.Set(HeaderContentEncoding, EncodingGzip)
			reply.Data = gzipped(t, plain)[:20]
		case subj.Find("br"):
			reply.Header.Set(HeaderContentEncoding, "br")
			reply.Data = plain
		}
		_ = m.RespondMsg(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	c, err := NewClient(nc, ClientOptions{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gz", "plain"} {
		got, err := c.Find(t.Context(), name)
		if err != nil {
			t.Fatalf("find %s: %v", name, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("find %s (-want +got):\n%s", name, diff)
		}
	}
	for name, says := range map[string]string{"corrupt": "gzip body truncated", "br": `unknown Content-Encoding "br"`} {
		_, err := c.Find(t.Context(), name)
		if !errors.Is(err, ErrReplyEncoding) || !strings.Contains(err.Error(), says) || !strings.Contains(err.Error(), subj.Find(name)) {
			t.Errorf("find %s: %v, want ErrReplyEncoding naming the subject and saying %q", name, err, says)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i, a := range accepts {
		if a != "gzip" {
			t.Errorf("request %d: Accept-Encoding %q, want gzip", i, a)
		}
	}
}

// Requests other than Find carry no Accept-Encoding: only the registry's
// find compresses.
func TestClientOtherRequestsSendNoAcceptEncoding(t *testing.T) {
	s := startServer(t, "", 0)
	nc := connect(t, s.ClientURL())
	headers := make(chan nats.Header, 1)
	sub, err := nc.Subscribe(DefaultSubjects().Reset("u-1"), func(m *nats.Msg) {
		headers <- m.Header
		_ = m.Respond([]byte(`{"ok":true}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	c, _ := NewClient(nc, ClientOptions{Timeout: time.Second})
	if err := c.Reset(t.Context(), "u-1", "upload"); err != nil {
		t.Fatal(err)
	}
	if h := <-headers; len(h) != 0 {
		t.Errorf("reset sent headers %v", h)
	}
}

// headerTap is a NATS connection that, as a tracing hook would, adds a
// header to every request before sending it, and records the header map
// each request arrived with and a copy of what it held then.
type headerTap struct {
	nc    *nats.Conn
	mu    sync.Mutex
	seen  []nats.Header
	given []nats.Header
}

func (h *headerTap) RequestMsgWithContext(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
	h.mu.Lock()
	h.seen = append(h.seen, msg.Header)
	given := nats.Header{}
	for k, v := range msg.Header {
		given[k] = slices.Clone(v)
	}
	h.given = append(h.given, given)
	h.mu.Unlock()
	if msg.Header == nil {
		msg.Header = nats.Header{}
	}
	msg.Header.Set("Traceparent", msg.Subject)
	return h.nc.RequestMsgWithContext(ctx, msg)
}

// Each Find builds its own header: a header one request's message gains
// on its way out never reaches another request, and concurrent finds
// share no map (run with -race).
func TestClientFindHeaderPerRequest(t *testing.T) {
	s := startServer(t, "", 0)
	nc := connect(t, s.ClientURL())
	subj := DefaultSubjects()
	var mu sync.Mutex
	var got []*nats.Msg
	sub, err := nc.Subscribe(subj.Find(">"), func(m *nats.Msg) {
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
		_ = m.Respond([]byte(`{}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	c, err := NewClient(nc, ClientOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tap := &headerTap{nc: nc}
	c.nc = tap

	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := c.Find(t.Context(), fmt.Sprintf("svc-%d", i%4)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if _, err := c.Find(t.Context(), "last"); err != nil {
		t.Fatal(err)
	}

	tap.mu.Lock()
	defer tap.mu.Unlock()
	if len(tap.seen) != n+1 {
		t.Fatalf("%d requests sent, want %d", len(tap.seen), n+1)
	}
	maps := map[uintptr]bool{}
	for _, h := range tap.seen {
		maps[reflect.ValueOf(h).Pointer()] = true
	}
	if len(maps) != n+1 {
		t.Errorf("%d requests went out with %d header maps, want one each", n+1, len(maps))
	}
	for i, h := range tap.given {
		if diff := cmp.Diff(nats.Header{HeaderAcceptEncoding: {EncodingGzip}}, h); diff != "" {
			t.Errorf("request %d: the client gave headers (-want +got):\n%s", i, diff)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, m := range got {
		want := nats.Header{HeaderAcceptEncoding: {EncodingGzip}, "Traceparent": {m.Subject}}
		if diff := cmp.Diff(want, m.Header); diff != "" {
			t.Errorf("find on %s: headers (-want +got):\n%s", m.Subject, diff)
		}
	}
}
