package registry

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

func TestFindGzip(t *testing.T) {
	b := miniBackend(t)
	testFindGzip(t, natsURL(t), b.rdb, b.prefix)
}

// testFindGzip runs a registry with subjects and keys of its own on
// natsURL and rdb and checks the gzipped find against the plain one: the
// same bytes once inflated, compressed once per cached reply, both forms
// dropped together by a change event.
func testFindGzip(t *testing.T, natsURL string, rdb redis.UniversalClient, prefix string) {
	var tag [4]byte
	_, _ = rand.Read(tag[:])
	cfg := DefaultConfig()
	cfg.Instance = "test"
	cfg.Redis.KeyPrefix = prefix
	cfg.Subjects.Registry = "t" + hex.EncodeToString(tag[:]) + ".registry"
	cfg.Registry.Keys = []service.Secret{testKey}
	cfg.Registry.FindCache = 10 * time.Second // only the change event drops it here
	cfg.Registry.Handlers = 2
	cfg.Registry.SelfRegister = false
	connect := func() *nats.Conn {
		nc, err := nats.Connect(natsURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	r, err := Start(t.Context(), cfg, Deps{NATS: connect(), Redis: rdb, Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Stop(t.Context()) })
	nc := connect()
	client, err := events.NewClient(nc, events.ClientOptions{Subjects: cfg.Subjects, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	// 30 instances of three services, and one alone whose reply is small.
	for i := range 30 {
		svc := fmt.Sprint("svc-", i%3)
		req := events.RegisterRequest{Name: svc, ID: fmt.Sprintf("%s-pod-%02d", svc, i), Endpoints: []string{"res-" + svc, "res-" + svc + "-admin"},
			IPv4: fmt.Sprintf("10.0.0.%d", i+1), Port: 8080, PublicURL: "https://" + svc + ".example.com"}
		if _, err := client.Register(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.Register(ctx, events.RegisterRequest{Name: "tiny", ID: "t1", IPv4: "10.0.1.1", Port: 80}); err != nil {
		t.Fatal(err)
	}

	// find asks raw NATS, with or without Accept-Encoding, and returns
	// the body as sent, its Content-Encoding and the body inflated.
	find := func(name string, gz bool) (sent []byte, encoding string, body []byte) {
		t.Helper()
		msg := &nats.Msg{Subject: cfg.Subjects.Find(name), Header: nats.Header{}}
		if gz {
			msg.Header.Set(events.HeaderAcceptEncoding, events.EncodingGzip)
		}
		reply, err := nc.RequestMsg(msg, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if serr := events.DecodeServiceError(reply); serr != nil {
			t.Fatalf("find %q: %v", name, serr)
		}
		encoding = reply.Header.Get(events.HeaderContentEncoding)
		body = reply.Data
		if encoding == events.EncodingGzip {
			zr, err := gzip.NewReader(bytes.NewReader(reply.Data))
			if err != nil {
				t.Fatal(err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		return reply.Data, encoding, body
	}
	decode := func(body []byte) events.FindReply {
		t.Helper()
		var fr events.FindReply
		if err := json.Unmarshal(body, &fr); err != nil {
			t.Fatal(err)
		}
		return fr
	}
	compressions := func() float64 { return testutil.ToFloat64(r.metrics.compressions) }

	// Plain without the header, exactly as before; gzip with it, the same
	// bytes once inflated.
	plainSent, enc, plain := find("", false)
	if enc != "" || !bytes.Equal(plainSent, plain) {
		t.Errorf("a find without Accept-Encoding came with Content-Encoding %q", enc)
	}
	if n := compressions(); n != 0 {
		t.Errorf("%v compressions for a plain find, want 0", n)
	}
	gzSent, enc, inflated := find("", true)
	if enc != events.EncodingGzip {
		t.Fatalf("a find of %d bytes accepting gzip came with Content-Encoding %q", len(plain), enc)
	}
	if !bytes.Equal(inflated, plain) {
		t.Errorf("the gzipped reply inflates to another body:\n%s\nplain:\n%s", inflated, plain)
	}
	if len(gzSent) >= len(plain)/4 {
		t.Errorf("gzipped %d bytes to %d", len(plain), len(gzSent))
	}
	all := decode(plain)
	if len(all.Instances) != 31 || len(all.URLMap) != 6 {
		t.Errorf("find: %d instances, url_map %v", len(all.Instances), all.URLMap)
	}
	// The client asks for gzip and gets the same instances and url_map.
	viaClient, err := client.Find(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(all, viaClient); diff != "" {
		t.Errorf("client find (gzip) against a plain find (-plain +client):\n%s", diff)
	}

	// The cache serves the gzipped bytes it made, without compressing
	// again; each name is compressed once.
	hits := testutil.ToFloat64(r.metrics.finds.WithLabelValues("hit"))
	for range 5 {
		if again, _, _ := find("", true); !bytes.Equal(again, gzSent) {
			t.Error("a cached gzip find sent other bytes")
		}
		find("", false)
	}
	if n := compressions(); n != 1 {
		t.Errorf("%v compressions after 6 gzip finds of one cached reply, want 1", n)
	}
	if got := testutil.ToFloat64(r.metrics.finds.WithLabelValues("hit")) - hits; got != 10 {
		t.Errorf("%v cache hits, want 10", got)
	}
	if _, enc, body := find("svc-1", true); enc != events.EncodingGzip || len(decode(body).Instances) != 10 {
		t.Errorf("find svc-1: %q, %d instances", enc, len(decode(body).Instances))
	}
	if n := compressions(); n != 2 {
		t.Errorf("%v compressions after a find of another name, want 2", n)
	}
	// A reply under gzipMin stays plain, and says so.
	tinySent, enc, _ := find("tiny", true)
	if enc != "" || len(tinySent) >= gzipMin {
		t.Errorf("find tiny (%d bytes) accepting gzip: Content-Encoding %q", len(tinySent), enc)
	}
	if tiny, err := client.Find(ctx, "tiny"); err != nil || len(tiny.Instances) != 1 {
		t.Errorf("client find tiny: %+v, %v", tiny, err)
	}
	if n := compressions(); n != 2 {
		t.Errorf("%v compressions after a small find, want 2", n)
	}

	// An instance stored without an event is not seen (the cache holds);
	// its change event, as another replica would publish it, drops both
	// forms.
	added := events.RegisterRequest{Name: "svc-0", ID: "svc-0-late", Endpoints: []string{"res-late"}, IPv4: "10.0.2.1", Port: 8080,
		PublicURL: "https://late.example.com"}
	if _, _, err := r.register(ctx, added); err != nil {
		t.Fatal(err)
	}
	if _, _, body := find("", true); len(decode(body).Instances) != 31 {
		t.Fatal("the cache was dropped without a change event")
	}
	data, _ := json.Marshal(events.RegistryChange{Name: added.Name, ID: added.ID, Change: events.ChangeAppeared})
	if err := nc.Publish(cfg.Subjects.RegistryChanged(added.Name), data); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, _, body := find("", false); len(decode(body).Instances) == 32 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the change event did not drop the plain reply")
		}
	}
	_, enc, inflated = find("", true)
	if got := decode(inflated); enc != events.EncodingGzip || len(got.Instances) != 32 || got.URLMap["res-late"] != added.PublicURL {
		t.Errorf("gzip find after the change event: %q, %d instances, url_map %v", enc, len(got.Instances), got.URLMap)
	}
	if n := compressions(); n != 3 {
		t.Errorf("%v compressions after the change, want 3", n)
	}
}
