package notifier

import (
	"context"
	"errors"
	"fmt"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/usage"
	"github.com/allot/allot/services/notifier/internal/templates"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// NewUsageTask makes the task that mails a notify.usage.<uid> notice.
// id is the task's id, derived from the notice's fixed id, so a notice
// published or delivered twice sends one email.
func (n *Notifier) NewUsageTask(notice Notice, id string) (*asynq.Task, error) {
	c := n.cfg.Notifier
	return noticeTask(TypeUsageEmail, c.UsageQueue, notice, id, c.MaxRetry, c.Retention)
}

// HandleUsageTask mails a usage notice to the uid's confirmed address.
func (n *Notifier) HandleUsageTask(ctx context.Context, t *asynq.Task) error {
	notice, un, err := n.decodeUsage(t.Payload())
	if err != nil {
		reason := reasonBadInput
		if errors.Is(err, errUnknownMetric) {
			reason = reasonUnknownMetric
		}
		return n.dead(ctx, TypeUsageEmail, reason, err)
	}
	to, err := n.rdb.Get(ctx, n.keys.ConfirmedAddress(un.UID)).Result()
	switch {
	case errors.Is(err, redis.Nil):
		// Many users never confirm an address: nothing to send, and
		// nothing wrong, so the task ends well and is only counted.
		n.metrics.tasks.WithLabelValues(TypeUsageEmail, "no_address").Inc()
		n.log.Debug("usage notice not mailed: the uid has no confirmed address", "uid", un.UID, "metric", un.Metric, "task", taskIDOf(ctx))
		return nil
	case err != nil:
		return n.transient(TypeUsageEmail, "redis", fmt.Errorf("notifier: read address: %w", err))
	}
	return n.deliver(ctx, email{
		typ:       TypeUsageEmail,
		uid:       un.UID,
		to:        to,
		template:  usageTemplate,
		published: notice.Published,
		enqueued:  notice.Enqueued,
		data: func() (any, error) {
			return templates.UsageData{
				UID: un.UID, Email: to, Metric: un.Metric, Threshold: un.Threshold, Used: un.Used, Limit: un.Limit,
				Period: un.Period, PeriodStart: un.PeriodStart, ResetsAt: un.ResetsAt, Product: n.cfg.Notifier.Product,
			}, nil
		},
	})
}

var errUnknownMetric = errors.New("unknown metric")

// decodeUsage decodes and checks a usage task's payload: the notice must
// be for the uid of its subject and for a grant metric.
func (n *Notifier) decodeUsage(payload []byte) (Notice, events.UsageNotice, error) {
	var un events.UsageNotice
	notice, err := DecodeNotice(payload)
	if err != nil {
		return notice, un, err
	}
	uid, err := n.cfg.Subjects.ParseUID(notice.Subject, n.cfg.Subjects.Notify+".usage")
	if err != nil {
		return notice, un, err
	}
	if err := events.DecodeRequest(notice.Body, &un); err != nil {
		return notice, un, err
	}
	if un.UID != uid {
		return notice, un, fmt.Errorf("uid: the notice is for %q but came on %s", un.UID, notice.Subject)
	}
	if m, ok := n.cfg.Usage.Metrics[un.Metric]; !ok || m.Style != usage.StyleGrant {
		return notice, un, fmt.Errorf("metric: %w %q: not a grant metric of this configuration", errUnknownMetric, un.Metric)
	}
	return notice, un, nil
}
