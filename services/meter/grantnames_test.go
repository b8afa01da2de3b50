package meter

import (
	"errors"
	"strings"
	"testing"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/google/go-cmp/cmp"
)

// meter.grants sets only declared grants: the configured ones and the
// rate limiter's ratelimit_<service>. A request naming anything else is
// refused whole with the list of the declared names, and writes nothing.
func TestGrantNames(t *testing.T) {
	cfg := testConfig()
	cfg.RateLimited = []string{"upload"}
	e := startEnv(t, cfg)
	ctx := t.Context()
	grantsKey := keys.New(cfg.Redis.KeyPrefix).Grants("u-1")

	for _, tc := range []struct {
		name    string
		req     events.GrantsRequest
		field   string
		unknown string
	}{
		{"a typo", events.GrantsRequest{Set: map[string]float64{"albums_total": 20}}, "set", `unknown grant "albums_total"`},
		{"a known and an unknown name", events.GrantsRequest{Set: map[string]float64{"albums": 20, "photos_daily_total": 5}}, "set", `unknown grant "photos_daily_total"`},
		{"two unknown names", events.GrantsRequest{Set: map[string]float64{"b": 1, "a": 2}}, "set", `unknown grants "a", "b"`},
		{"a service not rate-limited", events.GrantsRequest{Set: map[string]float64{"ratelimit_search": 5}}, "set", `unknown grant "ratelimit_search"`},
		{"a counter is not a grant", events.GrantsRequest{Set: map[string]float64{"api_calls_total": 5}}, "set", `unknown grant "api_calls_total"`},
		{"unset of a name never set", events.GrantsRequest{Unset: []string{"albums_total"}}, "unset", `unknown grant "albums_total"`},
		{"a good set with a bad unset", events.GrantsRequest{Set: map[string]float64{"albums": 20}, Unset: []string{"nope"}}, "unset", `unknown grant "nope"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.Grants(ctx, "u-1", tc.req)
			var serr *events.ServiceError
			if !errors.As(err, &serr) || serr.Status != 400 || serr.Field != tc.field {
				t.Fatalf("err = %v, want a 400 on %s", err, tc.field)
			}
			if !strings.Contains(serr.Message, tc.unknown) {
				t.Errorf("message %q does not name %s", serr.Message, tc.unknown)
			}
			// The declared names are listed, the rate limiter's included.
			for _, known := range []string{"albums, apikeys", "photo_daily_total", "ratelimit, ratelimit_upload", "tiny_daily_total"} {
				if !strings.Contains(serr.Message, known) {
					t.Errorf("message %q does not list %q", serr.Message, known)
				}
			}
			if n, _ := e.rdb.Exists(ctx, grantsKey).Result(); n != 0 {
				got, _ := e.rdb.HGetAll(ctx, grantsKey).Result()
				t.Errorf("a refused request wrote %v", got)
			}
		})
	}

	// Declared names are set, the rate limiter's included.
	g, err := e.client.Grants(ctx, "u-1", events.GrantsRequest{Set: map[string]float64{"albums": 20, "ratelimit_upload": 3, "ratelimit": 50}})
	if err != nil || g.Grants["albums"] != 20 || g.Grants["ratelimit_upload"] != 3 || g.Grants["ratelimit"] != 50 {
		t.Fatalf("setting declared grants: %+v, %v", g, err)
	}

	// An override an earlier configuration left can still be unset.
	if err := e.rdb.HSet(ctx, grantsKey, "ratelimit_gone", "7").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Grants(ctx, "u-1", events.GrantsRequest{Set: map[string]float64{"ratelimit_gone": 8}}); err == nil {
		t.Error("set of a stale, undeclared override was accepted")
	}
	g, err = e.client.Grants(ctx, "u-1", events.GrantsRequest{Unset: []string{"ratelimit_gone", "albums"}})
	if err != nil {
		t.Fatalf("unset of a stale override: %v", err)
	}
	got, _ := e.rdb.HGetAll(ctx, grantsKey).Result()
	if diff := cmp.Diff(map[string]string{"ratelimit_upload": "3", "ratelimit": "50"}, got); diff != "" {
		t.Errorf("overrides after the unset (-want +got):\n%s", diff)
	}
	if _, ok := g.Grants["ratelimit_gone"]; ok || g.Grants["albums"] != 10 {
		t.Errorf("effective grants after the unset: %v", g.Grants)
	}
}
