package keys

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestKeys(t *testing.T) {
	k := New("allot:")
	for got, want := range map[string]string{
		k.Grants("u-42"):                        "allot:{u-42}:grants",
		k.Grant("u-42", "photo_daily_total"):    "allot:{u-42}:g:photo_daily_total",
		k.Values(UserTag("u-42"), "api"):        "allot:{u-42}:c:api",
		k.Values(InstanceTag("web-1"), "q"):     "allot:{i.web-1}:c:q",
		k.Values(GlobalTag, "q"):                "allot:{global}:c:q",
		k.Dedup(UserTag("u-42"), "ev-1"):        "allot:{u-42}:e:ev-1",
		k.Instances():                           "allot:index:instances",
		k.GrantPattern("photo_daily_total"):     "allot:{*}:g:photo_daily_total",
		k.RateLimitDedup("u-42", "api", "ev-1"): "allot:{u-42}:rle:api:ev-1",
		k.RateLimitDedupPattern():               "allot:{*}:rle:*",
		k.RateLimitEpoch():                      "allot:ratelimit:epoch",
		k.MeterEpoch():                          "allot:meter:epoch",
		k.MeterReplicas():                       "allot:meter:replicas",
		k.RegistryEntry("media", "pod-1"):       "allot:{registry}:inst:media:pod-1",
		k.RegistryExpiry():                      "allot:{registry}:expiry",
		k.RegistryIDs():                         "allot:{registry}:ids",
		k.RegistryLast():                        "allot:{registry}:last",
		k.RegistryCreated():                     "allot:{registry}:created",
		RegistryMember("media", "pod-1"):        "media:pod-1",
		k.ConfirmedAddress("u-42"):              "allot:{u-42}:addr",
		k.UsedToken("u-42", "n1"):               "allot:{u-42}:tok:n1",
		k.SentEmail("u-42", "t1"):               "allot:{u-42}:sent:t1",
		k.AuthKey("Ab-_9xYz"):                   "allot:{auth}:key:Ab-_9xYz",
		k.AuthAdjustments("Ab-_9xYz"):           "allot:{auth}:adj:Ab-_9xYz",
		k.AuthKeys():                            "allot:{auth}:keys",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	for _, tc := range []struct {
		service        string
		even, odd, fld string
	}{
		{"upload", "allot:{u-42}:rl:upload:0", "allot:{u-42}:rl:upload:1", "ratelimit_upload"},
		{"", "allot:{u-42}:rlu:0", "allot:{u-42}:rlu:1", "ratelimit"},
	} {
		even, odd := k.RateLimit("u-42", tc.service)
		if diff := cmp.Diff([]string{tc.even, tc.odd, tc.fld}, []string{even, odd, RateLimitField(tc.service)}); diff != "" {
			t.Errorf("rate limit of %q (-want +got):\n%s", tc.service, diff)
		}
		if tag, _ := k.TagOf(even); tag != "u-42" {
			t.Errorf("%s: tag %q, want the uid's", even, tag)
		}
	}
	uid, ok := k.TagOf("allot:{u-42}:g:photo_daily_total")
	if !ok || uid != "u-42" {
		t.Errorf("TagOf = %q, %v", uid, ok)
	}
	if _, ok := k.TagOf("other:{u}:g:m"); ok {
		t.Error("TagOf accepted a foreign prefix")
	}
}

func TestRegistryMember(t *testing.T) {
	name, id, ok := ParseRegistryMember(RegistryMember("media", "pod-1"))
	if diff := cmp.Diff([]any{"media", "pod-1", true}, []any{name, id, ok}); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if _, _, ok := ParseRegistryMember("nocolon"); ok {
		t.Error("a member without ':' parsed")
	}
	if tag, _ := New("allot:").TagOf(New("allot:").RegistryEntry("a", "b")); tag != RegistryTag {
		t.Errorf("entry tag %q", tag)
	}
}

func TestLabelSetRoundTrip(t *testing.T) {
	labels := map[string]string{"region": "eu=west", "app": "web,1"}
	field := LabelSet([]string{"app", "region"}, labels)
	if field != "app=web,1\x1fregion=eu=west" {
		t.Errorf("LabelSet = %q", field)
	}
	if diff := cmp.Diff(labels, ParseLabelSet(field)); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if LabelSet(nil, labels) != "" || ParseLabelSet("") != nil {
		t.Error("no labels must be the empty field")
	}
}
