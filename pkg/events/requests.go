package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"net/url"
	"reflect"
	"strconv"

	"github.com/nats-io/nats.go/micro"
)

// Request limits.
const (
	// MaxCost is the largest cost of one rate-limit check.
	MaxCost = 1_000_000
	// MaxAmount is the largest amount of one authorize request, and the
	// largest grant: MaxNumber.
	MaxAmount = MaxNumber
	// MaxGrantChanges is the most metrics one grants request may set and
	// unset together.
	MaxGrantChanges = 64
	// MaxEndpoints is the most endpoints one instance may register.
	MaxEndpoints = 256
	// MaxRequestBytes is the largest request body an endpoint accepts.
	MaxRequestBytes = 64 << 10
)

// Validate checks a credit request.
func (r CreditRequest) Validate() error {
	if r.Metric == "" {
		return nil
	}
	return ValidateToken("metric", r.Metric)
}

// Validate checks an authorize request.
func (r AuthorizeRequest) Validate() error {
	if err := ValidateID("id", r.ID); err != nil {
		return err
	}
	if err := ValidateToken("metric", r.Metric); err != nil {
		return err
	}
	return CheckAmount("amount", r.Amount)
}

func (AuthorizeRequest) numberRange(field string) (Range, bool) {
	return AmountRange, field == "amount"
}

// Validate checks a grants request.
func (r GrantsRequest) Validate() error {
	if n := len(r.Set) + len(r.Unset); n > MaxGrantChanges {
		return invalid("set", "set and unset together must name at most %d metrics (got %d)", MaxGrantChanges, n)
	}
	for m, v := range r.Set {
		if err := ValidateToken("set", m); err != nil {
			return err
		}
		if err := CheckAmount("set."+m, v); err != nil {
			return err
		}
	}
	for _, m := range r.Unset {
		if err := ValidateToken("unset", m); err != nil {
			return err
		}
		if _, ok := r.Set[m]; ok {
			return invalid("unset", "metric %q is both set and unset", m)
		}
	}
	return nil
}

// numberRange names the range of every grant, for a JSON number no
// float64 holds; encoding/json names the map, not the key.
func (GrantsRequest) numberRange(field string) (Range, bool) {
	return AmountRange, field == "set"
}

// Validate checks a rate-limit check request.
func (r CheckRequest) Validate() error {
	if r.Service != "" {
		if err := ValidateToken("service", r.Service); err != nil {
			return err
		}
	}
	if r.Cost != nil && (*r.Cost < 0 || *r.Cost > MaxCost) {
		return invalid("cost", "%s (got %d)", CostRange.text(), *r.Cost)
	}
	return nil
}

// UnmarshalJSON reads a check request strictly. cost may be written as
// any JSON number of an integral value (2, 2.0, 1e6), since JSON does not
// tell integers from other numbers and many encoders write 2.0.
func (r *CheckRequest) UnmarshalJSON(b []byte) error {
	var w struct {
		Service string          `json:"service"`
		Cost    json.RawMessage `json:"cost"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return err
	}
	r.Service, r.Cost = w.Service, nil
	if len(w.Cost) == 0 || string(w.Cost) == "null" {
		return nil
	}
	if c := w.Cost[0]; c != '-' && (c < '0' || c > '9') {
		kind := map[byte]string{'"': "string", '{': "object", '[': "array", 't': "bool", 'f': "bool"}[c]
		return &json.UnmarshalTypeError{Value: kind, Type: reflect.TypeFor[int64](), Field: "cost"}
	}
	f, err := strconv.ParseFloat(string(w.Cost), 64)
	if err != nil || CheckNumber("cost", f, CostRange) != nil {
		return literalError("cost", string(w.Cost), CostRange)
	}
	r.Cost = Cost(int64(f))
	return nil
}

// CostOrDefault returns the cost, 1 when none was given.
func (r CheckRequest) CostOrDefault() int64 {
	if r.Cost == nil {
		return 1
	}
	return *r.Cost
}

// Validate checks a rate-limit reset request.
func (r ResetRequest) Validate() error {
	if r.Service == "" {
		return nil
	}
	return ValidateToken("service", r.Service)
}

// Validate checks a registration.
func (r RegisterRequest) Validate() error {
	if err := ValidateToken("name", r.Name); err != nil {
		return err
	}
	if err := ValidateToken("id", r.ID); err != nil {
		return err
	}
	if len(r.Endpoints) > MaxEndpoints {
		return invalid("endpoints", "must list at most %d endpoints (got %d)", MaxEndpoints, len(r.Endpoints))
	}
	for _, ep := range r.Endpoints {
		if err := ValidateToken("endpoints", ep); err != nil {
			return err
		}
	}
	if r.IPv4 == "" {
		return invalid("ipv4", "is required")
	}
	if a, err := netip.ParseAddr(r.IPv4); err != nil || !a.Is4() {
		return invalid("ipv4", "must be an IPv4 address (got %s)", quoteShort(r.IPv4))
	}
	if r.Port < 1 || r.Port > 65535 {
		return invalid("port", "%s (got %d)", portRange.text(), r.Port)
	}
	if r.PublicURL != "" {
		u, err := url.Parse(r.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return invalid("public_url", "must be an absolute http or https URL (got %s)", quoteShort(r.PublicURL))
		}
	}
	return nil
}

var portRange = Range{Min: 1, Max: 65535, Integer: true}

func (RegisterRequest) numberRange(field string) (Range, bool) {
	return portRange, field == "port"
}

// Validate checks a deregistration.
func (r DeregisterRequest) Validate() error {
	if err := ValidateToken("name", r.Name); err != nil {
		return err
	}
	return ValidateToken("id", r.ID)
}

// Validate checks a find request; it has no fields today.
func (FindRequest) Validate() error { return nil }

// Validator is a request that can check itself.
type Validator interface {
	Validate() error
}

// numberFields is a request that names the Range of its number fields,
// so that a JSON number its Go field cannot hold (1e400, or 1.5 for an
// integer) is refused with that range, as any number out of it is.
type numberFields interface {
	numberRange(field string) (Range, bool)
}

// DecodeRequest parses a request body into v strictly (unknown fields
// are refused; an empty body is {}) and validates it. Every error is a
// [ValidationError] naming the field, for a 400 reply.
func DecodeRequest(body []byte, v Validator) error {
	if len(body) > MaxRequestBytes {
		return invalid("request", "must be at most %d bytes (got %d)", MaxRequestBytes, len(body))
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	if q, ok := v.(quickReader); ok && q.readQuick(body) {
		return v.Validate()
	}
	return decodeRequestJSON(body, v)
}

// decodeRequestJSON is DecodeRequest through encoding/json, for any
// body.
func decodeRequestJSON(body []byte, v Validator) error {
	if err := checkMembers(body, "request"); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var ranges func(string) (Range, bool)
		if nf, ok := v.(numberFields); ok {
			ranges = nf.numberRange
		}
		return jsonError("", "request", err, ranges)
	}
	if dec.More() {
		return invalid("request", "must be one JSON object, found more after it")
	}
	return v.Validate()
}

// Respond sends v as the JSON reply to req.
func Respond(req micro.Request, v any) error {
	return req.RespondJSON(v)
}

// RespondError replies to req with err in the micro error headers and
// the JSON error body. A [ServiceError] keeps its code, a
// [ValidationError] becomes a 400 naming the field, anything else a 500
// whose message is err's text.
func RespondError(req micro.Request, err error) error {
	var serr *ServiceError
	switch {
	case errors.As(err, &serr):
	case errors.Is(err, ErrInvalid):
		serr = BadRequest(err)
	default:
		serr = NewServiceError(CodeInternal, "", "%s", err.Error())
	}
	return req.Error(serr.StatusText(), serr.Message, serr.Body())
}
