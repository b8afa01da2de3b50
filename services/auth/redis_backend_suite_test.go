package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/testenv"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"
)

// backendCase is one behaviour of the redis backend, run over miniredis
// and over the real Redis.
type backendCase struct {
	name string
	run  func(t *testing.T, e *backendEnv)
}

// backendEnv is a fresh redis backend under its own prefix, its clock
// (Get's "now") set by the case, and the client under it.
type backendEnv struct {
	b   *redisBackend
	rdb redis.UniversalClient
	k   keys.Keys
	t0  time.Time
	now time.Time
}

func newBackendEnv(t *testing.T, rdb redis.UniversalClient, prefix string) *backendEnv {
	t.Helper()
	be, err := newRedisBackend(yaml.Node{}, BackendDeps{Redis: rdb, KeyPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	e := &backendEnv{b: be.(*redisBackend), rdb: rdb, k: keys.New(prefix), t0: testenv.Now(t)}
	e.now = e.t0
	e.b.now = func() time.Time { return e.now }
	return e
}

// runBackendSuite runs every case, each on a backend of its own made by
// env.
func runBackendSuite(t *testing.T, env func(t *testing.T) *backendEnv) {
	for _, c := range backendCases() {
		t.Run(c.name, func(t *testing.T) { c.run(t, env(t)) })
	}
}

// testHash is a well-formed stored hash, one per s.
func testHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// testRecord is a full record for id, its times relative to t0.
func testRecord(id string, t0 time.Time) Record {
	return Record{
		ID: id, Hash: testHash(id), Role: "app", UIDs: []string{"u-1", "*"}, Note: "the billing app ✓",
		Created: t0.Add(-time.Hour), Expires: t0.Add(720 * time.Hour),
	}
}

func mustCreate(t *testing.T, b Backend, r Record) {
	t.Helper()
	if err := b.Create(t.Context(), r); err != nil {
		t.Fatalf("create %s: %v", r.ID, err)
	}
}

func mustGet(t *testing.T, b Backend, id string) Record {
	t.Helper()
	r, err := b.Get(t.Context(), id)
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	return r
}

func diffRecord(t *testing.T, want, got Record) {
	t.Helper()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("record (-want +got):\n%s", diff)
	}
}

// authKeysIn lists the {auth} keys under e's prefix, to see that a
// refused write left nothing behind.
func (e *backendEnv) authKeysIn(t *testing.T) []string {
	t.Helper()
	var got []string
	iter := e.rdb.Scan(t.Context(), 0, e.k.Prefix()+"{auth}*", 1000).Iterator()
	for iter.Next(t.Context()) {
		got = append(got, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

func backendCases() []backendCase {
	return []backendCase{
		{"create then get round-trips every field to the millisecond", func(t *testing.T, e *backendEnv) {
			r := testRecord("Ab3dEf9h", e.t0)
			r.Revoked = e.t0.Add(-time.Minute)
			r.LastUsed = e.t0.Add(-2 * time.Minute)
			r.Adjustments = []Adjustment{
				{Deny: "ratelimit.reset.*", Created: e.t0.Add(-time.Minute), Expires: e.t0.Add(time.Hour)},
				{Allow: "meter.grants.u-7", Created: e.t0, Expires: e.t0.Add(15 * time.Minute)},
			}
			mustCreate(t, e.b, r)
			diffRecord(t, r, mustGet(t, e.b, r.ID))
		}},
		{"times are kept to the millisecond, in UTC", func(t *testing.T, e *backendEnv) {
			r := testRecord("Ab3dEf9h", e.t0)
			r.Created = e.t0.Add(1234567 * time.Nanosecond).In(time.FixedZone("X", 3600))
			mustCreate(t, e.b, r)
			got := mustGet(t, e.b, r.ID)
			if want := e.t0.Add(time.Millisecond); !got.Created.Equal(want) || got.Created.Location() != time.UTC {
				t.Errorf("created %v, want %v in UTC", got.Created, want)
			}
		}},
		{"a minimal record round-trips", func(t *testing.T, e *backendEnv) {
			r := Record{ID: "-_000000", Hash: testHash("x"), Role: "admin"}
			mustCreate(t, e.b, r)
			diffRecord(t, r, mustGet(t, e.b, r.ID))
		}},
		{"create refuses an id that exists and keeps the first record", func(t *testing.T, e *backendEnv) {
			first := testRecord("Ab3dEf9h", e.t0)
			mustCreate(t, e.b, first)
			second := testRecord("Ab3dEf9h", e.t0)
			second.Role, second.Hash = "admin", testHash("other")
			if err := e.b.Create(t.Context(), second); !errors.Is(err, ErrExists) {
				t.Fatalf("create again: %v, want ErrExists", err)
			}
			diffRecord(t, first, mustGet(t, e.b, first.ID))
		}},
		{"create refuses a bad record, naming the field, and stores nothing", func(t *testing.T, e *backendEnv) {
			for _, tc := range []struct {
				field string
				edit  func(*Record)
			}{
				{"id", func(r *Record) { r.ID = "" }},
				{"id", func(r *Record) { r.ID = "short" }},
				{"id", func(r *Record) { r.ID = "Ab3d}:f9" }},
				{"hash", func(r *Record) { r.Hash = "" }},
				{"hash", func(r *Record) { r.Hash = strings.Repeat("a", 63) }},
				{"hash", func(r *Record) { r.Hash = strings.ToUpper(r.Hash) }},
				{"role", func(r *Record) { r.Role = "" }},
				{"role", func(r *Record) { r.Role = "a b" }},
				{"uids[1]", func(r *Record) { r.UIDs = []string{"u-1", "u.>"} }},
				{"uids[0]", func(r *Record) { r.UIDs = []string{""} }},
				{"note", func(r *Record) { r.Note = strings.Repeat("n", maxNote+1) }},
				{"expires", func(r *Record) { r.Expires = r.Created }},
				{"adjustments[0].allow", func(r *Record) { r.Adjustments = []Adjustment{{Expires: e.t0}} }},
				{"adjustments[0].deny", func(r *Record) {
					r.Adjustments = []Adjustment{{Allow: "a", Deny: "b", Expires: e.t0}}
				}},
				{"adjustments[0].deny", func(r *Record) { r.Adjustments = []Adjustment{{Deny: "a.>.b", Expires: e.t0}} }},
				{"adjustments[0].expires", func(r *Record) { r.Adjustments = []Adjustment{{Deny: "a"}} }},
			} {
				r := testRecord("Ab3dEf9h", e.t0)
				tc.edit(&r)
				err := e.b.Create(t.Context(), r)
				if !errors.Is(err, ErrBadRecord) || !strings.Contains(err.Error(), ": "+tc.field+": ") {
					t.Errorf("create with a bad %s: %v, want ErrBadRecord naming it", tc.field, err)
				}
			}
			if got := e.authKeysIn(t); len(got) != 0 {
				t.Errorf("refused creates left %v", got)
			}
		}},
		{"get and list of nothing", func(t *testing.T, e *backendEnv) {
			for _, id := range []string{"Ab3dEf9h", "bad", "Ab3d}:f9", ""} {
				if _, err := e.b.Get(t.Context(), id); !errors.Is(err, ErrNotFound) {
					t.Errorf("get %q: %v, want ErrNotFound", id, err)
				}
			}
			got, err := e.b.List(t.Context())
			if err != nil || len(got) != 0 {
				t.Errorf("list: %v, %v; want none", got, err)
			}
		}},
		{"list returns every key sorted by id, past one pipeline's worth", func(t *testing.T, e *backendEnv) {
			n := listChunk + 9
			var want []Record
			for i := range n {
				// Ids created in an order unlike their sorted one.
				r := testRecord(fmt.Sprintf("k%07d", (i*7919)%n), e.t0)
				mustCreate(t, e.b, r)
				want = append(want, r)
			}
			sortRecords(want)
			got, err := e.b.List(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("list (-want +got):\n%s", diff)
			}
		}},
		{"revoke marks the key and keeps the first time", func(t *testing.T, e *backendEnv) {
			r := testRecord("Ab3dEf9h", e.t0)
			mustCreate(t, e.b, r)
			if err := e.b.Revoke(t.Context(), r.ID, e.t0); err != nil {
				t.Fatal(err)
			}
			if err := e.b.Revoke(t.Context(), r.ID, e.t0.Add(time.Hour)); err != nil {
				t.Fatalf("revoke again: %v", err)
			}
			r.Revoked = e.t0
			diffRecord(t, r, mustGet(t, e.b, r.ID))
		}},
		{"revoke, adjust and touch of a missing key write nothing", func(t *testing.T, e *backendEnv) {
			id := "Ab3dEf9h"
			if err := e.b.Revoke(t.Context(), id, e.t0); !errors.Is(err, ErrNotFound) {
				t.Errorf("revoke: %v, want ErrNotFound", err)
			}
			if err := e.b.Adjust(t.Context(), id, Adjustment{Deny: "a.b", Created: e.t0, Expires: e.t0.Add(time.Hour)}); !errors.Is(err, ErrNotFound) {
				t.Errorf("adjust: %v, want ErrNotFound", err)
			}
			if err := e.b.Touch(t.Context(), id, e.t0); err != nil {
				t.Errorf("touch: %v", err)
			}
			for _, bad := range []string{"bad", "Ab3d}:f9"} {
				if err := e.b.Revoke(t.Context(), bad, e.t0); !errors.Is(err, ErrNotFound) {
					t.Errorf("revoke %q: %v, want ErrNotFound", bad, err)
				}
				if err := e.b.Touch(t.Context(), bad, e.t0); !errors.Is(err, ErrNotFound) {
					t.Errorf("touch %q: %v, want ErrNotFound", bad, err)
				}
			}
			if got := e.authKeysIn(t); len(got) != 0 {
				t.Errorf("writes to a missing key left %v", got)
			}
			if _, err := e.b.Get(t.Context(), id); !errors.Is(err, ErrNotFound) {
				t.Errorf("get: %v, want ErrNotFound", err)
			}
		}},
		{"adjust adds overrides and additions; get leaves out expired ones", func(t *testing.T, e *backendEnv) {
			r := testRecord("Ab3dEf9h", e.t0)
			mustCreate(t, e.b, r)
			short := Adjustment{Allow: "meter.grants.u-7", Created: e.t0, Expires: e.t0.Add(15 * time.Minute)}
			long := Adjustment{Deny: "ratelimit.reset.*", Created: e.t0.Add(time.Second), Expires: e.t0.Add(time.Hour)}
			for _, a := range []Adjustment{long, short} {
				if err := e.b.Adjust(t.Context(), r.ID, a); err != nil {
					t.Fatal(err)
				}
			}
			r.Adjustments = []Adjustment{short, long}
			diffRecord(t, r, mustGet(t, e.b, r.ID))

			e.now = short.Expires // the end is exclusive
			r.Adjustments = []Adjustment{long}
			diffRecord(t, r, mustGet(t, e.b, r.ID))
			got, err := e.b.List(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]Record{r}, got); diff != "" {
				t.Errorf("list (-want +got):\n%s", diff)
			}
			e.now = long.Expires.Add(time.Hour)
			r.Adjustments = nil
			diffRecord(t, r, mustGet(t, e.b, r.ID))
		}},
		{"an adjustment of the same kind and pattern replaces the last; expired ones are removed", func(t *testing.T, e *backendEnv) {
			r := testRecord("Ab3dEf9h", e.t0)
			mustCreate(t, e.b, r)
			adj := func(a Adjustment) {
				t.Helper()
				if err := e.b.Adjust(t.Context(), r.ID, a); err != nil {
					t.Fatal(err)
				}
			}
			adj(Adjustment{Allow: "a.b", Created: e.t0, Expires: e.t0.Add(time.Hour)})
			adj(Adjustment{Deny: "a.b", Created: e.t0, Expires: e.t0.Add(time.Minute)})
			cut := Adjustment{Allow: "a.b", Created: e.t0.Add(time.Second), Expires: e.t0.Add(2 * time.Second)}
			adj(cut) // an addition ended early
			r.Adjustments = []Adjustment{{Deny: "a.b", Created: e.t0, Expires: e.t0.Add(time.Minute)}, cut}
			diffRecord(t, r, mustGet(t, e.b, r.ID))

			// Two minutes on, a new one removes both expired ones.
			later := Adjustment{Deny: "c.>", Created: e.t0.Add(2 * time.Minute), Expires: e.t0.Add(time.Hour)}
			adj(later)
			fields, err := e.rdb.HKeys(t.Context(), e.k.AuthAdjustments(r.ID)).Result()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"deny:c.>"}, fields); diff != "" {
				t.Errorf("stored adjustments (-want +got):\n%s", diff)
			}
		}},
		{"adjust refuses a bad adjustment", func(t *testing.T, e *backendEnv) {
			r := testRecord("Ab3dEf9h", e.t0)
			mustCreate(t, e.b, r)
			for _, a := range []Adjustment{
				{Expires: e.t0.Add(time.Hour)},
				{Allow: "a", Deny: "b", Expires: e.t0.Add(time.Hour)},
				{Allow: "a b", Expires: e.t0.Add(time.Hour)},
				{Deny: "a"},
				{Deny: "a", Created: e.t0, Expires: e.t0.Add(-time.Second)},
			} {
				if err := e.b.Adjust(t.Context(), r.ID, a); !errors.Is(err, ErrBadRecord) {
					t.Errorf("adjust %+v: %v, want ErrBadRecord", a, err)
				}
			}
			diffRecord(t, r, mustGet(t, e.b, r.ID))
		}},
		{"touch records the last use at most once a second, never moving back", func(t *testing.T, e *backendEnv) {
			r := testRecord("Ab3dEf9h", e.t0)
			mustCreate(t, e.b, r)
			for _, tc := range []struct {
				at, want time.Duration
			}{
				{0, 0},
				{500 * time.Millisecond, 0}, // within the second: not written
				{time.Second, time.Second},  // written
				{-time.Hour, time.Second},   // earlier: never moves back
				{1500 * time.Millisecond, time.Second},
				{3 * time.Second, 3 * time.Second},
			} {
				if err := e.b.Touch(t.Context(), r.ID, e.t0.Add(tc.at)); err != nil {
					t.Fatal(err)
				}
				if got := mustGet(t, e.b, r.ID).LastUsed; !got.Equal(e.t0.Add(tc.want)) {
					t.Errorf("after touch at t0+%v: last used t0+%v, want t0+%v", tc.at, got.Sub(e.t0), tc.want)
				}
			}
		}},
		{"touch is best effort per process: another replica's touch is written", func(t *testing.T, e *backendEnv) {
			r := testRecord("Ab3dEf9h", e.t0)
			mustCreate(t, e.b, r)
			other, err := newRedisBackend(yaml.Node{}, BackendDeps{Redis: e.rdb, KeyPrefix: e.k.Prefix()})
			if err != nil {
				t.Fatal(err)
			}
			if err := e.b.Touch(t.Context(), r.ID, e.t0); err != nil {
				t.Fatal(err)
			}
			if err := other.Touch(t.Context(), r.ID, e.t0.Add(100*time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			if got := mustGet(t, e.b, r.ID).LastUsed; !got.Equal(e.t0.Add(100 * time.Millisecond)) {
				t.Errorf("last used t0+%v, want t0+100ms", got.Sub(e.t0))
			}
			// A replica whose clock is behind never moves it back.
			if err := e.b.Touch(t.Context(), r.ID, e.t0.Add(3*time.Second)); err != nil {
				t.Fatal(err)
			}
			if err := other.Touch(t.Context(), r.ID, e.t0.Add(2*time.Second)); err != nil {
				t.Fatal(err)
			}
			if got := mustGet(t, e.b, r.ID).LastUsed; !got.Equal(e.t0.Add(3 * time.Second)) {
				t.Errorf("last used t0+%v, want t0+3s", got.Sub(e.t0))
			}
		}},
		{"watch never calls back", func(t *testing.T, e *backendEnv) {
			called := make(chan string, 10)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			e.b.Watch(ctx, func(id string) { called <- id })
			r := testRecord("Ab3dEf9h", e.t0)
			mustCreate(t, e.b, r)
			_ = e.b.Revoke(t.Context(), r.ID, e.t0)
			select {
			case id := <-called:
				t.Errorf("watch reported %s", id)
			case <-time.After(50 * time.Millisecond):
			}
		}},
	}
}
