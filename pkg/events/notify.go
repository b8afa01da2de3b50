package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/mail"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Notifier limits.
const (
	// MaxEmailLen is the longest email address accepted (RFC 5321's path
	// limit less the brackets).
	MaxEmailLen = 254
	// MaxNameLen is the longest display name of a confirmation request.
	MaxNameLen = 256
	// MaxTokenTextLen is the longest confirmation token a verify request
	// may carry.
	MaxTokenTextLen = 1024
	// DefaultConfirmTemplate is the template of a confirmation request
	// that names none.
	DefaultConfirmTemplate = "confirm"
)

// ConfirmRequest is published by an app on notify.confirm.<uid> to have
// the notifier send uid a confirmation email with a signed, expiring,
// single-use token.
type ConfirmRequest struct {
	// ID identifies the request: the same id sends one email, however
	// often it is published or redelivered. It is also the Nats-Msg-Id.
	ID string `json:"id"`
	// Email is the address to confirm, a bare address such as
	// ada@example.com.
	Email string `json:"email"`
	// Name greets the recipient; optional.
	Name string `json:"name,omitempty"`
	// Template names the email's template; empty is "confirm".
	Template string `json:"template,omitempty"`
}

// Validate checks a confirmation request. Whether the template exists is
// the notifier's to say.
func (r ConfirmRequest) Validate() error {
	if err := ValidateID("id", r.ID); err != nil {
		return err
	}
	if err := ValidateEmail("email", r.Email); err != nil {
		return err
	}
	if err := validText("name", r.Name, MaxNameLen); err != nil {
		return err
	}
	if r.Template != "" {
		return ValidateToken("template", r.Template)
	}
	return nil
}

// TemplateOrDefault returns the template to render.
func (r ConfirmRequest) TemplateOrDefault() string {
	if r.Template == "" {
		return DefaultConfirmTemplate
	}
	return r.Template
}

// ValidateEmail returns a [ValidationError] naming field unless s is one
// bare email address (no display name, no comments, no line breaks).
func ValidateEmail(field, s string) error {
	if s == "" {
		return invalid(field, "is required")
	}
	if len(s) > MaxEmailLen {
		return invalid(field, "must be at most %d bytes (got %d)", MaxEmailLen, len(s))
	}
	bad := func() error {
		return invalid(field, "must be an email address such as ada@example.com (got %s)", quoteShort(s))
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Name != "" || a.Address != s {
		return bad()
	}
	// A domain with a dot, or localhost (a laptop's mail sink).
	if domain := s[strings.LastIndexByte(s, '@')+1:]; !strings.Contains(domain, ".") && domain != "localhost" {
		return bad()
	}
	return nil
}

// Verification results of notify.verify.
const (
	VerifyValid   = "valid"   // the token is good; it is now used
	VerifyExpired = "expired" // signed by us, but too old
	VerifyUsed    = "used"    // signed by us, already verified once
	VerifyInvalid = "invalid" // not a token we signed
)

// VerifyRequest asks notify.verify whether a confirmation token is good.
// A valid token is used up by the request that finds it valid.
type VerifyRequest struct {
	Token string `json:"token"`
}

// Validate checks a verify request.
func (r VerifyRequest) Validate() error {
	if r.Token == "" {
		return invalid("token", "is required")
	}
	if len(r.Token) > MaxTokenTextLen {
		return invalid("token", "must be at most %d bytes (got %d)", MaxTokenTextLen, len(r.Token))
	}
	return nil
}

// VerifyReply is the answer of notify.verify. UID, Email and ExpiresAt
// are set for every status but invalid.
type VerifyReply struct {
	Status    string    `json:"status"`
	UID       string    `json:"uid,omitempty"`
	Email     string    `json:"email,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Verify asks the notifier whether a confirmation token is good, and uses
// it up if it is.
func (c *Client) Verify(ctx context.Context, token string) (VerifyReply, error) {
	var reply VerifyReply
	req := VerifyRequest{Token: token}
	if err := req.Validate(); err != nil {
		return reply, err
	}
	err := c.request(ctx, c.subj.NotifyVerify(), req, &reply)
	return reply, err
}

// RequestConfirmation publishes a confirmation request for uid to the
// NOTIFY stream and waits for the stream's acknowledgement. The request's
// id is the Nats-Msg-Id, so publishing it again within the stream's
// duplicate window stores it once; the notifier sends one email per id
// beyond that window too.
func RequestConfirmation(ctx context.Context, js jetstream.JetStream, subj Subjects, uid string, req ConfirmRequest) (*jetstream.PubAck, error) {
	if js == nil {
		return nil, errors.New("events: request confirmation: nil JetStream")
	}
	if err := subj.ValidateUID("uid", uid); err != nil {
		return nil, err
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("events: encode confirmation request: %w", err)
	}
	msg := nats.NewMsg(subj.NotifyConfirm(uid))
	msg.Data = body
	msg.Header.Set(nats.MsgIdHdr, req.ID)
	ack, err := js.PublishMsg(ctx, msg)
	if err != nil {
		return nil, publishError(msg.Subject, err)
	}
	return ack, nil
}

// Validate checks a usage notice as the notifier receives it. Whether the
// metric is one the meter knows is the notifier's to say.
func (n UsageNotice) Validate() error {
	if err := ValidateID("id", n.ID); err != nil {
		return err
	}
	if err := ValidateUID("uid", n.UID); err != nil {
		return err
	}
	if err := ValidateToken("metric", n.Metric); err != nil {
		return err
	}
	if math.IsNaN(n.Threshold) || n.Threshold <= 0 || n.Threshold > 1000 {
		return invalid("threshold", "must be a percentage above 0 and at most 1000 (got %s)", numberText(n.Threshold))
	}
	// used and limit are what the meter keeps: the exact sums it holds
	// may have more significant digits than a number it takes, and
	// arrive as the nearest float64, so only the range applies.
	if err := checkKept("used", n.Used); err != nil {
		return err
	}
	if err := checkKept("limit", n.Limit); err != nil {
		return err
	}
	if err := ValidateToken("period", n.Period); err != nil {
		return err
	}
	return nil
}

func (UsageNotice) numberRange(field string) (Range, bool) {
	switch field {
	case "used", "limit":
		return AmountRange, true
	case "threshold":
		return thresholdRange, true
	}
	return Range{}, false
}
