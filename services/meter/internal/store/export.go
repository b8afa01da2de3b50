package store

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/allot/allot/pkg/keys"
	"github.com/redis/go-redis/v9"
)

// Values reads a counter's or gauge's values hash: label set -> value.
func (s *Store) Values(ctx context.Context, key string) (map[string]float64, error) {
	raw, err := s.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrRedis, key, err)
	}
	out := make(map[string]float64, len(raw))
	for f, v := range raw {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("store: %s[%q] = %q is not a number", key, f, v)
		}
		out[f] = x
	}
	return out, nil
}

// Members reads a set.
func (s *Store) Members(ctx context.Context, key string) ([]string, error) {
	v, err := s.rdb.SMembers(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrRedis, key, err)
	}
	return v, nil
}

// ScanUIDs returns up to max uids that have grant or usage state, by
// scanning the keyspace (on a Cluster, every master).
func (s *Store) ScanUIDs(ctx context.Context, max int) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	scan := func(ctx context.Context, c interface {
		Scan(context.Context, uint64, string, int64) *redis.ScanCmd
	}) error {
		iter := c.Scan(ctx, 0, s.keys.Prefix()+"{*}:*", 1000).Iterator()
		for iter.Next(ctx) && len(out) < max {
			uid, ok := s.keys.TagOf(iter.Val())
			if !ok || uid == keys.GlobalTag || strings.HasPrefix(uid, "i.") || seen[uid] {
				continue
			}
			seen[uid] = true
			out = append(out, uid)
		}
		return iter.Err()
	}
	var err error
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return scan(ctx, node)
		})
	} else {
		err = scan(ctx, s.rdb)
	}
	if err != nil {
		return out, fmt.Errorf("%w: scan uids: %w", ErrRedis, err)
	}
	sort.Strings(out)
	return out, nil
}
