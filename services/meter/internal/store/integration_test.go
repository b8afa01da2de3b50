//go:build integration

package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/redis/go-redis/v9"
)

// realBackend connects to ALLOT_TEST_REDIS_URL (default the local Redis)
// under a random key prefix and deletes every key under it afterwards. It
// skips when Redis does not answer, unless ALLOT_REQUIRE_INTEGRATION=1.
func realBackend(t *testing.T) (redis.UniversalClient, string) {
	t.Helper()
	url := os.Getenv("ALLOT_TEST_REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		if os.Getenv("ALLOT_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("real Redis at %s: %v", url, err)
		}
		t.Skipf("no real Redis at %s: %v", url, err)
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	prefix := "allot-it-" + hex.EncodeToString(r[:]) + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
		_ = rdb.Close()
	})
	return rdb, prefix
}

func TestIntegrationBehaviour(t *testing.T) {
	for _, b := range behaviours {
		if b.name == "ScriptsReloadAfterFlush" {
			continue // SCRIPT FLUSH would disturb whatever else uses this Redis
		}
		t.Run(b.name, func(t *testing.T) { b.fn(t, realBackend) })
		t.Run(b.name+"/OneScriptPerEvent", func(t *testing.T) { b.fn(t, perEvent(realBackend)) })
	}
}

// TestIntegrationMemory measures what one dedup record and one (uid,
// grant) cost in Redis, for the README.
func TestIntegrationMemory(t *testing.T) {
	rdb, prefix := realBackend(t)
	ctx := t.Context()
	// A prefix as long as the default "allot:", so key sizes match a real
	// install; realBackend's cleanup deletes under it too.
	short := prefix[len(prefix)-6:]
	t.Cleanup(func() {
		iter := rdb.Scan(context.Background(), 0, short+"*", 1000).Iterator()
		for iter.Next(context.Background()) {
			rdb.Del(context.Background(), iter.Val())
		}
	})
	s, err := New(ctx, rdb, Options{Keys: keys.New(short), DedupTTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	cfg := grantCfg(service.PeriodDay, service.AlignRolling, 80, 100)
	ops := make([]Op, 0, n)
	for i := range n {
		ops = append(ops, Op{ID: fmt.Sprintf("0193a6f4-8c3e-7d2a-9b1f-%012d", i), UID: fmt.Sprintf("u-%06d", i), Metric: "photo_daily_total", Config: cfg, Limit: 200, Value: 1})
	}
	before := usedMemory(t, rdb)
	if _, err := s.Apply(ctx, ops); err != nil {
		t.Fatal(err)
	}
	after := usedMemory(t, rdb)
	dedup, _ := rdb.MemoryUsage(ctx, s.Keys().Dedup("u-000001", ops[1].ID)).Result()
	grant, _ := rdb.MemoryUsage(ctx, s.Keys().Grant("u-000001", "photo_daily_total")).Result()
	t.Logf("MEMORY USAGE: dedup record %d bytes, (uid, grant) hash %d bytes; used_memory grew %d bytes for %d events = %d bytes per (dedup + grant)",
		dedup, grant, after-before, n, (after-before)/n)
}

func usedMemory(t *testing.T, rdb redis.UniversalClient) int64 {
	t.Helper()
	var v int64
	info, err := rdb.Info(t.Context(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Sscanf(info[indexOf(info, "used_memory:"):], "used_memory:%d", &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return 0
}
