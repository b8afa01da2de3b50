package events

import (
	"errors"
	"strings"
	"testing"
)

func TestKeyRequestsValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		req   Validator
		field string // "" for valid
	}{
		{"create", KeyCreateRequest{Role: "app", UIDs: []string{"u-1", "*"}, TTL: "720h", Note: "billing"}, ""},
		{"create, defaults", KeyCreateRequest{Role: "admin"}, ""},
		{"no role", KeyCreateRequest{}, "role"},
		{"bad role", KeyCreateRequest{Role: "a b"}, "role"},
		{"glob uid", KeyCreateRequest{Role: "app", UIDs: []string{"u-1*"}}, "uids"},
		{"empty uid", KeyCreateRequest{Role: "app", UIDs: []string{""}}, "uids"},
		{"too many uids", KeyCreateRequest{Role: "app", UIDs: make([]string, MaxKeyUIDs+1)}, "uids"},
		{"bad ttl", KeyCreateRequest{Role: "app", TTL: "a month"}, "ttl"},
		{"negative ttl", KeyCreateRequest{Role: "app", TTL: "-1h"}, "ttl"},
		{"long note", KeyCreateRequest{Role: "app", Note: strings.Repeat("x", MaxKeyNote+1)}, "note"},
		{"revoke", KeyRevokeRequest{ID: "AbCd_-12"}, ""},
		{"revoke short id", KeyRevokeRequest{ID: "abc"}, "id"},
		{"revoke bad id", KeyRevokeRequest{ID: "abcd.efg"}, "id"},
		{"override", KeyAdjustRequest{ID: "AbCd_-12", Deny: "ratelimit.reset.*", TTL: "1h"}, ""},
		{"add", KeyAdjustRequest{ID: "AbCd_-12", Allow: "meter.grants.u-7", TTL: "15m"}, ""},
		{"both", KeyAdjustRequest{ID: "AbCd_-12", Allow: "a", Deny: "b", TTL: "1h"}, "allow"},
		{"neither", KeyAdjustRequest{ID: "AbCd_-12", TTL: "1h"}, "deny"},
		{"no ttl", KeyAdjustRequest{ID: "AbCd_-12", Deny: "a"}, "ttl"},
		{"bad subject", KeyAdjustRequest{ID: "AbCd_-12", Deny: "a..b", TTL: "1h"}, "deny"},
		{"partial wildcard", KeyAdjustRequest{ID: "AbCd_-12", Allow: "a.b*", TTL: "1h"}, "allow"},
		{"> inside", KeyAdjustRequest{ID: "AbCd_-12", Allow: "a.>.b", TTL: "1h"}, "allow"},
		{"list", KeyListRequest{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.req.Validate()
			if tc.field == "" {
				if err != nil {
					t.Errorf("Validate = %v", err)
				}
				return
			}
			var v *ValidationError
			if !errors.As(err, &v) || v.Field != tc.field {
				t.Errorf("Validate = %v, want an error on %s", err, tc.field)
			}
		})
	}
	// Unknown fields are refused on the wire.
	if err := DecodeRequest([]byte(`{"role":"app","uid":"u-1"}`), &KeyCreateRequest{}); err == nil {
		t.Error("an unknown field was accepted")
	}
}
