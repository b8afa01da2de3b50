package store

import (
	"errors"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
)

func newStore(t *testing.T) (*Store, *miniredis.Miniredis, *time.Time) {
	t.Helper()
	mr := testenv.Miniredis(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	now := testenv.Now(t)
	s, err := New(t.Context(), rdb, Options{Keys: keys.New("allot:"), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return s, mr, &now
}

func TestRegisterChanges(t *testing.T) {
	s, _, now := newStore(t)
	ctx := t.Context()
	first := map[string]time.Time{}
	for _, tc := range []struct {
		step       string
		name, id   string
		ciphertext string
		want       Change
		err        error
	}{
		{"first", "media", "m-1", "A", Appeared, nil},
		{"heartbeat", "media", "m-1", "A", Renewed, nil},
		{"new data", "media", "m-1", "B", Changed, nil},
		{"same id, other name", "meter", "m-1", "C", 0, ErrConflict},
		{"another id", "media", "m-2", "A", Appeared, nil},
	} {
		t.Run(tc.step, func(t *testing.T) {
			reg, err := s.Register(ctx, tc.name, tc.id, []byte(tc.ciphertext), time.Minute)
			got, exp, created := reg.Change, reg.Expiry, reg.Created
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if err == nil && (got != tc.want || !exp.Equal(now.Add(time.Minute))) {
				t.Errorf("got %v expiring %v, want %v at %v", got, exp, tc.want, now.Add(time.Minute))
			}
			// Created is the first registration's time, whatever came after.
			if _, ok := first[tc.id]; !ok && err == nil {
				first[tc.id] = now.Truncate(time.Millisecond)
			}
			if err == nil && !created.Equal(first[tc.id]) {
				t.Errorf("created %v, want %v", created, first[tc.id])
			}
			*now = now.Add(time.Second)
		})
	}
	snap, err := s.Live(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// media appeared, changed, then m-2 appeared; meter never registered.
	if snap.Seqs["media"] != 3 || len(snap.Seqs) != 1 {
		t.Errorf("seqs = %v, want media at 3", snap.Seqs)
	}
	var got []string
	for _, e := range snap.Entries {
		got = append(got, e.Name+":"+e.ID+"="+string(e.Ciphertext))
		if e.Created.IsZero() {
			t.Errorf("%s:%s has no created time", e.Name, e.ID)
		}
	}
	if diff := cmp.Diff([]string{"media:m-1=B", "media:m-2=A"}, got); diff != "" {
		t.Errorf("live (-want +got):\n%s", diff)
	}
}

// Reap removes an expired member only when its entry key is gone, and
// leaves one that a heartbeat renewed meanwhile.
func TestReapOnlyWhatIsGone(t *testing.T) {
	s, mr, now := newStore(t)
	ctx := t.Context()
	for _, id := range []string{"gone", "renewed"} {
		if _, err := s.Register(ctx, "media", id, []byte(id), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	*now = now.Add(61 * time.Second)
	expired, _, err := s.Expired(ctx, 100)
	if err != nil || len(expired) != 2 {
		t.Fatalf("expired: %v, %v", expired, err)
	}
	// The entry keys run out, then "renewed" heartbeats before the reap.
	mr.FastForward(61 * time.Second)
	if _, err := s.Register(ctx, "media", "renewed", []byte("renewed"), time.Minute); err != nil {
		t.Fatal(err)
	}
	reaped, err := s.Reap(ctx, expired)
	if err != nil {
		t.Fatal(err)
	}
	if len(reaped) != 1 || reaped[0].ID != "gone" || string(reaped[0].Ciphertext) != "gone" {
		t.Errorf("reaped %+v, want only gone with its last ciphertext", reaped)
	}
	if v := mr.HGet("allot:{registry}:ids", "gone"); v != "" {
		t.Errorf("ids still holds gone: %q", v)
	}
	if v := mr.HGet("allot:{registry}:created", "media:gone"); v != "" {
		t.Errorf("created still holds gone: %q", v)
	}
}

func TestScriptsReloadAfterFlush(t *testing.T) {
	s, _, _ := newStore(t)
	if err := s.rdb.(*redis.Client).ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Register(t.Context(), "media", "m-1", []byte("A"), time.Minute); err != nil {
		t.Fatalf("after SCRIPT FLUSH: %v", err)
	}
}

func TestRedisDown(t *testing.T) {
	s, mr, _ := newStore(t)
	mr.Close()
	if _, err := s.Register(t.Context(), "media", "m-1", []byte("A"), time.Minute); !errors.Is(err, ErrRedis) {
		t.Errorf("Redis down: %v, want ErrRedis", err)
	}
}
