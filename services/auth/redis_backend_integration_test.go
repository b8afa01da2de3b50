//go:build integration

package auth

import (
	"testing"
	"time"

	"github.com/allot/allot/pkg/testenv"
	"go.yaml.in/yaml/v3"
)

func TestIntegrationRedisBackend(t *testing.T) {
	runBackendSuite(t, func(t *testing.T) *backendEnv {
		rdb, prefix := testenv.Redis(t)
		return newBackendEnv(t, rdb, prefix)
	})
}

// BenchmarkIntegrationRedisBackend measures what a connect costs the
// backend on the real Redis: Get (one round trip) and Touch (a script,
// or nothing within a second of the last).
func BenchmarkIntegrationRedisBackend(b *testing.B) {
	rdb, prefix := testenv.Redis(b)
	be, err := newRedisBackend(yaml.Node{}, BackendDeps{Redis: rdb, KeyPrefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	t0 := testenv.Now(b)
	r := testRecord("Ab3dEf9h", t0)
	r.Adjustments = []Adjustment{{Deny: "ratelimit.reset.*", Created: t0, Expires: t0.Add(time.Hour)}}
	if err := be.Create(b.Context(), r); err != nil {
		b.Fatal(err)
	}
	b.Run("Get", func(b *testing.B) {
		for b.Loop() {
			if _, err := be.Get(b.Context(), r.ID); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Touch/every call a new second", func(b *testing.B) {
		at := t0
		for b.Loop() {
			at = at.Add(time.Second)
			if err := be.Touch(b.Context(), r.ID, at); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Touch/within the second", func(b *testing.B) {
		for b.Loop() {
			if err := be.Touch(b.Context(), r.ID, t0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
