package testenv

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// CommandCalls sums the calls of every command in the text of INFO
// commandstats ("cmdstat_hset:calls=12,usec=..."), commands run by
// scripts included, except INFO itself (the reading's own). A line that
// is not a cmdstat line is skipped; a cmdstat line without a readable
// calls= is an error.
func CommandCalls(info string) (int64, error) {
	var total int64
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		if name == "cmdstat_info" {
			continue
		}
		calls, ok := strings.CutPrefix(rest, "calls=")
		if !ok {
			return 0, fmt.Errorf("testenv: commandstats line %q: no calls=", line)
		}
		calls, _, _ = strings.Cut(calls, ",")
		n, err := strconv.ParseInt(calls, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("testenv: commandstats line %q: calls %q is not a count", line, calls)
		}
		total += n
	}
	return total, nil
}

// RedisCallsContext is the number of commands rdb's servers have run
// (summed over every master of a Cluster), from INFO commandstats; -1
// where the server does not keep them (miniredis).
func RedisCallsContext(ctx context.Context, rdb redis.UniversalClient) (int64, error) {
	read := func(ctx context.Context, c redis.Cmdable) (int64, error) {
		info, err := c.Info(ctx, "commandstats").Result()
		if err != nil && strings.Contains(err.Error(), "not supported") {
			return -1, nil // miniredis
		}
		if err != nil {
			return 0, err
		}
		if !strings.Contains(info, "cmdstat_") {
			return -1, nil
		}
		return CommandCalls(info)
	}
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return read(ctx, rdb)
	}
	var mu sync.Mutex
	var total int64
	err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		n, err := read(ctx, node)
		mu.Lock()
		defer mu.Unlock()
		if n < 0 || total < 0 {
			total = -1
		} else {
			total += n
		}
		return err
	})
	return total, err
}

// RedisCalls is RedisCallsContext for a test or benchmark: -1 where the
// server does not keep the counts, and a failed reading fails tb.
func RedisCalls(tb testing.TB, rdb redis.UniversalClient) int64 {
	tb.Helper()
	n, err := RedisCallsContext(context.Background(), rdb)
	if err != nil {
		tb.Fatalf("INFO commandstats: %v", err)
	}
	return n
}

// ScriptUsec is the time rdb's server has spent in EVALSHA, in
// microseconds, from INFO commandstats; -1 where the server does not keep
// it (miniredis). A failed reading fails tb.
func ScriptUsec(tb testing.TB, rdb redis.UniversalClient) int64 {
	tb.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil && strings.Contains(err.Error(), "not supported") || err == nil && !strings.Contains(info, "cmdstat_") {
		return -1
	}
	if err != nil {
		tb.Fatalf("INFO commandstats: %v", err)
	}
	n, err := commandUsec(info, "cmdstat_evalsha")
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// commandUsec reads the usec= of one command's line of INFO
// commandstats; 0 when the command has not run.
func commandUsec(info, name string) (int64, error) {
	for _, line := range strings.Split(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), name+":")
		if !ok {
			continue
		}
		_, usec, ok := strings.Cut(rest, "usec=")
		usec, _, _ = strings.Cut(usec, ",")
		n, err := strconv.ParseInt(usec, 10, 64)
		if !ok || err != nil || n < 0 {
			return 0, fmt.Errorf("testenv: commandstats line %q: no usec= count", line)
		}
		return n, nil
	}
	return 0, nil
}
