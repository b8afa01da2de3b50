package store

import (
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
)

// HasState sees the meter's own keys only: another service's keys under
// the same prefix are no meter state.
func TestHasState(t *testing.T) {
	rdb, prefix := miniBackend(t)
	k := keys.New(prefix)
	s, err := New(t.Context(), rdb, Options{Keys: k, DedupTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	even, _ := k.RateLimit("u-1", "api")
	for _, other := range []string{even, k.RegistryExpiry(), k.RegistryEntry("web", "1"), k.AuthKeys(), k.ConfirmedAddress("u-1"),
		k.UsedToken("u-1", "n"), k.SentEmail("u-1", "t"), k.Grants("u-1"), k.MeterEpoch(), "elsewhere:{u-1}:g:x"} {
		rdb.Set(ctx, other, "1", 0)
	}
	if has, err := s.HasState(ctx); err != nil || has {
		t.Fatalf("HasState with other services' keys = %v, %v; want false", has, err)
	}
	for _, mine := range []string{k.Grant("u-1", "photo_daily_total"), k.Values(keys.GlobalTag, "jobs_total"), k.Dedup(keys.UserTag("u-2"), "e1")} {
		rdb.Set(ctx, mine, "1", 0)
		if has, err := s.HasState(ctx); err != nil || !has {
			t.Errorf("HasState with %s = %v, %v; want true", mine, has, err)
		}
		rdb.Del(ctx, mine)
	}
}
