package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Requests and replies of allot's request/reply endpoints. Field names are
// the wire contract of DESIGN.md.

// CreditRequest asks meter.credit.<uid> for one metric, or for every
// grant of the uid when Metric is empty.
type CreditRequest struct {
	Metric string `json:"metric,omitempty"`
}

// Credit is the state of one grant of one uid.
type Credit struct {
	UID       string    `json:"uid"`
	Metric    string    `json:"metric"`
	Limit     float64   `json:"limit"`
	Used      float64   `json:"used"`
	Remaining float64   `json:"remaining"`
	Overage   float64   `json:"overage"`
	Period    string    `json:"period"`
	ResetsAt  time.Time `json:"resets_at,omitzero"` // zero for an indefinite period
	// CountedSince, when set, says Used counts only the usage since this
	// time: Redis lost the meter's state and the stream it was rebuilt
	// from no longer held older events (its retention), while this
	// grant's period may have begun before. Used may be low; it is never
	// set for a period begun after it.
	CountedSince time.Time `json:"counted_since,omitzero"`
}

// CreditsReply answers a CreditRequest without a metric.
type CreditsReply struct {
	UID     string   `json:"uid"`
	Credits []Credit `json:"credits"`
}

// AuthorizeRequest asks meter.authorize.<uid> to admit Amount of Metric.
// It is idempotent on ID: the same id is admitted at most once.
type AuthorizeRequest struct {
	ID     string  `json:"id"`
	Metric string  `json:"metric"`
	Amount float64 `json:"amount"`
}

// AuthorizeReply is the admission decision.
type AuthorizeReply struct {
	Allowed   bool      `json:"allowed"`
	Remaining float64   `json:"remaining"`
	ResetsAt  time.Time `json:"resets_at,omitzero"`
}

// GrantsRequest reads (empty), sets or unsets a uid's grant overrides.
type GrantsRequest struct {
	Set   map[string]float64 `json:"set,omitempty"`
	Unset []string           `json:"unset,omitempty"`
}

// GrantsReply lists the uid's effective grants: config defaults with the
// uid's overrides applied.
type GrantsReply struct {
	UID    string             `json:"uid"`
	Grants map[string]float64 `json:"grants"`
}

// CheckRequest asks ratelimit.check.<uid> whether a call may go ahead.
// Cost nil means 1; a cost of 0 peeks without consuming. No Service means
// the uid's own "ratelimit" grant over the default interval.
type CheckRequest struct {
	Service string `json:"service,omitempty"`
	Cost    *int64 `json:"cost,omitempty"`
}

// Cost returns a pointer to n, for CheckRequest.Cost.
func Cost(n int64) *int64 { return &n }

// CheckReply is a rate-limit decision.
type CheckReply struct {
	Allowed      bool  `json:"allowed"`
	Limit        int64 `json:"limit"`
	Remaining    int64 `json:"remaining"`
	ResetAfterMs int64 `json:"reset_after_ms"`
	RetryAfterMs int64 `json:"retry_after_ms"`
}

// ResetRequest clears a uid's window for one service.
type ResetRequest struct {
	Service string `json:"service,omitempty"`
}

// OKReply is the reply of endpoints that only confirm.
type OKReply struct {
	OK bool `json:"ok"`
}

// RegisterRequest registers one instance of a service.
type RegisterRequest struct {
	Name      string   `json:"name"`
	ID        string   `json:"id"`
	Endpoints []string `json:"endpoints"`
	IPv4      string   `json:"ipv4"`
	Port      int      `json:"port"`
	PublicURL string   `json:"public_url"`
}

// RegisterReply confirms a registration and says how long it lives
// without a heartbeat.
type RegisterReply struct {
	OK   bool `json:"ok"`
	TTLS int  `json:"ttl_s"`
}

// DeregisterRequest removes one registration before it expires, as a
// service does when it stops.
type DeregisterRequest struct {
	Name string `json:"name"`
	ID   string `json:"id"`
}

// FindRequest asks registry.find[.<name>]; it has no fields today.
type FindRequest struct{}

// Instance is one registered instance of a service.
type Instance struct {
	Name      string    `json:"name"`
	ID        string    `json:"id"`
	Endpoints []string  `json:"endpoints"`
	IPv4      string    `json:"ipv4"`
	Port      int       `json:"port"`
	PublicURL string    `json:"public_url"`
	Created   time.Time `json:"created,omitzero"`
}

// FindReply lists live instances and, for each top-level resource, the
// URL that serves it. A resource served at two or more different URLs is
// not in URLMap: Conflicts lists its URLs instead, sorted, so the caller
// sees the disagreement rather than a silent choice.
type FindReply struct {
	Instances []Instance          `json:"instances"`
	URLMap    map[string]string   `json:"url_map"`
	Conflicts map[string][]string `json:"conflicts,omitempty"`
	// Seq (registry.find.<name> only) is the sequence of the name's last
	// change this reply is the state after: a watch applies only changes
	// with a greater one. Absent (0): none yet, or an older registry.
	Seq uint64 `json:"seq,omitempty"`
}

// RefreshRequest asks registry.refresh to reap expired instances now
// and rebuild the URL map; the notifier's periodic task sends it.
type RefreshRequest struct{}

// Validate accepts the empty request.
func (RefreshRequest) Validate() error { return nil }

// RefreshReply says what a refresh found.
type RefreshReply struct {
	Reaped    int `json:"reaped"`    // instances removed as expired
	Instances int `json:"instances"` // live instances after the refresh
	Resources int `json:"resources"` // entries of the rebuilt URL map
	Conflicts int `json:"conflicts"` // resources served at more than one URL
}

// Registry changes, as in RegistryChange.Change.
const (
	ChangeAppeared = "appeared"
	ChangeChanged  = "changed"
	ChangeExpired  = "expired"
	// ChangeDeregistered: removed by registry.deregister. The reaper
	// announces the same instance as expired later, as it always did.
	ChangeDeregistered = "deregistered"
)

// RegistryChange is published on registry.changed.<name> when an instance
// appears, changes or expires. Instance is the instance as registered (on
// an expiry, as last registered); it is absent only when the registry
// could not read it.
type RegistryChange struct {
	Name     string    `json:"name"`
	ID       string    `json:"id"`
	Change   string    `json:"change"`
	Instance *Instance `json:"instance,omitempty"`
	// Seq numbers the changes of one name, 1, 2, 3...: a subscriber that
	// sees one skipped knows it missed a change. 0 (absent): an older
	// registry, which numbers none.
	Seq uint64 `json:"seq,omitempty"`
}

// UsageNotice is published on notify.usage.<uid> when a grant's use
// crosses one of its notify thresholds: once per threshold per period.
type UsageNotice struct {
	// ID is the same for the same crossing, however often it is
	// published: "<uid>.<metric>.<period start ms>.<threshold>". It is
	// also the Nats-Msg-Id, so the stream keeps one copy.
	ID          string    `json:"id"`
	UID         string    `json:"uid"`
	Metric      string    `json:"metric"`
	Threshold   float64   `json:"threshold"` // percent of the limit
	Used        float64   `json:"used"`      // when the threshold was crossed
	Limit       float64   `json:"limit"`
	Period      string    `json:"period"`
	PeriodStart time.Time `json:"period_start"`
	ResetsAt    time.Time `json:"resets_at,omitzero"`
}

// ErrorCode names the kind of a request/reply error in the error body.
type ErrorCode string

// Error codes and the status each travels with in the
// Nats-Service-Error-Code header.
const (
	CodeBadRequest  ErrorCode = "bad_request" // 400
	CodeNotFound    ErrorCode = "not_found"   // 404: unknown metric or service
	CodeConflict    ErrorCode = "conflict"    // 409
	CodeOverLimit   ErrorCode = "over_limit"  // 429
	CodeInternal    ErrorCode = "internal"    // 500
	CodeUnavailable ErrorCode = "unavailable" // 503: backend down
)

var codeStatus = map[ErrorCode]int{
	CodeBadRequest:  400,
	CodeNotFound:    404,
	CodeConflict:    409,
	CodeOverLimit:   429,
	CodeInternal:    500,
	CodeUnavailable: 503,
}

// Status returns the numeric status of the code, 500 when unknown.
func (c ErrorCode) Status() int {
	if s, ok := codeStatus[c]; ok {
		return s
	}
	return 500
}

// CodeForStatus returns the code of a numeric status, CodeInternal when
// unknown.
func CodeForStatus(status int) ErrorCode {
	for c, s := range codeStatus {
		if s == status {
			return c
		}
	}
	return CodeInternal
}

// ErrorBody is the JSON body of every error reply:
// {"error":{"code":"...","message":"..."}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
	Field   string    `json:"field,omitempty"` // the request field at fault, for 400s
}

// Sentinels matched by a [ServiceError] of the same code with errors.Is.
var (
	ErrBadRequest  = errors.New("events: bad request")
	ErrNotFound    = errors.New("events: not found")
	ErrConflict    = errors.New("events: conflict")
	ErrOverLimit   = errors.New("events: over limit")
	ErrInternal    = errors.New("events: internal error")
	ErrUnavailable = errors.New("events: backend unavailable")
)

var codeSentinel = map[ErrorCode]error{
	CodeBadRequest:  ErrBadRequest,
	CodeNotFound:    ErrNotFound,
	CodeConflict:    ErrConflict,
	CodeOverLimit:   ErrOverLimit,
	CodeInternal:    ErrInternal,
	CodeUnavailable: ErrUnavailable,
}

// ServiceError is an error reply of an allot endpoint, on either side of
// the wire: services build one to answer, clients decode one.
type ServiceError struct {
	Status  int
	Code    ErrorCode
	Message string
	Field   string
}

// NewServiceError builds a ServiceError for code.
func NewServiceError(code ErrorCode, field, format string, args ...any) *ServiceError {
	return &ServiceError{Status: code.Status(), Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

// BadRequest turns a validation error into a 400 naming its field.
func BadRequest(err error) *ServiceError {
	var v *ValidationError
	if errors.As(err, &v) {
		return NewServiceError(CodeBadRequest, v.Field, "%s", v.Error())
	}
	return NewServiceError(CodeBadRequest, "", "%s", err.Error())
}

func (e *ServiceError) Error() string {
	return fmt.Sprintf("events: %d %s: %s", e.Status, e.Code, e.Message)
}

// Is matches the sentinel of the error's code, e.g. ErrNotFound.
func (e *ServiceError) Is(target error) bool {
	return codeSentinel[e.Code] == target
}

// Body is the JSON error body.
func (e *ServiceError) Body() []byte {
	b, _ := json.Marshal(ErrorBody{Error: ErrorDetail{Code: e.Code, Message: e.Message, Field: e.Field}})
	return b
}

// StatusText is the status as sent in the Nats-Service-Error-Code header.
func (e *ServiceError) StatusText() string { return strconv.Itoa(e.Status) }
