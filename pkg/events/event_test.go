package events

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 11, 22, 10, 30, 0, 123000000, time.UTC)

func sampleEvent() Event {
	return Event{
		SpecVersion: SpecVersion,
		ID:          "0193a6f4-8c3e-7d2a-9b1f-3c4d5e6f7a8b",
		Source:      "photos",
		Type:        UsageType,
		Subject:     "u-42",
		Time:        t0,
		Data: Usage{
			Metric: "photo_daily_total",
			Value:  1,
			Labels: map[string]string{"region": "eu", "app": "web"},
		},
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Event)
	}{
		{"sample", func(*Event) {}},
		{"no labels", func(e *Event) { e.Data.Labels = nil }},
		{"fraction", func(e *Event) { e.Data.Value = 0.1 }},
		{"negative", func(e *Event) { e.Data.Value = -3.5 }},
		{"smallest fraction", func(e *Event) { e.Data.Value = 1e-6 }},
		{"largest", func(e *Event) { e.Data.Value = 1e15 }},
		{"lowest", func(e *Event) { e.Data.Value = -1e15 }},
		{"15 digits", func(e *Event) { e.Data.Value = 123456789.123456 }},
		{"escapes in label", func(e *Event) { e.Data.Labels["path"] = "a\"b\\c/é 😀 <x>&" }},
		{"content type", func(e *Event) { e.DataContentType = ContentType }},
		{"time zone", func(e *Event) { e.Time = t0.In(time.FixedZone("x", 3600)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := sampleEvent()
			tc.mod(&in)
			b, err := json.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(b) {
				t.Fatalf("encoder wrote invalid JSON: %s", b)
			}
			out, err := Decode(b, 0)
			if err != nil {
				t.Fatalf("Decode(%s): %v", b, err)
			}
			if !out.Time.Equal(in.Time) {
				t.Errorf("time = %v, want %v", out.Time, in.Time)
			}
			out.Time, in.Time = time.Time{}, time.Time{}
			if diff := cmp.Diff(in, out); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

// The hand-written encoder must agree with encoding/json on numbers and
// strings.
func TestEncoderMatchesEncodingJSON(t *testing.T) {
	for _, v := range []float64{0, 1, -1, 200, 0.1, 1.5e-7, 1e-6, 123456789, 1e20, 1e21, 1.7976931348623157e308, 5e-324, -2.5e-10} {
		want, _ := json.Marshal(v)
		if got := appendFloat(nil, v); string(got) != string(want) {
			t.Errorf("appendFloat(%v) = %s, want %s", v, got, want)
		}
	}
	for _, s := range []string{"", "plain", "quote\"back\\slash", "\n\r\t\x00\x1f", "é😀", "\u2028\u2029", "bad\xffutf8", "<>&"} {
		var back string
		if err := json.Unmarshal(appendString(nil, s), &back); err != nil {
			t.Errorf("appendString(%q) wrote invalid JSON %s: %v", s, appendString(nil, s), err)
			continue
		}
		var want string
		wb, _ := json.Marshal(s)
		_ = json.Unmarshal(wb, &want)
		if back != want {
			t.Errorf("appendString(%q) decodes to %q, want %q", s, back, want)
		}
	}
}

func TestEncodeSortsLabels(t *testing.T) {
	e := sampleEvent()
	b := e.AppendJSON(nil)
	if !strings.Contains(string(b), `"labels":{"app":"web","region":"eu"}`) {
		t.Errorf("labels not sorted: %s", b)
	}
}

func TestDecodeBadInput(t *testing.T) {
	valid := string(sampleEvent().AppendJSON(nil))
	replace := func(old, new string) string {
		if !strings.Contains(valid, old) {
			t.Fatalf("fixture lacks %q", old)
		}
		return strings.Replace(valid, old, new, 1)
	}
	for _, tc := range []struct {
		name, body, field, rule string
	}{
		{"not JSON", `photo!`, "event", "not valid JSON"},
		{"empty", ``, "event", "not valid JSON"},
		{"truncated", valid[:40], "event", "not valid JSON"},
		{"array", `[1,2]`, "event", "must be an object"},
		{"missing id", replace(`"id":"0193a6f4-8c3e-7d2a-9b1f-3c4d5e6f7a8b",`, ``), "id", "is required"},
		{"empty id", replace(`"0193a6f4-8c3e-7d2a-9b1f-3c4d5e6f7a8b"`, `""`), "id", "is required"},
		{"id with space", replace(`"0193a6f4-8c3e-7d2a-9b1f-3c4d5e6f7a8b"`, `"a b"`), "id", "printable ASCII"},
		{"id too long", replace(`"0193a6f4-8c3e-7d2a-9b1f-3c4d5e6f7a8b"`, `"`+strings.Repeat("x", 129)+`"`), "id", "at most 128"},
		{"id not string", replace(`"0193a6f4-8c3e-7d2a-9b1f-3c4d5e6f7a8b"`, `42`), "id", "must be a string"},
		{"missing specversion", replace(`"specversion":"1.0",`, ``), "specversion", "is required"},
		{"wrong specversion", replace(`"specversion":"1.0"`, `"specversion":"0.3"`), "specversion", `must be "1.0"`},
		{"wrong type", replace(`"allot.usage.v1"`, `"com.example.other"`), "type", `must be "allot.usage.v1"`},
		{"missing source", replace(`"source":"photos",`, ``), "source", "is required"},
		{"empty source", replace(`"source":"photos"`, `"source":""`), "source", "is required"},
		{"missing subject", replace(`"subject":"u-42",`, ``), "subject", "is required"},
		{"bad subject", replace(`"subject":"u-42"`, `"subject":"u.42"`), "subject", "must be 1 to 128"},
		{"missing time", replace(`"time":"2026-11-22T10:30:00.123Z",`, ``), "time", "is required"},
		{"bad time", replace(`2026-11-22T10:30:00.123Z`, `yesterday`), "time", "RFC 3339"},
		{"bad content type", replace(`"data":`, `"datacontenttype":"text/plain","data":`), "datacontenttype", "application/json"},
		{"missing data", `{"specversion":"1.0","id":"a","source":"s","type":"allot.usage.v1","subject":"u","time":"2026-11-22T10:30:00Z"}`, "data", "is required"},
		{"null data", replace(`"data":{`, `"data":null,"x":{`), "data", "is required"},
		{"data not object", replace(`"data":{`, `"data":"x","y":{`), "data", "must be an object"},
		{"missing metric", replace(`"metric":"photo_daily_total",`, ``), "data.metric", "is required"},
		{"bad metric", replace(`"photo_daily_total"`, `"photo daily"`), "data.metric", "must be 1 to 128"},
		{"missing value", replace(`,"value":1`, ``), "data.value", "is required"},
		{"string value", replace(`"value":1`, `"value":"1"`), "data.value", "must be a number"},
		{"bool value", replace(`"value":1`, `"value":true`), "data.value", "must be a number"},
		{"overflowing value", replace(`"value":1`, `"value":1e400`), "data.value", "must be a number from -1e15 to 1e15 (got 1e400)"},
		{"value past the range", replace(`"value":1`, `"value":1e308`), "data.value", "must be a number from -1e15 to 1e15 (got 1e+308)"},
		{"value with 7 decimals", replace(`"value":1`, `"value":0.0000001`), "data.value", "with at most 6 decimal places (got 1e-7)"},
		{"value of 16 digits", replace(`"value":1`, `"value":1234567890.123456`), "data.value", "of at most 15 significant digits (got 1234567890.123456)"},
		{"NaN value", replace(`"value":1`, `"value":NaN`), "event", "not valid JSON"},
		{"labels not object", replace(`"labels":{"app":"web","region":"eu"}`, `"labels":["a"]`), "data.labels", "must be an object"},
		{"label value number", replace(`"region":"eu"`, `"region":3`), "data.labels", "must be a string"},
		{"bad label name", replace(`"region":"eu"`, `"re gion":"eu"`), "data.labels", "label name"},
		{"label value control char", replace(`"region":"eu"`, `"region":"e\u0001u"`), "data.labels.region", "control characters"},
		{"unknown data field", replace(`"value":1`, `"value":1,"valeu":2`), "data.valeu", "not a known field"},
		{"oversized", replace(`"region":"eu"`, `"region":"`+strings.Repeat("x", DefaultMaxEventBytes)+`"`), "event", "at most 65536 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.body), 0)
			var v *ValidationError
			if !errors.As(err, &v) {
				t.Fatalf("Decode error = %v (%T), want a *ValidationError", err, err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not match ErrInvalid")
			}
			if v.Field != tc.field || !strings.Contains(v.Rule, tc.rule) {
				t.Errorf("Decode error = %q, want field %q and rule containing %q", err, tc.field, tc.rule)
			}
		})
	}
}

func TestTooManyLabels(t *testing.T) {
	e := sampleEvent()
	e.Data.Labels = map[string]string{}
	for i := 0; i <= MaxLabels; i++ {
		e.Data.Labels[string(rune('a'+i))] = "v"
	}
	if err := e.Validate(); err == nil || !strings.Contains(err.Error(), "data.labels: must have at most 16") {
		t.Errorf("Validate = %v, want too many labels", err)
	}
}

func TestValidateRefusesNonFinite(t *testing.T) {
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		e := sampleEvent()
		e.Data.Value = v
		if err := e.Validate(); err == nil || err.Error() != "data.value: must be a number from -1e15 to 1e15 (got "+numberText(v)+")" {
			t.Errorf("Validate(%v) = %v", v, err)
		}
	}
}

func TestCheckSubject(t *testing.T) {
	e := sampleEvent()
	if err := e.CheckSubject("u-42"); err != nil {
		t.Errorf("CheckSubject(u-42) = %v", err)
	}
	err := e.CheckSubject("u-43")
	if err == nil || !strings.HasPrefix(err.Error(), "subject: must equal the subject token") {
		t.Errorf("CheckSubject(u-43) = %v", err)
	}
}

func TestDecodeCustomLimit(t *testing.T) {
	b := sampleEvent().AppendJSON(nil)
	if _, err := Decode(b, len(b)); err != nil {
		t.Errorf("Decode at exactly the limit: %v", err)
	}
	if _, err := Decode(b, len(b)-1); err == nil {
		t.Errorf("Decode over the limit succeeded")
	}
}

func TestDecodeIgnoresExtensions(t *testing.T) {
	b := []byte(strings.Replace(string(sampleEvent().AppendJSON(nil)), `"data":`, `"traceparent":"00-abc","data":`, 1))
	if _, err := Decode(b, 0); err != nil {
		t.Errorf("Decode with an extension attribute: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(sampleEvent().AppendJSON(nil))
	f.Add([]byte(`{"specversion":"1.0","id":"a","source":"s","type":"allot.usage.v1","subject":"u","time":"2026-11-22T10:30:00Z","data":{"metric":"m","value":-0.5}}`))
	f.Add([]byte(`{"data":{"labels":{"a":"\u2028"}}}`))
	f.Add([]byte(`not json`))
	f.Add([]byte(`{"specversion":"1.0","data":{"value":1e999}}`))
	for _, v := range []string{"-0", "1e15", "1000000000000001", "9007199254740993", "1e308", "5e-324", "1e-300", "0.000001", "1234567890.123456"} {
		f.Add([]byte(`{"specversion":"1.0","id":"a","source":"s","type":"allot.usage.v1","subject":"u","time":"2026-11-22T10:30:00Z","data":{"metric":"m","value":` + v + `}}`))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := Decode(body, 0)
		if err != nil {
			var v *ValidationError
			if !errors.As(err, &v) {
				t.Fatalf("Decode error %v is %T, not a *ValidationError", err, err)
			}
			return
		}
		if err := ev.Validate(); err != nil {
			t.Fatalf("Decode accepted an event that Validate refuses: %v", err)
		}
		if v := ev.Data.Value; v == 0 && math.Signbit(v) {
			t.Fatalf("Decode kept -0")
		}
		checkExactDecimal(t, ev.Data.Value)
		again, err := Decode(ev.AppendJSON(nil), len(body)*2+1024)
		if err != nil {
			t.Fatalf("re-decoding the encoded event: %v", err)
		}
		if !again.Time.Equal(ev.Time) {
			t.Fatalf("time changed in round trip: %v != %v", again.Time, ev.Time)
		}
		again.Time, ev.Time = time.Time{}, time.Time{}
		if diff := cmp.Diff(ev, again); diff != "" {
			t.Fatalf("round trip changed the event (-first +second):\n%s", diff)
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	e := sampleEvent()
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = e.AppendJSON(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkEncodeEncodingJSON(b *testing.B) {
	type plain Event // without the MarshalJSON method: the baseline
	e := plain(sampleEvent())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	body := sampleEvent().AppendJSON(nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := Decode(body, 0); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDecodeDraft(t *testing.T) {
	ev, err := DecodeDraft([]byte(`{"subject":"u-42","data":{"metric":"photo_daily_total","value":2}}`), 0)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Subject != "u-42" || ev.Data.Value != 2 || ev.ID != "" || !ev.Time.IsZero() {
		t.Errorf("draft = %+v", ev)
	}
	for body, field := range map[string]string{
		`{"data":{"metric":"m","value":1}}`:                            "subject",
		`{"subject":"u","data":{"metric":"m"}}`:                        "data.value",
		`{"subject":"u","id":"a b","data":{"metric":"m","value":1}}`:   "id",
		`{"subject":"u","type":"x","data":{"metric":"m","value":1}}`:   "type",
		`{"subject":"u","time":"now","data":{"metric":"m","value":1}}`: "time",
	} {
		_, err := DecodeDraft([]byte(body), 0)
		var v *ValidationError
		if !errors.As(err, &v) || v.Field != field {
			t.Errorf("DecodeDraft(%s) = %v, want an error on %s", body, err, field)
		}
	}
}
