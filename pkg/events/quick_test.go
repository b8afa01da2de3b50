package events

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// quickSeeds are bodies of every batched type, in allot's own form and in
// forms the quick readers must leave to encoding/json.
var quickSeeds = []string{
	`{}`, ` { } `, `{"service":"api"}`, `{"service":"api","cost":2}`, `{"cost":0}`,
	`{"cost":2.0}`, `{"cost":1e6}`, `{"cost":-1}`, `{"cost":99999999999999999999}`,
	`{"cost":null}`, `{"service":null}`, `{"service":"a\u0062"}`, `{"service":"é"}`,
	`{"service":"api","service":"x"}`, `{"Service":"api"}`, `{"service":1}`, `{"extra":1}`,
	`{"metric":"photos"}`, `{"metric":""}`,
	`{"id":"ev-1","metric":"photos","amount":1.5}`, `{"id":"ev-1","metric":"photos","amount":1e400}`,
	`{"allowed":true,"limit":100,"remaining":99,"reset_after_ms":6000,"retry_after_ms":0}`,
	`{"allowed":false,"limit":100,"remaining":0,"reset_after_ms":6000,"retry_after_ms":12}`,
	`{"allowed":"yes"}`, `{"allowed":true,"limit":1.0}`,
	`{"allowed":true,"remaining":3.25,"resets_at":"2026-01-02T00:00:00Z"}`,
	`{"allowed":true,"remaining":3.25,"resets_at":"2026-01-02T00:00:00+01:00"}`,
	`{"resets_at":"2026-13-02T00:00:00Z"}`, `{"resets_at":"2026-01-02 00:00:00Z"}`,
	`{"uid":"u-1","metric":"photos","limit":200,"used":3,"remaining":197,"overage":0,"period":"day","resets_at":"2026-01-02T00:00:00Z"}`,
	`{"uid":"u-1","metric":"photos","limit":200,"used":3,"remaining":197,"overage":0,"period":"day","counted_since":"2026-01-01T10:00:00.5Z"}`,
	`{"replies":[{"status":200,"body":{"allowed":true}},{"status":404,"body":{"error":{"code":"not_found"}}}]}`,
	`{"replies":[{"body":[1,{"a":"\u00e9"}],"status":429}]}`, `{"replies":[]}`, `{"replies":[{"status":200,"body":null}]}`,
	`{"replies":[{"status":200.0,"body":1}]}`, `{"replies":[{"status":200,"status":201}]}`, `{"replies":[{}]}`,
	`{"requests":[{"uid":"u-1","body":{"service":"api"}},{"uid":"u-2"}]}`, `{"requests":[{"body":{},"uid":"u-1"}]}`,
	`{"requests":[]}`, `{"requests":[{"uid":"u\u002d1"}]}`, `{"requests":[{"uid":"u-1","body":null}]}`,
	`{"requests":[{"uid":"u-1","uid":"u-2"}]}`, `{"requests":[{"uid":1}]}`, `{"requests":[{"uid":"u-1"}],"x":1}`,
	`{"requests":[{"uid":"u-1"}]} x`, `[]`, `null`, `"x"`, `{"a":`, `{"a":1,}`, `{,}`,
}

// TestQuickReadersAgreeWithJSON: for every seed, a quick reader that
// reads a body gives what encoding/json gives for it, and one that does
// not leaves its value as it was.
func TestQuickReadersAgreeWithJSON(t *testing.T) {
	for _, s := range quickSeeds {
		checkQuickAgrees(t, []byte(s))
	}
	// The readers take allot's own encoding of each type.
	resets := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	for _, v := range []quickReader{
		&CheckRequest{Service: "api", Cost: Cost(3)}, &CreditRequest{Metric: "photos"},
		&AuthorizeRequest{ID: "ev-1", Metric: "photos", Amount: 2.5},
		&CheckReply{Allowed: true, Limit: 10, Remaining: 9, ResetAfterMs: 100},
		&AuthorizeReply{Allowed: true, Remaining: 1.5, ResetsAt: resets},
		&Credit{UID: "u-1", Metric: "photos", Limit: 200, Used: 3.5, Remaining: 196.5, Period: "day", ResetsAt: resets},
	} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		fresh := reflect.New(reflect.TypeOf(v).Elem()).Interface().(quickReader)
		if !fresh.readQuick(b) {
			t.Errorf("%T: the quick reader refused allot's own %s", v, b)
		}
		if !reflect.DeepEqual(fresh, v) {
			t.Errorf("%T: read %s as %+v, want %+v", v, b, fresh, v)
		}
		checkQuickAgrees(t, b)
	}
	batch := AppendBatchReply(nil, []BatchResult{{Status: 200, Body: []byte(`{"allowed":true}`)}, {Status: 400, Body: []byte(`{"error":{"code":"bad_request"}}`)}})
	var r BatchReply
	if !r.readQuick(batch) || len(r.Replies) != 2 || r.Replies[1].Status != 400 {
		t.Errorf("the quick reader refused or misread allot's own batch reply %s: %+v", batch, r)
	}
	req := AppendBatchRequest(nil, []BatchItem{{UID: "u-1", Body: []byte(`{"service":"api"}`)}, {UID: "u-2"}})
	var q BatchRequest
	if !q.readQuick(req) || len(q.Requests) != 2 || q.Requests[1].UID != "u-2" {
		t.Errorf("the quick reader refused or misread allot's own batch message %s: %+v", req, q)
	}
	checkQuickAgrees(t, batch)
	checkQuickAgrees(t, req)
}

// checkQuickAgrees reads b with every quick reader and holds each one
// that reads it to encoding/json's (or, for requests, the JSON path's)
// answer.
func checkQuickAgrees(t *testing.T, b []byte) {
	t.Helper()
	// Requests: DecodeRequest's JSON path must take what the quick
	// reader takes, to the same value.
	requests := []func() (Validator, Validator){
		func() (Validator, Validator) { return new(CheckRequest), new(CheckRequest) },
		func() (Validator, Validator) { return new(CreditRequest), new(CreditRequest) },
		func() (Validator, Validator) { return new(AuthorizeRequest), new(AuthorizeRequest) },
	}
	for _, mk := range requests {
		quick, slow := mk()
		if !quick.(quickReader).readQuick(b) {
			if !reflect.ValueOf(quick).Elem().IsZero() {
				t.Errorf("%T: a refused %s left %+v", quick, b, quick)
			}
			continue
		}
		if err := checkMembers(b, "request"); err != nil {
			t.Errorf("%T: quick read %s, which the JSON path refuses: %v", quick, b, err)
			continue
		}
		if err := decodeRequestJSON(b, slow); err != nil && quick.Validate() == nil {
			t.Errorf("%T: quick read %s (valid), which the JSON path refuses: %v", quick, b, err)
		} else if err == nil && !reflect.DeepEqual(quick, slow) {
			t.Errorf("%T: %s: quick %+v, JSON %+v", quick, b, quick, slow)
		}
	}
	// Replies: json.Unmarshal.
	replies := []func() (any, any){
		func() (any, any) { return new(CheckReply), new(CheckReply) },
		func() (any, any) { return new(AuthorizeReply), new(AuthorizeReply) },
		func() (any, any) { return new(Credit), new(Credit) },
		func() (any, any) { return new(BatchReply), new(BatchReply) },
	}
	for _, mk := range replies {
		quick, slow := mk()
		if !quick.(quickReader).readQuick(b) {
			if !reflect.ValueOf(quick).Elem().IsZero() {
				t.Errorf("%T: a refused %s left %+v", quick, b, quick)
			}
			continue
		}
		if err := json.Unmarshal(b, slow); err != nil {
			t.Errorf("%T: quick read %s, which encoding/json refuses: %v", quick, b, err)
		} else if !sameJSONValue(quick, slow) {
			t.Errorf("%T: %s: quick %+v, encoding/json %+v", quick, b, quick, slow)
		}
	}
	var quick BatchRequest
	if !quick.readQuick(b) {
		if quick.Requests != nil {
			t.Errorf("BatchRequest: a refused %s left %+v", b, quick)
		}
		return
	}
	slow, err := decodeBatchJSON(b)
	if err != nil {
		t.Errorf("BatchRequest: quick read %s, which the JSON path refuses: %v", b, err)
	} else if !reflect.DeepEqual(quick, slow) {
		t.Errorf("BatchRequest: %s: quick %+v, JSON %+v", b, quick, slow)
	}
}

// sameJSONValue compares two decoded replies; times by Equal, since a
// time parsed twice may differ in its location pointer alone.
func sameJSONValue(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && string(ja) == string(jb) && reflect.TypeOf(a) == reflect.TypeOf(b)
}

// FuzzQuickReaders holds every quick reader to encoding/json on any
// body: what the quick path reads, it reads as encoding/json does.
func FuzzQuickReaders(f *testing.F) {
	for _, s := range quickSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkQuickAgrees(t, b)
	})
}

// BenchmarkQuickReaders compares each quick reader with encoding/json
// on allot's own encoding.
func BenchmarkQuickReaders(b *testing.B) {
	check := []byte(`{"allowed":true,"limit":1000000,"remaining":999999,"reset_after_ms":60000,"retry_after_ms":0}`)
	items := make([]BatchResult, 16)
	for i := range items {
		items[i] = BatchResult{Status: 200, Body: check}
	}
	reply := AppendBatchReply(nil, items)
	reqs := make([]BatchItem, 16)
	for i := range reqs {
		reqs[i] = BatchItem{UID: "u-" + string(rune('a'+i)), Body: []byte(`{"service":"fixed"}`)}
	}
	batch := AppendBatchRequest(nil, reqs)
	b.Run("check_reply/quick", func(b *testing.B) {
		for range b.N {
			_ = unmarshalReply(check, new(CheckReply))
		}
	})
	b.Run("check_reply/json", func(b *testing.B) {
		for range b.N {
			_ = json.Unmarshal(check, new(CheckReply))
		}
	})
	b.Run("check_request/quick", func(b *testing.B) {
		for range b.N {
			_ = DecodeRequest([]byte(`{"service":"fixed"}`), new(CheckRequest))
		}
	})
	b.Run("check_request/json", func(b *testing.B) {
		for range b.N {
			_ = decodeRequestJSON([]byte(`{"service":"fixed"}`), new(CheckRequest))
		}
	})
	b.Run("batch_reply_16/quick", func(b *testing.B) {
		for range b.N {
			_ = unmarshalReply(reply, new(BatchReply))
		}
	})
	b.Run("batch_reply_16/json", func(b *testing.B) {
		for range b.N {
			_ = json.Unmarshal(reply, new(BatchReply))
		}
	})
	b.Run("batch_request_16/quick", func(b *testing.B) {
		for range b.N {
			_, _ = DecodeBatchRequest(batch)
		}
	})
	b.Run("batch_request_16/json", func(b *testing.B) {
		for range b.N {
			_, _ = decodeBatchJSON(batch)
		}
	})
}
