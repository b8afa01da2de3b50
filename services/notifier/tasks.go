package notifier

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/services/notifier/internal/mail"
	"github.com/allot/allot/services/notifier/internal/templates"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Task types.
const (
	TypeConfirmEmail    = "notify:confirm"
	TypeUsageEmail      = "notify:usage"
	TypeRegistryRefresh = "registry:refresh"
)

// usageTemplate renders usage notices.
const usageTemplate = "usage"

// Why a task was dead-lettered (archived without further retries): the
// reason label of allot_notifier_dead_total.
const (
	reasonBadInput        = "bad_input"        // undecodable, missing or invalid field
	reasonUnknownTemplate = "unknown_template" // no template of that name
	reasonUnknownMetric   = "unknown_metric"   // a notice for a metric that is not a grant
	reasonOverLimit       = "over_limit"       // the email grant is exhausted
	reasonChargeRefused   = "charge_refused"   // the meter refused the charge otherwise
	reasonRenderFailed    = "render_failed"    // the template failed to render
	reasonSMTPRefused     = "smtp_refused"     // a permanent (5xx) refusal
	reasonRetriesOut      = "retries_exhausted"
)

// Notice is the payload of an email task: a message of the NOTIFY stream
// as the consumer received it. The handler judges the body, so a bad one
// is dead-lettered with its reason like any other failure.
type Notice struct {
	Subject   string    `json:"subject"`
	Body      []byte    `json:"body"`
	Published time.Time `json:"published"` // when the stream stored it
	Enqueued  time.Time `json:"enqueued"`  // when the consumer made the task
}

// DecodeNotice decodes an email task's payload strictly.
func DecodeNotice(payload []byte) (Notice, error) {
	var n Notice
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&n); err != nil {
		return Notice{}, fmt.Errorf("notifier: task payload: %w", err)
	}
	if dec.More() {
		return Notice{}, errors.New("notifier: task payload: more after the JSON object")
	}
	if n.Subject == "" {
		return Notice{}, errors.New("notifier: task payload: no subject")
	}
	return n, nil
}

// noticeTask builds an email task with its id and options.
func noticeTask(typ, queue string, n Notice, id string, maxRetry int, retention time.Duration) (*asynq.Task, error) {
	payload, err := json.Marshal(n)
	if err != nil {
		return nil, fmt.Errorf("notifier: encode task: %w", err)
	}
	return asynq.NewTask(typ, payload, asynq.TaskID(id), asynq.Queue(queue), asynq.MaxRetry(maxRetry), asynq.Retention(retention)), nil
}

// bodyID returns the "id" of a JSON body when it is a valid id.
func bodyID(body []byte) (string, bool) {
	var v struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(body, &v) != nil || events.ValidateID("id", v.ID) != nil {
		return "", false
	}
	return v.ID, true
}

// hashID shortens a task id to 32 hex characters for keys, Message-IDs
// and authorize ids.
func hashID(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}

// taskIDOf returns the id of the running task.
func taskIDOf(ctx context.Context) string {
	id, _ := asynq.GetTaskID(ctx)
	return id
}

// dead ends a task for good: asynq archives it with err's text as its
// reason, and it is counted.
func (n *Notifier) dead(ctx context.Context, typ, reason string, err error) error {
	n.metrics.dead.WithLabelValues(typ, reason).Inc()
	n.metrics.tasks.WithLabelValues(typ, "dead").Inc()
	n.log.Warn("task dead-lettered", "type", typ, "task", taskIDOf(ctx), "reason", reason, "err", err)
	return fmt.Errorf("%s: %w (%w)", reason, err, asynq.SkipRetry)
}

// email is one email a task sends.
type email struct {
	typ       string
	uid       string
	to        string
	toName    string
	template  string
	data      func() (any, error) // built just before rendering (a token)
	published time.Time
	enqueued  time.Time
}

// The values of a task's sent mark ({uid}:sent:<task>): claimed is
// written just before the line that ends the email's data, sent once the
// server took it. A claimed mark that an attempt left behind is an email
// of unknown outcome (notifier.unknown_outcome).
const (
	markClaimed = "claimed"
	markSent    = "1"
)

// deliver sends e once: it skips an email already sent, renders it,
// charges it, sends it and marks it sent. The mark is claimed right
// before the server can take the email and set once it did, so an
// attempt that dies in between leaves the claim: the next run knows the
// outcome is unknown and does what notifier.unknown_outcome says, rather
// than send blindly again.
func (n *Notifier) deliver(ctx context.Context, e email) error {
	id := hashID(taskIDOf(ctx))
	sentKey := n.keys.SentEmail(e.uid, id)
	mark, err := n.rdb.Get(ctx, sentKey).Result()
	switch {
	case errors.Is(err, redis.Nil):
	case err != nil:
		return n.transient(e.typ, "redis", fmt.Errorf("notifier: read sent mark: %w", err))
	case mark == markClaimed && n.cfg.Notifier.UnknownOutcome == UnknownOutcomeResend:
		n.metrics.unknown.WithLabelValues(e.typ, "resent").Inc()
		n.log.Warn("email of unknown outcome: an earlier attempt ended before the server answered; sending it again with the same Message-ID (notifier.unknown_outcome resend)",
			"type", e.typ, "uid", e.uid, "task", taskIDOf(ctx))
	case mark == markClaimed:
		n.metrics.unknown.WithLabelValues(e.typ, "skipped").Inc()
		n.metrics.tasks.WithLabelValues(e.typ, "unknown").Inc()
		n.log.Warn("email of unknown outcome: an earlier attempt ended before the server answered; counting it as sent (notifier.unknown_outcome skip)",
			"type", e.typ, "uid", e.uid, "task", taskIDOf(ctx))
		return nil
	default:
		n.metrics.tasks.WithLabelValues(e.typ, "duplicate").Inc()
		n.log.Info("email already sent; not sending again", "type", e.typ, "uid", e.uid, "task", taskIDOf(ctx))
		return nil
	}
	data, err := e.data()
	if err != nil {
		return n.transient(e.typ, "token", err)
	}
	r, err := n.tmpl.Render(e.template, data)
	switch {
	case errors.Is(err, templates.ErrUnknown):
		return n.dead(ctx, e.typ, reasonUnknownTemplate, err)
	case err != nil:
		n.metrics.renderFailures.WithLabelValues(e.template).Inc()
		return n.dead(ctx, e.typ, reasonRenderFailed, err)
	}
	if err := n.charge(ctx, e, id); err != nil {
		return err
	}
	msg := mail.Message{To: e.to, ToName: e.toName, Subject: r.Subject, Text: r.Text, HTML: r.HTML,
		MessageID: id + "@" + strings.ReplaceAll(n.cfg.Notifier.Product, " ", "-") + ".allot",
		Headers:   map[string]string{"X-Allot-Task": taskIDOf(ctx)}}
	retention := n.cfg.Notifier.Retention.Milliseconds()
	claimed, claimFailed := false, false
	start := n.now()
	err = n.sender.SendWith(ctx, msg, mail.Steps{
		BeforeEnd: func() error {
			if err := n.markSent.Run(ctx, n.rdb, []string{sentKey}, retention, markClaimed).Err(); err != nil {
				claimFailed = true
				return fmt.Errorf("notifier: claim sent mark: %w", err)
			}
			claimed = true
			return nil
		},
		// Until the mark says sent, a rerun cannot tell this email from
		// one that died unanswered: keep at it while Redis is away.
		Accepted: func() {
			n.settle(ctx, "mark sent", e, func(ctx context.Context) error {
				return n.markSent.Run(ctx, n.rdb, []string{sentKey}, retention, markSent).Err()
			})
		},
	})
	n.metrics.smtpSeconds.Observe(n.now().Sub(start).Seconds())
	if err != nil && claimed && !errors.Is(err, mail.ErrOutcomeUnknown) {
		// The server answered no: the email is not out, and the claim
		// must not make a rerun think it might be.
		n.settle(ctx, "drop claim", e, func(ctx context.Context) error {
			return n.rdb.Del(ctx, sentKey).Err()
		})
	}
	switch {
	case errors.Is(err, mail.ErrInvalid):
		return n.dead(ctx, e.typ, reasonBadInput, err)
	case mail.IsPermanent(err):
		n.metrics.smtpErrors.WithLabelValues("permanent").Inc()
		return n.dead(ctx, e.typ, reasonSMTPRefused, err)
	case claimFailed:
		return n.transient(e.typ, "redis", err)
	case err != nil:
		n.metrics.smtpErrors.WithLabelValues("transient").Inc()
		return n.transient(e.typ, "smtp", err)
	}
	now := n.now()
	n.metrics.tasks.WithLabelValues(e.typ, "sent").Inc()
	n.metrics.sent.WithLabelValues(e.typ).Inc()
	if !e.enqueued.IsZero() {
		n.metrics.handled.WithLabelValues(e.typ).Observe(now.Sub(e.enqueued).Seconds())
	}
	if !e.published.IsZero() {
		n.metrics.endToEnd.WithLabelValues(e.typ).Observe(now.Sub(e.published).Seconds())
	}
	n.log.Info("email sent", "type", e.typ, "uid", e.uid, "template", e.template, "task", taskIDOf(ctx))
	return nil
}

// settle runs write until it succeeds or ctx ends (the task's deadline,
// or shutdown), backing off from 50ms to 2s: for the sent mark's writes
// that must not be lost to a short Redis outage. Giving up is logged: a
// rerun then finds the mark as it was.
func (n *Notifier) settle(ctx context.Context, what string, e email, write func(context.Context) error) {
	delay := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := write(ctx)
		if err == nil {
			if attempt > 1 {
				n.log.Info("sent mark written after Redis came back", "step", what, "type", e.typ, "uid", e.uid, "task", taskIDOf(ctx), "attempts", attempt)
			}
			return
		}
		if attempt == 1 {
			n.log.Warn("cannot write the sent mark; retrying until Redis answers", "step", what, "type", e.typ, "uid", e.uid, "task", taskIDOf(ctx), "err", err)
		}
		select {
		case <-ctx.Done():
			n.log.Error("gave up writing the sent mark: a rerun will find the email's outcome unknown", "step", what, "type", e.typ, "uid", e.uid, "task", taskIDOf(ctx), "err", err)
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// markSentScript sets a task's sent mark; mark_sent.lua says how.
//
//go:embed mark_sent.lua
var markSentScript string

// transient is a failure asynq retries with backoff.
func (n *Notifier) transient(typ, kind string, err error) error {
	n.metrics.tasks.WithLabelValues(typ, "retry").Inc()
	n.metrics.transient.WithLabelValues(typ, kind).Inc()
	return err
}

// charge records one email against uid's charge metric through the
// meter's authorize endpoint, idempotent on the task: a retried task is
// charged once.
func (n *Notifier) charge(ctx context.Context, e email, id string) error {
	metric := n.cfg.Notifier.ChargeMetric
	if metric == "" {
		return nil
	}
	reply, err := n.client.Authorize(ctx, e.uid, events.AuthorizeRequest{ID: "notify-" + id, Metric: metric, Amount: 1})
	var serr *events.ServiceError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, events.ErrOverLimit):
		n.metrics.chargeRefused.Inc()
		until := "the end of its period"
		if !reply.ResetsAt.IsZero() {
			until = reply.ResetsAt.UTC().Format(time.RFC3339)
		}
		return n.dead(ctx, e.typ, reasonOverLimit, fmt.Errorf("%s of %s is exhausted until %s", metric, e.uid, until))
	case errors.As(err, &serr) && serr.Status < 500:
		return n.dead(ctx, e.typ, reasonChargeRefused, fmt.Errorf("charging %s: %w", metric, err))
	default:
		return n.transient(e.typ, "meter", fmt.Errorf("charging %s: %w", metric, err))
	}
}

// taskFailed is asynq's error handler: it counts a task that used its
// last retry.
func (n *Notifier) taskFailed(ctx context.Context, t *asynq.Task, err error) {
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	if errors.Is(err, asynq.SkipRetry) || retried < maxRetry {
		return
	}
	n.metrics.dead.WithLabelValues(t.Type(), reasonRetriesOut).Inc()
	n.metrics.tasks.WithLabelValues(t.Type(), "dead").Inc()
	n.log.Error("task archived after its last retry", "type", t.Type(), "task", taskIDOf(ctx), "retries", retried, "err", err)
}

// retryDelay is exponential backoff from base, doubling per retry, capped
// at ceiling, with up to 20% jitter either way.
func retryDelay(base, ceiling time.Duration) asynq.RetryDelayFunc {
	return func(n int, _ error, _ *asynq.Task) time.Duration {
		d := ceiling
		if n < 40 {
			d = min(base<<n, ceiling)
		}
		if d <= 0 { // overflow
			d = ceiling
		}
		jitter := 0.8 + 0.4*rand.Float64()
		return time.Duration(float64(d) * jitter)
	}
}

// asynqLogger sends asynq's logs to slog.
type asynqLogger struct{ log *slog.Logger }

func (l asynqLogger) Debug(args ...any) { l.log.Debug(fmt.Sprint(args...)) }
func (l asynqLogger) Info(args ...any)  { l.log.Info(fmt.Sprint(args...)) }
func (l asynqLogger) Warn(args ...any) {
	msg := fmt.Sprint(args...)
	if strings.HasPrefix(msg, "Retry exhausted for task") {
		// Every dead-lettered task; the notifier has logged why.
		l.log.Debug(msg)
		return
	}
	l.log.Warn(msg)
}
func (l asynqLogger) Error(args ...any) {
	msg := fmt.Sprint(args...)
	if strings.Contains(msg, "redis connection is shared") {
		// A Scheduler's Shutdown tries to close the Redis client it was
		// given, which its owner closes.
		l.log.Debug(msg)
		return
	}
	l.log.Error(msg)
}

// Fatal is logged as an error: a library must not exit the process.
func (l asynqLogger) Fatal(args ...any) { l.log.Error(fmt.Sprint(args...)) }
