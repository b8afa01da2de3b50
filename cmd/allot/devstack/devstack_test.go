package devstack

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/google/go-cmp/cmp"
)

// allot dev runs the registry with a key it makes up, and every service
// registers itself in it.
func TestEveryServiceRegistersItself(t *testing.T) {
	cfg := service.Default()
	cfg.Instance = "laptop.local"
	st, err := Start(t.Context(), Options{Config: cfg, NATSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	c, err := events.NewClient(st.NATS, events.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"meter/laptop-local-meter", "ratelimit/laptop-local-ratelimit", "registry/laptop-local-registry"}
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
