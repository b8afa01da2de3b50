package events

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// decodeSeeds are bodies that exercise the corners of the JSON grammar
// and of encoding/json's behaviour, for the differential fuzz target.
func decodeSeeds() []string {
	valid := string(sampleEvent().AppendJSON(nil))
	replace := func(old, new string) string { return strings.Replace(valid, old, new, 1) }
	const minimal = `{"specversion":"1.0","id":"a","source":"s","type":"allot.usage.v1","subject":"u","time":"2026-11-22T10:30:00Z","data":{"metric":"m","value":1}}`
	return []string{
		valid,
		minimal,
		``, ` `, `photo!`, `null`, ` null `, `nul`, `[1,2]`, `"x"`, `5`, `-`, `true`, `{}`, `{"a":1,}`, `{"a" 1}`, `{,}`, `{"a":1}}`,
		valid[:40], valid + ` `, valid + `x`, valid + `{}`, "\t\r\n " + valid + "\n",
		strings.ReplaceAll(valid, `,`, " ,\n\t"), strings.ReplaceAll(valid, `:`, " : "),
		// Extension attributes of every type, nested.
		replace(`"data":`, `"traceparent":"00-abc","data":`),
		// Names given twice: refused, first one in document order.
		replace(`"data":`, `"id":"b","data":`),
		replace(`"data":`, `"ext":1,"ext":2,"data":`),
		replace(`"data":`, `"ext":{"a":1,"a":2},"data":`),
		replace(`"value":1`, `"value":1,"value":2`),
		replace(`"value":1`, `"value":1,"valeu":1,"valeu":2`),
		replace(`"region":"eu"`, `"region":"eu","region":"us"`),
		replace(`"value":1`, `"value":"x","value":2`),
		replace(`"data":`, `"id":5,"data":`),
		replace(`"data":`, `"data":null,"data":`),
		replace(`"labels":`, `"labels":null,"labels":`),
		replace(`"id":`, `"\u0069d":"x","id":`),
		replace(`"data":`, `"ext":{"a":[1,-2.5e+3,true,false,null,{"b":{}},[],""]},"n":null,"t":true,"f":false,"x":-0.0E-0,"data":`),
		replace(`"data":`, `"ext":[[[[[[[[[[]]]]]]]]]],"data":`),
		replace(`"data":`, `"ext":[1 2],"data":`),
		replace(`"data":`, `"ext":{"a" "b"},"data":`),
		replace(`"data":`, `"ext":01,"data":`),
		replace(`"data":`, `"ext":1.,"data":`),
		replace(`"data":`, `"ext":1e,"data":`),
		replace(`"data":`, `"ext":.5,"data":`),
		replace(`"data":`, `"ext":tru,"data":`),
		// Escapes, surrogates and invalid UTF-8.
		replace(`"photos"`, `"ph\u006ft\"o\\s\/\b\f\n\r\t"`),
		replace(`"photos"`, `"\ud83d\ude00 \ud83d x \ude00 \ud800\u0041 \uDBFF\uDFFF"`),
		replace(`"photos"`, "\"bad\xff\xfe utf8 \xed\xa0\x80 \xe2\x82\""),
		replace(`"photos"`, `"\x"`),
		replace(`"photos"`, `"\u12G4"`),
		replace(`"photos"`, "\"tab\there\""),
		replace(`"specversion"`, `"spec\u0076ersion"`),
		replace(`"metric"`, `"m\u0065tric"`),
		replace(`"region":"eu"`, `"re\u0067ion":"\u0065u"`),
		replace(`"region":"eu"`, "\"r\xffegion\":\"eu\""),
		// Numbers.
		replace(`"value":1`, `"value":-0`),
		replace(`"value":1`, `"value":1e400`),
		replace(`"value":1`, `"value":-1e400`),
		replace(`"value":1`, `"value":1e-400`),
		replace(`"value":1`, `"value":123456789012345678901234567890.123456789e-10`),
		replace(`"value":1`, `"value":2.5E+2`),
		replace(`"value":1`, `"value":1e15`),
		replace(`"value":1`, `"value":-1e15`),
		replace(`"value":1`, `"value":1000000000000001`),
		replace(`"value":1`, `"value":9007199254740993`),
		replace(`"value":1`, `"value":1e308`),
		replace(`"value":1`, `"value":5e-324`),
		replace(`"value":1`, `"value":1e-300`),
		replace(`"value":1`, `"value":0.000001`),
		replace(`"value":1`, `"value":0.0000001`),
		replace(`"value":1`, `"value":123456789.123456`),
		replace(`"value":1`, `"value":1234567890.123456`),
		replace(`"value":1`, `"value":NaN`),
		replace(`"value":1`, `"value":+1`),
		replace(`"value":1`, `"value":null`),
		replace(`"value":1`, `"value":"1"`),
		replace(`"value":1`, `"value":{}`),
		replace(`"value":1`, `"value":[1]`),
		// Duplicates and nulls: the last one counts, an earlier wrong type still fails.
		replace(`"id":`, `"id":"first","id":`),
		replace(`"id":`, `"id":42,"id":`),
		replace(`"data":`, `"id":null,"data":`),
		replace(`"data":`, `"time":null,"data":`),
		replace(`"data":`, `"datacontenttype":null,"data":`),
		replace(`"data":{`, `"data":{"metric":1},"data":{`),
		replace(`"data":{`, `"data":"x","data":{`),
		strings.TrimSuffix(valid, "}") + `,"data":null}`,
		replace(`"labels":`, `"labels":{"a":"1"},"labels":`),
		replace(`"labels":`, `"labels":null,"labels":`),
		replace(`"labels":{"app":"web","region":"eu"}`, `"labels":null`),
		replace(`"labels":{"app":"web","region":"eu"}`, `"labels":{}`),
		replace(`"labels":{"app":"web","region":"eu"}`, `"labels":{"a":null}`),
		replace(`"labels":{"app":"web","region":"eu"}`, `"labels":{"a":"1","a":"2"}`),
		replace(`"labels":{"app":"web","region":"eu"}`, `"labels":{"a":{"b":"c"}}`),
		replace(`"labels":{"app":"web","region":"eu"}`, `"labels":"x"`),
		replace(`"metric":"photo_daily_total"`, `"metric":null`),
		replace(`"value":1`, `"value":1,"valeu":2,"value":"x"`),
		replace(`"value":1`, `"value":"x","valeu":2`),
		replace(`"value":1`, "\"value\":1,\"va\\\"l\xffue\":2"),
		replace(`"id":"0193a6f4-8c3e-7d2a-9b1f-3c4d5e6f7a8b"`, `"id":{"a":1}`),
		replace(`"id":"0193a6f4-8c3e-7d2a-9b1f-3c4d5e6f7a8b"`, `"id":[1],"subject":true`),
		// Wrong types and bad values in an order where more than one rule breaks.
		replace(`"specversion":"1.0"`, `"specversion":1.0`) + "x",
		replace(`"data":{`, `"data":5,"x":{`),
		replace(`"data":{`, `"data":[1],"x":{`),
		replace(`"data":{`, `"data":true,"x":{`),
		replace(`"subject":"u-42"`, `"subject":"u-42","type":7`),
		replace(`"data":{`, `"data":{"metric":1},"id":5,"data":{`),
		replace(`"data":{`, `"data":{"metric":1},"time":"x","data":{`),
		replace(`"value":1`, `"value":1e400,"value":2`),
		replace(`"value":1`, `"value":1,"labels":5`),
		replace(`"labels":{"app":"web","region":"eu"}`, `"labels":{"a b":"1","c d":"2"}`),
		// Times.
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22T10:30:00Z`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22T10:30:00.123456789Z`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22T10:30:00.1234567891Z`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22T10:30:00,5Z`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22T10:30:00.Z`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22T10:30:00+01:00`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22T10:30:00.5-07:30`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22T10:30:00z`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22t10:30:00Z`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22T1:30:00Z`),
		replace(`2026-11-22T10:30:00.123Z`, `2024-02-29T10:30:00Z`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-02-29T10:30:00Z`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-04-31T10:30:00Z`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22T24:00:00Z`),
		replace(`2026-11-22T10:30:00.123Z`, `2026-11-22T23:59:60Z`),
		replace(`2026-11-22T10:30:00.123Z`, `0000-01-01T00:00:00Z`),
		replace(`2026-11-22T10:30:00.123Z`, `\u0032026-11-22T10:30:00Z`),
		// Case: CloudEvents names are exact; encoding/json folds case.
		replace(`"id":`, `"ID":"x","id":`),
		replace(`"value":1`, `"value":1,"Value":2`),
		`{"speCversion":"1.0","id":"00","sourCe":"00","tYpe":"allot.usage.v1","suBjeCt":"0","time":"0000-01-01T0:00:00Z","dAtA":{"metriC":"0","vAlue":0,"lABels":{}}}`,
		// Drafts.
		`{"subject":"u-42","data":{"metric":"photo_daily_total","value":2}}`,
		`{"subject":"u","id":"","data":{"metric":"m","value":1}}`,
	}
}

// foldsKnownName reports whether body names a known field in a case
// other than its own, where the reference, on encoding/json, folds case
// and Decode does not.
func foldsKnownName(body []byte) bool {
	var doc map[string]json.RawMessage
	if json.Unmarshal(body, &doc) != nil {
		return false
	}
	folds := func(key string, names ...string) bool {
		for _, n := range names {
			if key != n && strings.EqualFold(key, n) {
				return true
			}
		}
		return false
	}
	for key, raw := range doc {
		if folds(key, "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data") {
			return true
		}
		if key != "data" {
			continue
		}
		var data map[string]json.RawMessage
		if json.Unmarshal(raw, &data) != nil {
			continue
		}
		for key := range data {
			if folds(key, "metric", "value", "labels") {
				return true
			}
		}
	}
	return false
}

// FuzzDecodeMatchesReference checks Decode and DecodeDraft against the
// encoding/json decoder they replaced: the same bodies are accepted, as
// the same events, and the same are refused, naming the same field with
// the same rule. Syntax errors may be worded differently.
func FuzzDecodeMatchesReference(f *testing.F) {
	for _, s := range decodeSeeds() {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, draft bool) {
		if foldsKnownName(body) {
			t.Skip("names a field in another case: a deliberate difference")
		}
		checkMatchesReference(t, body, draft)
	})
}

// checkMatchesReference fails t unless Decode (or DecodeDraft) and the
// reference agree on body.
func checkMatchesReference(t *testing.T, body []byte, draft bool) {
	t.Helper()
	decode := Decode
	if draft {
		decode = DecodeDraft
	}
	got, err := decode(body, 0)
	want, wantErr := referenceDecode(body, 0, draft)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("Decode(%q) = %v, reference = %v", body, err, wantErr)
	}
	if err != nil {
		var v, w *ValidationError
		if !errors.As(err, &v) || !errors.As(wantErr, &w) {
			t.Fatalf("Decode(%q) = %v (%T), want a *ValidationError", body, err, err)
		}
		if isSyntaxError(w) {
			if !isSyntaxError(v) {
				t.Fatalf("Decode(%q) = %v, reference = %v", body, err, wantErr)
			}
			return
		}
		if *v != *w && !(isLabelError(v) && isLabelError(w)) {
			t.Fatalf("Decode(%q) = %v, reference = %v", body, err, wantErr)
		}
		if !draft {
			return
		}
		// DecodeDraft returns what it decoded with a validation error.
	}
	if !got.Time.Equal(want.Time) {
		t.Fatalf("Decode(%q): time = %v, reference %v", body, got.Time, want.Time)
	}
	got.Time, want.Time = time.Time{}, time.Time{}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Decode(%q) (-reference +got):\n%s", body, diff)
	}
}

func isLabelError(v *ValidationError) bool {
	return strings.HasPrefix(v.Field, "data.labels")
}

func isSyntaxError(v *ValidationError) bool {
	return v.Field == "event" && strings.HasPrefix(v.Rule, "is not valid JSON: ")
}

func TestDecodeExactCase(t *testing.T) {
	valid := string(sampleEvent().AppendJSON(nil))
	for _, tc := range []struct {
		name, old, new, field, rule string
	}{
		// At the top level another case is an extension attribute.
		{"ID", `"id":`, `"ID":`, "id", "is required"},
		{"Data", `"data":`, `"Data":`, "data", "is required"},
		{"Time ignored", `"time":"2026-11-22T10:30:00.123Z"`, `"time":"2026-11-22T10:30:00.123Z","Time":"x"`, "", ""},
		// Inside data it is an unknown field.
		{"Value", `"value":`, `"Value":`, "data.Value", "is not a known field"},
		{"METRIC", `"metric":`, `"METRIC":`, "data.METRIC", "is not a known field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := strings.Replace(valid, tc.old, tc.new, 1)
			_, err := Decode([]byte(body), 0)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Decode(%s) = %v", body, err)
				}
				return
			}
			var v *ValidationError
			if !errors.As(err, &v) || v.Field != tc.field || v.Rule != tc.rule {
				t.Errorf("Decode(%s) = %v, want %s: %s", body, err, tc.field, tc.rule)
			}
		})
	}
}

// Escaped strings decode as with encoding/json, down to the replacement
// of unpaired surrogates and invalid UTF-8.
func TestDecodeStringEscapes(t *testing.T) {
	valid := string(sampleEvent().AppendJSON(nil))
	for in, want := range map[string]string{
		`"eu"`:                                "eu",
		`"\u0065\u0075"`:                      "eu",
		`"\"\\\/\b\f\n\r\t"`:                  "\"\\/\b\f\n\r\t",
		`"\ud83d\ude00"`:                      "😀",
		`"\ud83d"`:                            "\ufffd",
		`"\ude00\ud83d"`:                      "\ufffd\ufffd",
		`"\ud83d\u0041"`:                      "\ufffdA",
		`"\ud83dx"`:                           "\ufffdx",
		"\"a\xffb\"":                          "a\ufffdb",
		"\"\xed\xa0\x80\"":                    "\ufffd\ufffd\ufffd",
		"\"é\\u00e9\"":                        "éé",
		`"` + strings.Repeat(`\n`, 100) + `"`: strings.Repeat("\n", 100),
	} {
		body := strings.Replace(valid, `"eu"`, in, 1)
		var ref struct {
			Data struct{ Labels map[string]string }
		}
		if err := json.Unmarshal([]byte(body), &ref); err != nil {
			t.Fatalf("fixture %s: %v", in, err)
		}
		if ref.Data.Labels["region"] != want {
			t.Fatalf("fixture %s: encoding/json decodes %q, not %q", in, ref.Data.Labels["region"], want)
		}
		// Decode refuses control characters in labels, so read the
		// label from the draft it returns with the error.
		ev, _ := DecodeDraft([]byte(body), 0)
		if got := ev.Data.Labels["region"]; got != want {
			t.Errorf("label %s decodes to %q, want %q", in, got, want)
		}
	}
}

// encoding/json refuses arrays and objects nested deeper than 10000;
// so does Decode, without a stack overflow.
func TestDecodeDepthLimit(t *testing.T) {
	valid := string(sampleEvent().AppendJSON(nil))
	nest := func(n int) []byte {
		ext := strings.Repeat("[", n) + strings.Repeat("]", n)
		return []byte(strings.Replace(valid, `"data":`, `"ext":`+ext+`,"data":`, 1))
	}
	if _, err := Decode(nest(9999), 1<<20); err != nil { // 10000 with the event
		t.Errorf("Decode at the depth limit: %v", err)
	}
	_, err := Decode(nest(10000), 1<<20)
	var v *ValidationError
	if !errors.As(err, &v) || v.Field != "event" || !strings.Contains(v.Rule, "exceeded max depth") {
		t.Errorf("Decode over the depth limit = %v", err)
	}
	if _, ref := referenceDecode(nest(10000), 1<<20, false); ref == nil {
		t.Errorf("the reference accepts depth 10001")
	}
}

// A null body and a name given twice are refused, each with its own
// error, by Decode and the reference alike.
func TestDecodeNullAndDuplicates(t *testing.T) {
	valid := string(sampleEvent().AppendJSON(nil))
	replace := func(old, new string) string { return strings.Replace(valid, old, new, 1) }
	for body, want := range map[string]string{
		`null`:                                 "event: must be an object (got null)",
		` null `:                               "event: must be an object (got null)",
		replace(`"data":`, `"id":"b","data":`): "id: given twice",
		replace(`"data":`, `"traceparent":"a","traceparent":"b","data":`): "traceparent: given twice",
		replace(`"value":1`, `"value":1,"value":2`):                       "data.value: given twice",
		replace(`"region":"eu"`, `"region":"eu","region":"us"`):           "data.labels.region: given twice",
		replace(`"data":`, `"data":null,"data":`):                         "data: given twice",
		replace(`"value":1`, `"value":"x","value":2`):                     "data.value: given twice",
	} {
		_, err := Decode([]byte(body), 0)
		if err == nil || err.Error() != want || !errors.Is(err, ErrInvalid) {
			t.Errorf("Decode(%q) = %v, want %s", body, err, want)
		}
		if _, ref := referenceDecode([]byte(body), 0, false); ref == nil || ref.Error() != want {
			t.Errorf("reference(%q) = %v, want %s", body, ref, want)
		}
	}
}

func TestDecodeSyntaxErrorOffset(t *testing.T) {
	for body, want := range map[string]string{
		``:                 "event: is not valid JSON: unexpected end of JSON input at byte 0",
		`{"a":1 x}`:        "event: is not valid JSON: invalid character 'x' after object key:value pair at byte 8",
		`{"a":tru}`:        "event: is not valid JSON: invalid character '}' in literal true (expecting 'e') at byte 9",
		"{\"a\":\"\x01\"}": `event: is not valid JSON: invalid character '\x01' in string literal at byte 7`,
		`{} {}`:            "event: is not valid JSON: invalid character '{' after top-level value at byte 4",
	} {
		_, err := Decode([]byte(body), 0)
		if err == nil || err.Error() != want {
			t.Errorf("Decode(%q) = %v, want %s", body, err, want)
		}
		if _, ref := referenceDecode([]byte(body), 0, false); ref == nil || ref.Error() != want {
			t.Errorf("reference(%q) = %v, want %s", body, ref, want)
		}
	}
}

// The meter decodes every event: keep it to the strings it returns.
func TestDecodeAllocations(t *testing.T) {
	e := sampleEvent()
	e.Data.Labels = nil
	body := e.AppendJSON(nil)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := Decode(body, 0); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 4 { // id, source, subject and metric
		t.Errorf("Decode makes %v allocations, want at most 4", allocs)
	}
}

func BenchmarkDecodeReference(b *testing.B) {
	body := sampleEvent().AppendJSON(nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := referenceDecode(body, 0, false); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzParseTimeUTC checks the allocation-free time parser against
// time.Parse: whatever it accepts, time.Parse parses to the same time.
func FuzzParseTimeUTC(f *testing.F) {
	for _, s := range []string{
		"2026-11-22T10:30:00Z", "2026-11-22T10:30:00.123Z", "2026-11-22T10:30:00.123456789Z",
		"2026-11-22T10:30:00.1234567891Z", "2024-02-29T23:59:59.9Z", "2026-02-29T00:00:00Z",
		"0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-11-22T10:30:00,5Z", "2026-11-22T10:30:00.Z",
		"2026-11-22T10:30:00+01:00", "2026-11-22T1:30:00Z", "2026-11-22T10:30:60Z",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseTimeUTC(jsonString{raw: []byte(s), set: true})
		if !ok {
			return
		}
		want, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatalf("parseTimeUTC(%q) = %v, time.Parse refuses it: %v", s, got, err)
		}
		if !got.Equal(want) || got.Location() != want.Location() {
			t.Fatalf("parseTimeUTC(%q) = %v, time.Parse = %v", s, got, want)
		}
	})
}

// TestDecodeMatchesReferenceRandom builds random events around the
// known names, where mutation fuzzing seldom goes: every member may be
// missing, null, repeated or of another type, between extension
// attributes of every type, with random white space.
func TestDecodeMatchesReferenceRandom(t *testing.T) {
	g := eventGen{rand.New(rand.NewPCG(1, 2))}
	n := 10000
	if testing.Short() {
		n = 2000
	}
	for i := 0; i < n; i++ {
		body := g.event()
		checkMatchesReference(t, body, false)
		checkMatchesReference(t, body, true)
	}
}

type eventGen struct{ r *rand.Rand }

func (g eventGen) pick(s ...string) string { return s[g.r.IntN(len(s))] }

// mostly returns good, or now and then one of the others.
func (g eventGen) mostly(good string, others ...string) string {
	if g.r.IntN(10) > 0 {
		return good
	}
	return g.pick(others...)
}

// drop cuts a few names off the end now and then.
func (g eventGen) drop(names []string) []string {
	if g.r.IntN(6) > 0 {
		return names
	}
	return names[:len(names)-1-g.r.IntN(3)]
}

func (g eventGen) space() string {
	if g.r.IntN(4) > 0 {
		return ""
	}
	return g.pick(" ", "\n", "\t\r", "  ")
}

// member writes "name":value, with value good most of the time.
func (g eventGen) member(b []byte, name string, good func() string) []byte {
	if g.r.IntN(40) == 0 && name != "" {
		name = g.pick(`\u00`+strconv.FormatInt(int64(name[0]), 16)+name[1:], name+"x", "")
	}
	b = append(b, g.space()+`"`+name+`"`+g.space()+":"+g.space()...)
	if g.r.IntN(12) > 0 {
		return append(b, good()...)
	}
	return append(b, g.value(2)...)
}

func (g eventGen) value(depth int) string {
	switch n := g.r.IntN(10); {
	case n < 3:
		return g.str()
	case n < 5:
		return g.pick("0", "-0", "1", "1.5", "-2.5e-3", "1e400", "-1e400", "1e-400", "12345678901234567890", "0.1E+2")
	case n < 7:
		return g.pick("true", "false", "null")
	case depth == 0:
		return "{}"
	case n < 9:
		var b []byte
		b = append(b, '{')
		for i := g.r.IntN(3); i > 0; i-- {
			b = g.member(b, g.pick("a", "metric", "value", "labels", "data", "id", ""), func() string { return g.value(depth - 1) })
			if i > 1 {
				b = append(b, ',')
			}
		}
		return string(append(b, '}'))
	default:
		var b []byte
		b = append(b, '[')
		for i := g.r.IntN(3); i > 0; i-- {
			b = append(b, g.value(depth-1)...)
			if i > 1 {
				b = append(b, ',')
			}
		}
		return string(append(b, ']'))
	}
}

func (g eventGen) str() string {
	return g.pick(`""`, `"x"`, `"u-42"`, `"a b"`, `"\u0041\ud83d\ude00"`, `"\ud800"`, "\"\xff\"", `"\n"`, `"1.0"`, `"allot.usage.v1"`,
		`"application/json"`, `"text/plain"`, `"2026-11-22T10:30:00Z"`, `"2026-11-22T10:30:00.5+02:00"`, `"yesterday"`)
}

func (g eventGen) event() []byte {
	good := map[string]func() string{
		"specversion": func() string { return g.mostly(`"1.0"`, `"0.3"`) },
		"id":          func() string { return g.mostly(`"0193a6f4-8c3e-7d2a"`, `"e\u002d1"`, `"a b"`, `""`) },
		"source":      func() string { return g.mostly(`"photos"`, "\"ph\xffotos\"", `""`) },
		"type":        func() string { return g.mostly(`"allot.usage.v1"`, `"x"`) },
		"subject":     func() string { return g.mostly(`"u-42"`, `"u.42"`) },
		"time": func() string {
			return g.mostly(`"2026-11-22T10:30:00.123Z"`, `"2026-11-22T10:30:00+01:00"`, `"2026-02-30T00:00:00Z"`, `"2026-11-22T10:30:00,5Z"`)
		},
		"datacontenttype": func() string { return g.mostly(`"application/json"`, `"text/plain"`) },
		"ext":             func() string { return g.value(3) },
		"data":            func() string { return g.data() },
	}
	names := []string{"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "ext", "data", "data", "id"}
	g.r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	names = g.drop(names)
	b := []byte(g.space() + "{")
	for i, name := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = g.member(b, name, good[name])
	}
	b = append(b, "}"+g.space()...)
	if g.r.IntN(50) == 0 {
		b = b[:g.r.IntN(len(b))] // truncated
	}
	return b
}

func (g eventGen) data() string {
	good := map[string]func() string{
		"metric": func() string { return g.mostly(`"photo_daily_total"`, `"m\u0041"`, `"photo daily"`) },
		"value":  func() string { return g.mostly(g.pick("1", "-0.5", "2e3", "-0"), "1e400", "null") },
		"labels": func() string { return g.labels() },
		"valeu":  func() string { return "2" },
	}
	names := []string{"metric", "value", "labels", "value", "labels", "valeu"}[:3+g.r.IntN(4)]
	g.r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	names = g.drop(names)
	b := []byte("{")
	for i, name := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = g.member(b, name, good[name])
	}
	return string(append(b, '}'))
}

func (g eventGen) labels() string {
	b := []byte("{")
	for i := g.r.IntN(4); i > 0; i-- {
		b = g.member(b, g.mostly(g.pick("region", "app", "region"), "a b", "re\\u0067ion"), func() string { return g.mostly(g.pick(`"eu"`, `"web"`, `""`, "null"), `"\u0001"`, "5") })
		if i > 1 {
			b = append(b, ',')
		}
	}
	return string(append(b, '}'))
}
