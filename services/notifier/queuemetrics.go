package notifier

import (
	"fmt"
	"slices"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
)

// queueCollector exports the notifier's asynq queues, read through asynq's
// Inspector at each scrape: what is in each queue by state (gauges) and
// how many tasks it has processed and failed since it was created
// (counters, from asynq's cumulative totals, which survive restarts).
//
// It stands in for asynq's x/metrics collector, whose gauges carry a
// _total suffix (asynq_tasks_enqueued_total, asynq_queue_paused_total), so
// rate() on them lies and promlint refuses them. The names x/metrics got
// right are kept, so its dashboards keep working for those.
type queueCollector struct {
	inspector *asynq.Inspector
	queues    []string

	tasks, size, latency, memory, paused, processed, failed *prometheus.Desc
}

// newQueueCollector exports queues, the notifier's, in name order. Only
// those: deployments sharing a Redis have queues of their own.
func newQueueCollector(inspector *asynq.Inspector, queues map[string]int) *queueCollector {
	names := make([]string, 0, len(queues))
	for q := range queues {
		names = append(names, q)
	}
	slices.Sort(names)
	q := []string{"queue"}
	return &queueCollector{
		inspector: inspector,
		queues:    names,
		tasks: prometheus.NewDesc("asynq_queue_tasks",
			"Tasks in the queue by state (pending, active, scheduled, retry, archived, completed, aggregating).", []string{"queue", "state"}, nil),
		size: prometheus.NewDesc("asynq_queue_size",
			"Tasks in the queue in every state but completed.", q, nil),
		latency: prometheus.NewDesc("asynq_queue_latency_seconds",
			"How long the oldest pending task of the queue has waited.", q, nil),
		memory: prometheus.NewDesc("asynq_queue_memory_usage_approx_bytes",
			"Redis memory the queue and its tasks take, estimated by sampling.", q, nil),
		paused: prometheus.NewDesc("asynq_queue_paused",
			"1 while the queue is paused (its tasks wait), else 0.", q, nil),
		processed: prometheus.NewDesc("asynq_tasks_processed_total",
			"Task runs of the queue, succeeded or failed, since the queue was created.", q, nil),
		failed: prometheus.NewDesc("asynq_tasks_failed_total",
			"Task runs of the queue that failed since the queue was created.", q, nil),
	}
}

// Describe sends the fixed descriptors.
func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.tasks, c.size, c.latency, c.memory, c.paused, c.processed, c.failed} {
		ch <- d
	}
}

// Collect reads every queue's info. A queue asynq has not created yet
// (no task ever went to it) is empty; a queue that cannot be read is
// reported to the scrape as an error, and the others are still exported.
func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	existing, err := c.inspector.Queues()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.size, fmt.Errorf("notifier: list asynq queues: %w", err))
		return
	}
	for _, q := range c.queues {
		info := &asynq.QueueInfo{Queue: q}
		if slices.Contains(existing, q) {
			if info, err = c.inspector.GetQueueInfo(q); err != nil {
				ch <- prometheus.NewInvalidMetric(c.size, fmt.Errorf("notifier: asynq queue %s: %w", q, err))
				continue
			}
		}
		c.collect(ch, info)
	}
}

func (c *queueCollector) collect(ch chan<- prometheus.Metric, info *asynq.QueueInfo) {
	q := info.Queue
	for _, s := range []struct {
		state string
		n     int
	}{
		{"pending", info.Pending}, {"active", info.Active}, {"scheduled", info.Scheduled}, {"retry", info.Retry},
		{"archived", info.Archived}, {"completed", info.Completed}, {"aggregating", info.Aggregating},
	} {
		ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(s.n), q, s.state)
	}
	paused := 0.0
	if info.Paused {
		paused = 1
	}
	ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(info.Size), q)
	ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, info.Latency.Seconds(), q)
	ch <- prometheus.MustNewConstMetric(c.memory, prometheus.GaugeValue, float64(info.MemoryUsage), q)
	ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, paused, q)
	ch <- prometheus.MustNewConstMetric(c.processed, prometheus.CounterValue, float64(info.ProcessedTotal), q)
	ch <- prometheus.MustNewConstMetric(c.failed, prometheus.CounterValue, float64(info.FailedTotal), q)
}
