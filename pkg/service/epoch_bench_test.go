package service_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/service"
	"github.com/redis/go-redis/v9"
)

// BenchmarkEpochRead is what one loss check costs in Redis round trips
// and commands: the marker alone (one Redis), a slotted Epoch's Read (the
// marker and a share of the 16,384 slots' markers, SlotShares) and its
// ReadAll, each against the same Redis in the same run: the real one at
// ALLOT_BENCH_REDIS_URL, else miniredis. Keys under bench:epoch:, deleted
// after.
func BenchmarkEpochRead(b *testing.B) {
	var rdb *redis.Client
	if url := os.Getenv("ALLOT_BENCH_REDIS_URL"); url != "" {
		opts, err := redis.ParseURL(url)
		if err != nil {
			b.Fatal(err)
		}
		rdb = redis.NewClient(opts)
	} else {
		rdb = redis.NewClient(&redis.Options{Addr: miniredis.RunT(b).Addr()})
	}
	b.Cleanup(func() { _ = rdb.Close() })
	slots := make([]string, 16384)
	for i := range slots {
		slots[i] = fmt.Sprintf("bench:epoch:{%d}", i)
	}
	b.Cleanup(func() {
		pipe := rdb.Pipeline()
		pipe.Del(context.Background(), "bench:epoch")
		for _, k := range slots {
			pipe.Del(context.Background(), k)
		}
		_, _ = pipe.Exec(context.Background())
	})
	one := service.NewEpoch(rdb, "bench:epoch")
	slotted := service.NewSlottedEpoch(rdb, "bench:epoch", slots)
	if _, err := slotted.Init(b.Context(), 1); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		read func(context.Context) error
	}{
		{"one", func(ctx context.Context) error { _, _, err := one.Read(ctx); return err }},
		{"slotted", func(ctx context.Context) error { _, _, err := slotted.Read(ctx); return err }},
		{"slotted-all", func(ctx context.Context) error { _, err := slotted.ReadAll(ctx); return err }},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if err := c.read(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
