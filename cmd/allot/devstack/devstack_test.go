package devstack

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
)

// allot dev runs the registry with a key it makes up, and every service
// registers itself in it.
func TestEveryServiceRegistersItself(t *testing.T) {
	cfg := service.Default()
	cfg.Instance = "laptop.local"
	st, err := Start(t.Context(), Options{Config: cfg, NATSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	c, err := events.NewClient(st.NATS, events.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"meter/laptop-local-meter", "notifier/laptop-local-notifier", "ratelimit/laptop-local-ratelimit", "registry/laptop-local-registry"}
	var got []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		reply, err := c.Find(t.Context(), "")
		if err != nil {
			continue
		}
		got = got[:0]
		for _, in := range reply.Instances {
			got = append(got, in.Name+"/"+in.ID)
		}
		sort.Strings(got)
		if cmp.Equal(want, got) {
			break
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("registered services (-want +got):\n%s", diff)
	}
	if len(st.Notes) == 0 {
		t.Error("no note that the registry key was made up")
	}
}

// allot dev sends the notifier's mail to its sink, shown at /dev/mail,
// and mounts asynqmon.
func TestMailSinkAndAsynqmon(t *testing.T) {
	cfg := service.Default()
	cfg.Instance = "laptop"
	st, err := Start(t.Context(), Options{Config: cfg, NATSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", SMTPAddr: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	if st.SMTPAddr == "" {
		t.Fatal("no mail sink")
	}
	js, err := jetstream.New(st.NATS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.RequestConfirmation(t.Context(), js, cfg.Subjects, "u-1", events.ConfirmRequest{ID: "c-1", Email: "ada@example.com"}); err != nil {
		t.Fatal(err)
	}
	var page string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		page = get(t, st.HTTPURL+"/dev/mail")
		if strings.Contains(page, "token=") {
			break
		}
	}
	if !strings.Contains(page, "to ada@example.com") || !strings.Contains(page, "token=") {
		t.Fatalf("/dev/mail:\n%s", page)
	}
	// The link's page is served too, and verifies once.
	link := regexp.MustCompile(regexp.QuoteMeta(st.HTTPURL) + `(/confirm\?token=[^\s]+)`).FindStringSubmatch(page)
	if link == nil {
		t.Fatalf("no confirmation link in:\n%s", page)
	}
	if body := get(t, st.HTTPURL+link[1]); body != "Confirmed: ada@example.com is the address of u-1.\n" {
		t.Errorf("confirm page: %q", body)
	}
	resp, err := http.Get(st.HTTPURL + link[1])
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("second visit: %s", resp.Status)
	}
	if body := get(t, st.HTTPURL+"/asynqmon/api/queues"); !strings.Contains(body, `"queue":"critical"`) {
		t.Errorf("asynqmon queues: %s", body)
	}
	if body := get(t, st.HTTPURL+"/asynqmon/"); !strings.Contains(strings.ToLower(body), "<html") {
		t.Errorf("asynqmon UI: %.200s", body)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}

// The embedded NATS creates the streams whatever the caps they reserve
// and the free disk: nats-server sets a stream's max_bytes aside against
// a store limit that defaults to 75% of the free disk, which would refuse
// the default 10 GiB on a nearly full laptop, and here refuses 2 TiB.
func TestStreamsReserveNoMatterTheFreeDisk(t *testing.T) {
	cfg := service.Default()
	cfg.Streams.MaxBytes = 2 << 40
	st, err := Start(t.Context(), Options{Config: cfg, NATSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", SMTPAddr: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	js, err := jetstream.New(st.NATS)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(t.Context(), cfg.Streams.Usage)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.MaxBytes; got != 2<<40 {
		t.Errorf("USAGE max_bytes = %d, want %d", got, int64(2<<40))
	}
}
