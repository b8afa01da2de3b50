package events

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDecodeRequestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name  string
		body  string
		v     Validator
		field string
		rule  string
	}{
		{"malformed", `{"metric":`, &CreditRequest{}, "request", "not valid JSON"},
		{"not an object", `"x"`, &CreditRequest{}, "request", "must be an object"},
		{"trailing data", `{} {}`, &CreditRequest{}, "request", "found more"},
		{"null", `null`, &CheckRequest{}, "request", "must be a JSON object (got null)"},
		{"null with space", ` null `, &CreditRequest{}, "request", "must be a JSON object (got null)"},
		{"duplicate cost", `{"cost":1,"cost":2}`, &CheckRequest{}, "cost", "given twice"},
		{"duplicate nested", `{"set":{"m":1,"m":2}}`, &GrantsRequest{}, "set.m", "given twice"},
		{"duplicate in a list", `{"name":"a","id":"b","endpoints":[],"ipv4":"1.2.3.4","port":1,"name":"c"}`, &RegisterRequest{}, "name", "given twice"},
		{"unknown field", `{"metrik":"m"}`, &CreditRequest{}, "metrik", "not a known field"},
		{"bad metric", `{"metric":"a b"}`, &CreditRequest{}, "metric", "must be 1 to 128"},
		{"metric number", `{"metric":3}`, &CreditRequest{}, "metric", "must be a string"},
		{"authorize no id", `{"metric":"m","amount":1}`, &AuthorizeRequest{}, "id", "is required"},
		{"authorize negative", `{"id":"a","metric":"m","amount":-1}`, &AuthorizeRequest{}, "amount", "must be a number from 0 to 1e15 (got -1)"},
		{"authorize huge", `{"id":"a","metric":"m","amount":1e30}`, &AuthorizeRequest{}, "amount", "must be a number from 0 to 1e15 (got 1e+30)"},
		{"authorize beyond float64", `{"id":"a","metric":"m","amount":1e400}`, &AuthorizeRequest{}, "amount", "must be a number from 0 to 1e15 (got 1e400)"},
		{"authorize 7 decimals", `{"id":"a","metric":"m","amount":0.1234567}`, &AuthorizeRequest{}, "amount", "with at most 6 decimal places (got 0.1234567)"},
		{"authorize amount string", `{"id":"a","metric":"m","amount":"1"}`, &AuthorizeRequest{}, "amount", "must be a number"},
		{"grants bad metric", `{"set":{"a b":1}}`, &GrantsRequest{}, "set", "must be 1 to 128"},
		{"grants negative", `{"set":{"m":-5}}`, &GrantsRequest{}, "set.m", "must be a number from 0 to 1e15 (got -5)"},
		{"grants past the range", `{"set":{"m":1e15,"n":1000000000000001}}`, &GrantsRequest{}, "set.n", "must be a number from 0 to 1e15 (got 1000000000000001)"},
		{"grants beyond float64", `{"set":{"m":1e400}}`, &GrantsRequest{}, "set", "must be a number from 0 to 1e15 (got 1e400)"},
		{"grants set and unset", `{"set":{"m":5},"unset":["m"]}`, &GrantsRequest{}, "unset", "both set and unset"},
		{"check negative cost", `{"service":"s","cost":-1}`, &CheckRequest{}, "cost", "must be a whole number from 0 to 1000000 (got -1)"},
		{"check huge cost", `{"service":"s","cost":1000000000}`, &CheckRequest{}, "cost", "must be a whole number from 0 to 1000000 (got 1000000000)"},
		{"check cost past int64", `{"service":"s","cost":1e308}`, &CheckRequest{}, "cost", "must be a whole number from 0 to 1000000 (got 1e308)"},
		{"check fractional cost", `{"service":"s","cost":1.5}`, &CheckRequest{}, "cost", "must be a whole number from 0 to 1000000 (got 1.5)"},
		{"check bad service", `{"service":"a.b"}`, &CheckRequest{}, "service", "must be 1 to 128"},
		{"check cost string", `{"cost":"1"}`, &CheckRequest{}, "cost", "must be a number (got string)"},
		{"check cost past the range", `{"cost":1000001}`, &CheckRequest{}, "cost", "must be a whole number from 0 to 1000000 (got 1000001)"},
		{"check cost beyond float64", `{"cost":1e400}`, &CheckRequest{}, "cost", "must be a whole number from 0 to 1000000 (got 1e400)"},
		{"check unknown field", `{"service":"s","costs":1}`, &CheckRequest{}, "costs", "is not a known field"},
		{"reset bad service", `{"service":"*"}`, &ResetRequest{}, "service", "must be 1 to 128"},
		{"register no name", `{"id":"i","ipv4":"10.0.0.1","port":80}`, &RegisterRequest{}, "name", "is required"},
		{"register bad id", `{"name":"n","id":"i/1","ipv4":"10.0.0.1","port":80}`, &RegisterRequest{}, "id", "must be 1 to 128"},
		{"register bad ip", `{"name":"n","id":"i","ipv4":"::1","port":80}`, &RegisterRequest{}, "ipv4", "IPv4"},
		{"register no ip", `{"name":"n","id":"i","port":80}`, &RegisterRequest{}, "ipv4", "is required"},
		{"register port", `{"name":"n","id":"i","ipv4":"10.0.0.1","port":70000}`, &RegisterRequest{}, "port", "must be a whole number from 1 to 65535 (got 70000)"},
		{"register port past int", `{"name":"n","id":"i","ipv4":"10.0.0.1","port":1e20}`, &RegisterRequest{}, "port", "must be a whole number from 1 to 65535 (got 1e20)"},
		{"register url", `{"name":"n","id":"i","ipv4":"10.0.0.1","port":80,"public_url":"ftp://x"}`, &RegisterRequest{}, "public_url", "http or https"},
		{"register endpoint", `{"name":"n","id":"i","ipv4":"10.0.0.1","port":80,"endpoints":["a b"]}`, &RegisterRequest{}, "endpoints", "must be 1 to 128"},
		{"deregister no id", `{"name":"n"}`, &DeregisterRequest{}, "id", "is required"},
		{"deregister bad name", `{"name":"a b","id":"i"}`, &DeregisterRequest{}, "name", "must be 1 to 128"},
		{"too large", `{"metric":"` + strings.Repeat("m", MaxRequestBytes) + `"}`, &CreditRequest{}, "request", "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := DecodeRequest([]byte(tc.body), tc.v)
			var v *ValidationError
			if !errors.As(err, &v) {
				t.Fatalf("DecodeRequest = %v (%T), want a *ValidationError", err, err)
			}
			if v.Field != tc.field || !strings.Contains(v.Rule, tc.rule) {
				t.Errorf("DecodeRequest = %q, want field %q and rule containing %q", err, tc.field, tc.rule)
			}
		})
	}
}

func TestDecodeRequestGood(t *testing.T) {
	var c CreditRequest
	if err := DecodeRequest(nil, &c); err != nil || c.Metric != "" {
		t.Errorf("empty body: %+v, %v", c, err)
	}
	var chk CheckRequest
	if err := DecodeRequest([]byte(`{"service":"upload","cost":0}`), &chk); err != nil {
		t.Fatal(err)
	}
	if chk.CostOrDefault() != 0 {
		t.Errorf("cost 0 must peek, got %d", chk.CostOrDefault())
	}
	if got := (CheckRequest{}).CostOrDefault(); got != 1 {
		t.Errorf("default cost = %d, want 1", got)
	}
	// Any JSON number of an integral value is a cost.
	for body, want := range map[string]int64{`{"cost":2.0}`: 2, `{"cost":1e6}`: 1e6, `{"cost":-0}`: 0, `{"cost":0.3e1}`: 3, `{"cost":null}`: 1} {
		var c CheckRequest
		if err := DecodeRequest([]byte(body), &c); err != nil || c.CostOrDefault() != want {
			t.Errorf("%s: cost %d, %v; want %d", body, c.CostOrDefault(), err, want)
		}
	}
	var reg RegisterRequest
	body := `{"name":"media","id":"media-1","endpoints":["photo","album"],"ipv4":"10.1.2.3","port":8080,"public_url":"https://media.example.com"}`
	if err := DecodeRequest([]byte(body), &reg); err != nil {
		t.Fatal(err)
	}
	want := RegisterRequest{Name: "media", ID: "media-1", Endpoints: []string{"photo", "album"}, IPv4: "10.1.2.3", Port: 8080, PublicURL: "https://media.example.com"}
	if diff := cmp.Diff(want, reg); diff != "" {
		t.Errorf("register (-want +got):\n%s", diff)
	}
}

func TestServiceErrorCodes(t *testing.T) {
	for code, sentinel := range map[ErrorCode]error{
		CodeBadRequest: ErrBadRequest, CodeNotFound: ErrNotFound, CodeConflict: ErrConflict,
		CodeOverLimit: ErrOverLimit, CodeInternal: ErrInternal, CodeUnavailable: ErrUnavailable,
	} {
		e := NewServiceError(code, "", "x")
		if !errors.Is(e, sentinel) {
			t.Errorf("%s does not match its sentinel", code)
		}
		if CodeForStatus(code.Status()) != code {
			t.Errorf("status %d does not map back to %s", code.Status(), code)
		}
	}
	if ErrorCode("nope").Status() != 500 || CodeForStatus(418) != CodeInternal {
		t.Errorf("unknown codes must be internal")
	}
	bad := BadRequest(invalid("cost", "must be between 0 and 1"))
	if bad.Field != "cost" || bad.Status != 400 || string(bad.Body()) != `{"error":{"code":"bad_request","message":"cost: must be between 0 and 1","field":"cost"}}` {
		t.Errorf("BadRequest = %+v body %s", bad, bad.Body())
	}
}
