package meter

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/usage"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the meter's own series.
type metrics struct {
	events       *prometheus.CounterVec
	redelivered  prometheus.Counter
	dead         *prometheus.CounterVec
	applySeconds prometheus.Histogram
	redisErrors  prometheus.Counter
	notices      prometheus.Counter
	requests     *prometheus.CounterVec
	authorized   *prometheus.CounterVec
	requestBatch *prometheus.HistogramVec
	rebuilding   prometheus.Gauge
	rebuilds     *prometheus.CounterVec
	rebuildDone  prometheus.Gauge
	rollbacks    prometheus.Counter
	pinned       prometheus.Gauge
	// partitionApplied counts applied events per partition
	// (streams.partitions); nil when not partitioned.
	partitionApplied []prometheus.Counter
	partitionVec     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, m *Meter) (*metrics, error) {
	mt := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_meter_events_total",
			Help: "Usage events handled, by result: applied, duplicate (already counted) or dead (refused, in the dead-letter stream).",
		}, []string{"result"}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "allot_meter_redeliveries_total",
			Help: "Usage events handed to this meter that the server had delivered before: after a nak (a chunk still failing with Redis up, a rebuild), an ack wait run out (a chunk slower than it, a replica that stopped holding them) or deliveries lost on their way to the chunks.",
		}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_meter_dead_letters_total",
			Help: "Usage events refused, by reason: invalid, subject, oversized, unknown_metric, value, label, range (a sum past 1e15), apply.",
		}, []string{"reason"}),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "allot_meter_apply_seconds",
			Help:    "Time to apply one batch to Redis.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 15),
		}),
		redisErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "allot_meter_redis_errors_total",
			Help: "Attempts to apply a batch that met a Redis failure (the batch is held and applied again once Redis answers).",
		}),
		notices: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "allot_meter_notices_total",
			Help: "Threshold notices published.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_meter_requests_total",
			Help: "Requests answered, by endpoint and result (ok or an error code).",
		}, []string{"endpoint", "result"}),
		authorized: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_meter_authorize_decisions_total",
			Help: "Authorize decisions, by decision: allowed or refused.",
		}, []string{"decision"}),
		requestBatch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "allot_meter_request_batch_size",
			Help:    "Credit or authorize requests answered per Redis round trip, by endpoint.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}, []string{"endpoint"}),
		rebuilding: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "allot_meter_rebuilding",
			Help: "1 while Redis lacks the meter's state (no epoch marker): credit and authorize answer 503 until a rebuild from the usage stream puts it back.",
		}),
		rebuilds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_meter_rebuilds_total",
			Help: "Rebuilds of the lost state from the usage stream this replica ran, by result: done, or failed (tried again after meter.loss_check).",
		}, []string{"result"}),
		rebuildDone: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "allot_meter_rebuild_progress_ratio",
			Help: "How far this replica's last rebuild came, 0 to 1: the share of the usage stream's events it replayed (1: done).",
		}),
		rollbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "allot_meter_state_rollbacks_total",
			Help: "Times this replica found Redis holding an older state than the meter had applied (the epoch marker below the usage consumer's ack floor: a restore from an older snapshot, a failover to a lagging replica) and dropped the marker, so the state is rebuilt.",
		}),
		pinned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "allot_meter_consumer_pinned",
			Help: "How many usage consumers' pins this replica holds (meter.ordered): 1 while it applies the events of an unpartitioned stream and the others stand by; with streams.partitions, the partitions it applies. Known from the events it is handed, so 0 until the first; read every 2s.",
		}),
	}
	if n := m.cfg.Streams.Partitions; n > 0 {
		vec := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allot_meter_partition_applied_total",
			Help: "Usage events this replica applied, by partition of the usage stream (streams.partitions): with meter.ordered one replica at a time applies each.",
		}, []string{"partition"})
		for p := range n {
			mt.partitionApplied = append(mt.partitionApplied, vec.WithLabelValues(strconv.Itoa(p)))
		}
		mt.partitionVec = vec
	}
	// Both results exist from the start, so the first failure is an
	// increase, not a new series.
	for _, r := range []string{"done", "failed"} {
		mt.rebuilds.WithLabelValues(r)
	}
	if reg == nil {
		return mt, nil
	}
	for _, c := range []prometheus.Collector{mt.events, mt.redelivered, mt.dead, mt.applySeconds,
		mt.redisErrors, mt.notices, mt.requests, mt.authorized, mt.requestBatch, mt.rebuilding, mt.rebuilds, mt.rebuildDone, mt.rollbacks, mt.pinned, newUsageCollector(m)} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	if mt.partitionVec != nil {
		if err := reg.Register(mt.partitionVec); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return mt, nil
}

// usageCollector exports usage state read from Redis at each scrape:
// global and per-instance counters and gauges always; per-uid counters,
// gauges and grants only with meter.export_per_uid, up to
// meter.export_max_uids uids, since their number grows with users.
type usageCollector struct {
	m       *Meter
	descs   map[string]*prometheus.Desc // metric -> its series
	used    *prometheus.Desc
	limit   *prometheus.Desc
	failure *prometheus.Desc
}

func newUsageCollector(m *Meter) *usageCollector {
	c := &usageCollector{
		m:     m,
		descs: map[string]*prometheus.Desc{},
		used: prometheus.NewDesc("allot_grant_used", "A uid's use of a grant in the current period (meter.export_per_uid).",
			[]string{"uid", "metric"}, nil),
		limit: prometheus.NewDesc("allot_grant_limit", "A uid's limit of a grant (meter.export_per_uid).",
			[]string{"uid", "metric"}, nil),
		failure: prometheus.NewDesc("allot_meter_usage_export_errors", "1 when the last scrape could not read usage from Redis.",
			nil, nil),
	}
	for _, name := range m.cfg.Usage.MetricNames() {
		mc, _ := m.cfg.Usage.Metric(name)
		if mc.Style == usage.StyleGrant {
			continue
		}
		labels := append([]string{}, mc.Labels...)
		sort.Strings(labels)
		switch mc.Scope {
		case usage.ScopeInstance:
			labels = append(labels, "source")
		case usage.ScopeUser:
			labels = append(labels, "uid")
		}
		help := mc.Help
		if help == "" {
			help = "allot usage metric " + name
		}
		c.descs[name] = prometheus.NewDesc("allot_usage_"+name, help, labels, nil)
	}
	return c
}

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	ch <- c.used
	ch <- c.limit
	ch <- c.failure
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := c.collect(ctx, ch)
	failed := 0.0
	if err != nil {
		failed = 1
		c.m.log.Warn("exporting usage from redis", "err", err)
	}
	ch <- prometheus.MustNewConstMetric(c.failure, prometheus.GaugeValue, failed)
}

func (c *usageCollector) collect(ctx context.Context, ch chan<- prometheus.Metric) error {
	st := c.m.store
	k := st.Keys()
	var errs []error
	var instances []string
	if c.hasScope(usage.ScopeInstance) {
		var err error
		if instances, err = st.Members(ctx, k.Instances()); err != nil {
			return err
		}
	}
	var uids []string
	if c.m.cfg.Meter.ExportPerUID {
		var err error
		if uids, err = st.ScanUIDs(ctx, c.m.cfg.Meter.ExportMaxUIDs); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range c.m.cfg.Usage.MetricNames() {
		desc, ok := c.descs[name]
		if !ok {
			continue
		}
		mc, _ := c.m.cfg.Usage.Metric(name)
		vt := prometheus.CounterValue
		if mc.Style == usage.StyleGauge {
			vt = prometheus.GaugeValue
		}
		var owners []string
		switch mc.Scope {
		case usage.ScopeGlobal:
			owners = []string{keys.GlobalTag}
		case usage.ScopeInstance:
			for _, src := range instances {
				owners = append(owners, keys.InstanceTag(src))
			}
		case usage.ScopeUser:
			owners = uids
		}
		for _, tag := range owners {
			vals, err := st.Values(ctx, k.Values(tag, name))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for field, v := range vals {
				labels := keys.ParseLabelSet(field)
				lv := make([]string, 0, len(mc.Labels)+1)
				sorted := append([]string{}, mc.Labels...)
				sort.Strings(sorted)
				for _, l := range sorted {
					lv = append(lv, labels[l])
				}
				switch mc.Scope {
				case usage.ScopeInstance:
					lv = append(lv, tag[len("i."):])
				case usage.ScopeUser:
					lv = append(lv, tag)
				}
				ch <- prometheus.MustNewConstMetric(desc, vt, v, lv...)
			}
		}
	}
	if len(uids) > 0 {
		for _, uid := range uids {
			credits, err := c.m.credit(ctx, uid, "")
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, cr := range credits {
				ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, cr.Used, uid, cr.Metric)
				ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, cr.Limit, uid, cr.Metric)
			}
		}
	}
	return errors.Join(errs...)
}

func (c *usageCollector) hasScope(scope string) bool {
	for _, n := range c.m.cfg.Usage.MetricNames() {
		if mc, _ := c.m.cfg.Usage.Metric(n); mc.Style != usage.StyleGrant && mc.Scope == scope {
			return true
		}
	}
	return false
}
