package notifier

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/services/notifier/internal/templates"
	"github.com/hibiken/asynq"
)

// NewConfirmTask makes the task that sends the confirmation email of a
// notify.confirm.<uid> message. id is the task's id: the same request
// makes the same id, so it is enqueued once.
func (n *Notifier) NewConfirmTask(notice Notice, id string) (*asynq.Task, error) {
	c := n.cfg.Notifier
	return noticeTask(TypeConfirmEmail, c.ConfirmQueue, notice, id, c.MaxRetry, c.Retention)
}

// HandleConfirmTask sends a confirmation email with a fresh token.
func (n *Notifier) HandleConfirmTask(ctx context.Context, t *asynq.Task) error {
	notice, uid, req, err := n.decodeConfirm(t.Payload())
	if err != nil {
		return n.dead(ctx, TypeConfirmEmail, reasonBadInput, err)
	}
	return n.deliver(ctx, email{
		typ:       TypeConfirmEmail,
		uid:       uid,
		to:        req.Email,
		toName:    req.Name,
		template:  req.TemplateOrDefault(),
		published: notice.Published,
		enqueued:  notice.Enqueued,
		data: func() (any, error) {
			expires := n.now().Add(n.cfg.Notifier.TokenTTL)
			tok, claims, err := n.signer.Sign(uid, req.Email, expires)
			if err != nil {
				return nil, err
			}
			return templates.ConfirmData{
				UID: uid, Name: req.Name, Email: req.Email, Token: tok,
				Link: confirmLink(n.cfg.Notifier.ConfirmURL, tok), ExpiresAt: claims.Expires,
				Product: n.cfg.Notifier.Product,
			}, nil
		},
	})
}

// decodeConfirm decodes and checks a confirmation task's payload.
func (n *Notifier) decodeConfirm(payload []byte) (Notice, string, events.ConfirmRequest, error) {
	var req events.ConfirmRequest
	notice, err := DecodeNotice(payload)
	if err != nil {
		return notice, "", req, err
	}
	uid, err := n.cfg.Subjects.ParseUID(notice.Subject, n.cfg.Subjects.Notify+".confirm")
	if err != nil {
		return notice, "", req, err
	}
	if err := events.DecodeRequest(notice.Body, &req); err != nil {
		return notice, uid, req, err
	}
	if !n.tmpl.Has(req.TemplateOrDefault()) {
		return notice, uid, req, fmt.Errorf("template: %q is not a template (have %v)", req.TemplateOrDefault(), n.tmpl.Names())
	}
	return notice, uid, req, nil
}

// confirmLink adds the token to the confirmation page's URL.
func confirmLink(page, tok string) string {
	u, err := url.Parse(page)
	if err != nil { // checked by the config's validation
		return page + "?token=" + url.QueryEscape(tok)
	}
	q := u.Query()
	q.Set("token", tok)
	u.RawQuery = q.Encode()
	return u.String()
}

// tokenExpiry is when a used-token mark may go: after the token itself
// has expired, with a margin for clocks.
func tokenExpiry(expires, now time.Time) time.Duration {
	return max(expires.Sub(now), 0) + time.Hour
}
