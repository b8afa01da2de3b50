package events

import (
	"encoding/json"
	"errors"
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
