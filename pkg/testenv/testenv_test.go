package testenv

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestURLsDefault(t *testing.T) {
	t.Setenv("ALLOT_TEST_REDIS_URL", "")
	t.Setenv("ALLOT_TEST_NATS_URL", "")
	if RedisURL() != "redis://127.0.0.1:6379/0" || NATSURL() != "nats://127.0.0.1:4222" {
		t.Errorf("defaults: %s %s", RedisURL(), NATSURL())
	}
	t.Setenv("ALLOT_TEST_REDIS_URL", "redis://example:1/2")
	if RedisURL() != "redis://example:1/2" {
		t.Errorf("override ignored: %s", RedisURL())
	}
}

// An unreachable server skips; the skip names the address.
func TestUnreachableSkips(t *testing.T) {
	t.Setenv("ALLOT_REQUIRE_INTEGRATION", "")
	t.Setenv("ALLOT_TEST_REDIS_URL", "redis://127.0.0.1:1/0")
	var skipped string
	t.Run("redis", func(t *testing.T) {
		defer func() { skipped = "done" }()
		RedisOptions(t)
		t.Error("RedisOptions returned for an unreachable Redis")
	})
	if skipped != "done" || !strings.Contains(RedisURL(), ":1/") {
		t.Error("subtest did not run")
	}
}

func TestEmbeddedNATS(t *testing.T) {
	nc, err := nats.Connect(EmbeddedNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AccountInfo(); err != nil {
		t.Fatalf("JetStream is not on: %v", err)
	}
}
