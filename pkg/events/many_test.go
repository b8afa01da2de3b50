package events

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestBatchRequestRoundTrip(t *testing.T) {
	items := []BatchItem{
		{UID: "u-1", Body: json.RawMessage(`{"service":"upload","cost":2}`)},
		{UID: "u-2"},
		{UID: "u_3", Body: json.RawMessage(`{}`)},
	}
	got, err := DecodeBatchRequest(AppendBatchRequest(nil, items))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Requests, items) {
		t.Errorf("round trip: %+v, want %+v", got.Requests, items)
	}
}

func TestDecodeBatchRequestRefuses(t *testing.T) {
	many := strings.Repeat(`{"uid":"u"},`, MaxBatchRequests) + `{"uid":"u"}`
	for body, field := range map[string]string{
		``:                                     "requests",
		`{}`:                                   "requests",
		`null`:                                 "request",
		`[]`:                                   "request",
		`"x"`:                                  "request",
		`{"requests":null}`:                    "requests",
		`{"requests":{}}`:                      "requests",
		`{"requests":[]}`:                      "requests",
		`{"requests":[` + many + `]}`:          "requests",
		`{"requests":[{"uid":"u"}],"x":1}`:     "x",
		`{"requests":[],"requests":[]}`:        "requests",
		`{"requests":[{"uid":"u","uid":"v"}]}`: "requests[0].uid",
		`{"requests":[{"uid":"u"},{"body":{},"body":{}}]}`:                "requests[1].body",
		`{"requests":[{"uid":null}]}`:                                     "requests[0].uid",
		`{"requests":[{"uid":7}]}`:                                        "requests[0].uid",
		`{"requests":[{"uid":"u","Body":{}}]}`:                            "requests[0].Body",
		`{"requests":[7]}`:                                                "requests[0]",
		`{"requests":[{"uid":"u"}]`:                                       "request",
		`{"requests":[{"uid":"u"}]}{}`:                                    "request",
		`{"requests":[{"uid":"u","body":{]}}]}`:                           "request",
		`{"requests":[{"uid":"u"}]}` + strings.Repeat(" ", MaxBatchBytes): "request",
	} {
		_, err := DecodeBatchRequest([]byte(body))
		var v *ValidationError
		if !errors.As(err, &v) || v.Field != field {
			t.Errorf("%.60q: %v, want an error on %q", body, err, field)
		}
	}
}

// A body's own faults are not the batch's: it is passed on as it is,
// for its endpoint to refuse.
func TestDecodeBatchRequestLeavesBodiesAlone(t *testing.T) {
	b, err := DecodeBatchRequest([]byte(`{"requests":[{"uid":"u","body":{"cost":1,"cost":2}},{"uid":"not a uid","body":null},{"uid":"v","body":[1]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Requests) != 3 || string(b.Requests[0].Body) != `{"cost":1,"cost":2}` || string(b.Requests[1].Body) != "null" || b.Requests[1].UID != "not a uid" {
		t.Errorf("%+v", b.Requests)
	}
}

func TestBatchReplyAndErrors(t *testing.T) {
	results := []BatchResult{
		{Status: 200, Body: json.RawMessage(`{"allowed":true}`)},
		{Status: 429, Body: json.RawMessage(`{"error":{"code":"over_limit","message":"no","field":"amount"},"allowed":false}`)},
		{Status: 503},
	}
	var reply BatchReply
	if err := json.Unmarshal(AppendBatchReply(nil, results), &reply); err != nil {
		t.Fatal(err)
	}
	if len(reply.Replies) != 3 || reply.Replies[0].Err() != nil {
		t.Fatalf("%+v", reply)
	}
	err := reply.Replies[1].Err()
	var serr *ServiceError
	if !errors.Is(err, ErrOverLimit) || !errors.As(err, &serr) || serr.Field != "amount" || serr.Message != "no" {
		t.Errorf("429: %v", err)
	}
	if err := reply.Replies[2].Err(); !errors.Is(err, ErrUnavailable) {
		t.Errorf("503 without a body: %v", err)
	}
}

func TestScopes(t *testing.T) {
	s := DefaultSubjects()
	if got := s.CheckMany(ScopeAll); got != "ratelimit.check_many.~all" {
		t.Errorf("CheckMany: %s", got)
	}
	for subject, want := range map[string]string{
		"meter.credit_many.~all": ScopeAll,
		"meter.credit_many.u-1":  "u-1",
		"meter.credit_many.dead": "",
		"meter.credit_many.~any": "",
		"meter.credit_many":      "",
		"meter.credit.u-1":       "",
	} {
		got, err := s.ParseScope(subject, "meter.credit_many")
		if got != want || (want == "") != (err != nil) {
			t.Errorf("%s: %q, %v; want %q", subject, got, err, want)
		}
	}
	if !InScope(ScopeAll, "u") || !InScope("u", "u") || InScope("u", "v") {
		t.Error("InScope")
	}
}

func FuzzDecodeBatchRequest(f *testing.F) {
	for _, seed := range []string{
		`{"requests":[{"uid":"u-1","body":{"service":"s"}},{"uid":"u-2"}]}`,
		`{"requests":[{"uid":"u","body":null}]}`,
		`{"requests":[]}`, `{}`, ``, `null`, `{"requests":[{"uid":"u","uid":"v"}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		b, err := DecodeBatchRequest(body)
		if err != nil {
			var v *ValidationError
			if !errors.As(err, &v) || v.Field == "" {
				t.Fatalf("%q: %v is not a validation error naming a field", body, err)
			}
			return
		}
		if n := len(b.Requests); n == 0 || n > MaxBatchRequests {
			t.Fatalf("%q: %d requests accepted", body, n)
		}
		for i, it := range b.Requests {
			if len(it.Body) > 0 && !json.Valid(it.Body) {
				t.Fatalf("%q: request %d body %q is not JSON", body, i, it.Body)
			}
		}
		// What was accepted says the same once written again (uids that
		// are tokens need no escaping, others are quoted by Go's rules,
		// which JSON reads alike for printable ASCII).
		for _, it := range b.Requests {
			if !IsToken(it.UID) {
				return
			}
		}
		again, err := DecodeBatchRequest(AppendBatchRequest(nil, b.Requests))
		if err != nil {
			t.Fatalf("%q: re-encoded batch refused: %v", body, err)
		}
		if len(again.Requests) != len(b.Requests) {
			t.Fatalf("%q: %d requests, then %d", body, len(b.Requests), len(again.Requests))
		}
		for i := range again.Requests {
			if again.Requests[i].UID != b.Requests[i].UID {
				t.Fatalf("%q: request %d uid %q, then %q", body, i, b.Requests[i].UID, again.Requests[i].UID)
			}
		}
	})
}
