package notifier

import (
	"fmt"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

type metrics struct {
	notices        *prometheus.CounterVec
	tasks          *prometheus.CounterVec
	dead           *prometheus.CounterVec
	transient      *prometheus.CounterVec
	sent           *prometheus.CounterVec
	smtpErrors     *prometheus.CounterVec
	unknown        *prometheus.CounterVec
	renderFailures *prometheus.CounterVec
	chargeRefused  prometheus.Counter
	handled        *prometheus.HistogramVec
	endToEnd       *prometheus.HistogramVec
	smtpSeconds    prometheus.Histogram
	requests       *prometheus.CounterVec
	verified       *prometheus.CounterVec
	leader         prometheus.Gauge
	scheduled      prometheus.Counter
	reaped         prometheus.Counter
}

// latencyBuckets span a fast loopback send to a slow remote one.
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// newMetrics registers the notifier's metrics and those of its asynq
// queues (read from rdb) on reg.
func newMetrics(reg prometheus.Registerer, rdb redis.UniversalClient, queues map[string]int) (*metrics, error) {
	m := &metrics{
		notices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_notifier_notices_total", Help: "NOTIFY messages by kind (confirm, usage) and result (enqueued, duplicate, retried, dropped; kind any: given_up_dead_lettered, given_up_failed after max_deliver).",
		}, []string{"kind", "result"}),
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_notifier_tasks_total", Help: "Task runs by type and result (sent, duplicate, retry, dead, done).",
		}, []string{"type", "result"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_notifier_dead_total", Help: "Tasks archived without further retries (asynq's dead letter), by type and reason.",
		}, []string{"type", "reason"}),
		transient: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_notifier_transient_errors_total", Help: "Task failures that are retried, by type and what failed (smtp, meter, redis, token).",
		}, []string{"type", "kind"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_notifier_emails_sent_total", Help: "Emails the SMTP server accepted, by task type.",
		}, []string{"type"}),
		smtpErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_notifier_smtp_errors_total", Help: "SMTP failures by kind: transient (down, 4xx) or permanent (5xx).",
		}, []string{"kind"}),
		unknown: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_notifier_unknown_outcome_total", Help: "Emails an earlier attempt left between the end of their data and the server's answer, by type and what was done (skipped or resent, notifier.unknown_outcome).",
		}, []string{"type", "action"}),
		renderFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_notifier_render_failures_total", Help: "Templates that failed to render, by template.",
		}, []string{"template"}),
		chargeRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "allot_notifier_charge_refused_total", Help: "Emails not sent because the sender's email grant is exhausted.",
		}),
		handled: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "allot_notifier_enqueue_to_sent_seconds", Help: "From the task's enqueue to the SMTP server's acceptance.", Buckets: latencyBuckets,
		}, []string{"type"}),
		endToEnd: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "allot_notifier_publish_to_sent_seconds", Help: "From the notice's arrival in the NOTIFY stream to the SMTP server's acceptance.", Buckets: latencyBuckets,
		}, []string{"type"}),
		smtpSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "allot_notifier_smtp_seconds", Help: "One SMTP conversation.", Buckets: latencyBuckets,
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_notifier_requests_total", Help: "Requests by endpoint and result (ok or an error code).",
		}, []string{"endpoint", "result"}),
		verified: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_notifier_verifications_total", Help: "Token verifications by status (valid, expired, used, invalid).",
		}, []string{"status"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "allot_notifier_scheduler_leader", Help: "1 while this replica holds the scheduler lock.",
		}),
		scheduled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "allot_notifier_refresh_scheduled_total", Help: "Registry refresh tasks this replica enqueued.",
		}),
		reaped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "allot_notifier_refresh_reaped_total", Help: "Registry instances reaped by refresh tasks.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.notices, m.tasks, m.dead, m.transient, m.sent, m.smtpErrors, m.unknown, m.renderFailures,
		m.chargeRefused, m.handled, m.endToEnd, m.smtpSeconds, m.requests, m.verified, m.leader, m.scheduled, m.reaped,
		newQueueCollector(asynq.NewInspectorFromRedisClient(rdb), queues)} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
