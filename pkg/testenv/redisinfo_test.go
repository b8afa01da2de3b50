package testenv

import (
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

func TestCommandCalls(t *testing.T) {
	info := "# Commandstats\r\ncmdstat_hset:calls=12,usec=30,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_evalsha:calls=3,usec=90\r\ncmdstat_info:calls=40,usec=1\r\n\r\n"
	if n, err := CommandCalls(info); err != nil || n != 15 {
		t.Errorf("CommandCalls = %d, %v; want 15 (INFO's own left out)", n, err)
	}
	if n, err := CommandCalls(""); err != nil || n != 0 {
		t.Errorf("empty: %d, %v", n, err)
	}
	for _, bad := range []string{"cmdstat_get:usec=3", "cmdstat_get:calls=x,usec=3", "cmdstat_get:calls=-2", "cmdstat_get:calls="} {
		if _, err := CommandCalls(bad); err == nil || !strings.Contains(err.Error(), "cmdstat_get") {
			t.Errorf("%q: %v, want an error naming the line", bad, err)
		}
	}
}

func FuzzCommandCalls(f *testing.F) {
	f.Add("cmdstat_hset:calls=12,usec=30\r\n")
	f.Add("cmdstat_x:calls=99999999999999999999")
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := CommandCalls(s); err == nil && n < 0 {
			t.Errorf("negative total %d", n)
		}
	})
}

func TestRedisCallsOnMiniredis(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	if n := RedisCalls(t, rdb); n != -1 {
		t.Errorf("miniredis: %d, want -1 (no counts kept)", n)
	}
}

func TestCommandUsec(t *testing.T) {
	info := "# Commandstats\r\ncmdstat_hset:calls=12,usec=30\r\ncmdstat_evalsha:calls=3,usec=90,usec_per_call=30.00\r\n"
	if n, err := commandUsec(info, "cmdstat_evalsha"); err != nil || n != 90 {
		t.Errorf("evalsha: %d, %v; want 90", n, err)
	}
	if n, err := commandUsec(info, "cmdstat_eval"); err != nil || n != 0 {
		t.Errorf("a command that has not run (and a name that is another's prefix): %d, %v; want 0", n, err)
	}
	for _, bad := range []string{"cmdstat_evalsha:calls=3", "cmdstat_evalsha:calls=3,usec=x", "cmdstat_evalsha:usec=-1"} {
		if _, err := commandUsec(bad, "cmdstat_evalsha"); err == nil || !strings.Contains(err.Error(), "cmdstat_evalsha") {
			t.Errorf("%q: %v, want an error naming the line", bad, err)
		}
	}
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	if n := ScriptUsec(t, rdb); n != -1 {
		t.Errorf("miniredis: %d, want -1 (no times kept)", n)
	}
}
