package meter

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/usage"
	"github.com/allot/allot/services/meter/internal/store"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// requestContext bounds one request's Redis work.
func (m *Meter) requestContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), m.cfg.NATS.RequestTimeout)
}

// batchContext bounds a batch's Redis work by its first request's
// arrival: three quarters of nats.request_timeout after it, so a request
// that queued behind a batch stuck on Redis still gets its 503 before a
// client with the same timeout gives up.
func (m *Meter) batchContext(reqs []micro.Request) (context.Context, context.CancelFunc) {
	return service.BatchContext(reqs, m.cfg.NATS.RequestTimeout*3/4)
}

// uidOf returns the <uid> token of a request subject <meter>.<endpoint>.<uid>.
func (m *Meter) uidOf(req micro.Request, endpoint string) (string, error) {
	return m.subj.ParseUID(req.Subject(), m.subj.Meter+"."+endpoint)
}

// reply answers req, counting the outcome: Redis trouble is a 503, a bad
// request a 400 naming the field.
func (m *Meter) reply(req micro.Request, endpoint string, v any, err error) {
	m.replier.Reply(req, endpoint, v, err)
}

// grantMetric returns the declaration of a grant metric, or a 404 for an
// unknown metric and a 400 for one that is not a grant.
func (m *Meter) grantMetric(name string) (usage.MetricConfig, float64, error) {
	mc, ok := m.cfg.Usage.Metric(name)
	if !ok {
		return mc, 0, events.NewServiceError(events.CodeNotFound, "metric", "unknown metric %q", name)
	}
	if mc.Style != usage.StyleGrant {
		return mc, 0, events.NewServiceError(events.CodeBadRequest, "metric", "metric %q is a %s, not a grant", name, mc.Style)
	}
	limit, _ := m.cfg.Usage.DefaultGrant(name)
	return mc, limit, nil
}

// creditRequest is one credit request of a batch, once parsed.
type creditRequest struct {
	req    micro.Request
	uid    string
	metric string // "" : all grants
}

// handleCredits answers the credit requests that arrived together with
// one Redis round trip.
func (m *Meter) handleCredits(reqs []micro.Request) {
	if m.lost.Load() {
		for _, req := range reqs {
			m.reply(req, "credit", nil, m.rebuildingError())
		}
		return
	}
	valid := make([]creditRequest, 0, len(reqs))
	queries := make([]store.CreditQuery, 0, len(reqs))
	for _, req := range reqs {
		var body events.CreditRequest
		uid, err := m.uidOf(req, "credit")
		if err == nil {
			err = events.DecodeRequest(req.Data(), &body)
		}
		var names []string
		if err == nil {
			names, err = m.creditNames(body.Metric)
		}
		if err != nil {
			m.reply(req, "credit", nil, err)
			continue
		}
		valid = append(valid, creditRequest{req: req, uid: uid, metric: body.Metric})
		queries = append(queries, store.CreditQuery{UID: uid, Metrics: names})
	}
	if len(valid) == 0 {
		return
	}
	ctx, cancel := m.batchContext(reqs)
	defer cancel()
	reads, errs := m.store.ReadCredits(ctx, queries)
	for i, r := range valid {
		switch credits := m.creditsOf(r.uid, queries[i].Metrics, reads[i]); {
		case errs[i] != nil:
			m.reply(r.req, "credit", nil, errs[i])
		case r.metric != "":
			m.reply(r.req, "credit", credits[0], nil)
		default:
			m.reply(r.req, "credit", events.CreditsReply{UID: r.uid, Credits: credits}, nil)
		}
	}
}

// credit computes uid's credit for one grant, or for all when metric is
// empty, from one Redis round trip and Redis's clock.
func (m *Meter) credit(ctx context.Context, uid, metric string) ([]events.Credit, error) {
	names, err := m.creditNames(metric)
	if err != nil {
		return nil, err
	}
	read, err := m.store.ReadCredit(ctx, uid, names)
	if err != nil {
		return nil, err
	}
	return m.creditsOf(uid, names, read), nil
}

// creditNames returns the grants a credit request reads: metric, or every
// grant when it is empty; an unknown metric is a 404, one that is not a
// grant a 400.
func (m *Meter) creditNames(metric string) ([]string, error) {
	if metric != "" {
		if _, _, err := m.grantMetric(metric); err != nil {
			return nil, err
		}
		return []string{metric}, nil
	}
	var names []string
	for _, n := range m.cfg.Usage.MetricNames() {
		if mc, _ := m.cfg.Usage.Metric(n); mc.Style == usage.StyleGrant {
			names = append(names, n)
		}
	}
	return names, nil
}

// creditsOf turns what ReadCredit read into the credit of each name.
func (m *Meter) creditsOf(uid string, names []string, read store.CreditRead) []events.Credit {
	out := make([]events.Credit, 0, len(names))
	for _, n := range names {
		mc, _ := m.cfg.Usage.Metric(n)
		limit, _ := m.cfg.Usage.DefaultGrant(n)
		if o, ok := read.Overrides[n]; ok {
			limit = o
		}
		raw := read.Grants[n]
		c := events.Credit{UID: uid, Metric: n, Limit: limit, Period: mc.Period}
		if raw.Started && (raw.End.IsZero() || read.Now.Before(raw.End)) {
			c.Used, c.ResetsAt = raw.Used, raw.End
		} else if mc.Align == usage.AlignCalendar {
			_, c.ResetsAt = store.Bounds(mc.Period, mc.Align, read.Now)
		}
		c.Remaining = math.Max(0, limit-c.Used)
		c.Overage = math.Max(0, c.Used-limit)
		c.CountedSince = m.countedSince(mc, raw, read.Now)
		out = append(out, c)
	}
	return out
}

// countedSince is the marker's held_since (noteHeldSince) when usage the
// rebuild could not restore (before that time) may count in the grant's
// current period; zero otherwise, and when the state is whole. A
// calendar period counts it when it began before; a rolling one when it
// began (or, none running, now is) less than a period after it, since a
// lost event up to a period earlier would have opened it; an indefinite
// one always.
func (m *Meter) countedSince(mc usage.MetricConfig, raw store.RawGrant, now time.Time) time.Time {
	ms := m.heldSince.Load()
	if ms == 0 {
		return time.Time{}
	}
	held := time.UnixMilli(ms).UTC()
	running := raw.Started && (raw.End.IsZero() || now.Before(raw.End))
	var earliest time.Time // zero: the beginning of time
	switch {
	case mc.Period == usage.PeriodIndefinite:
	case mc.Align == usage.AlignCalendar && running:
		earliest = raw.Start
	case mc.Align == usage.AlignCalendar:
		earliest, _ = store.Bounds(mc.Period, mc.Align, now)
	default:
		from := now
		if running {
			from = raw.Start
		}
		start, end := store.Bounds(mc.Period, mc.Align, from)
		earliest = from.Add(-end.Sub(start))
	}
	if earliest.Before(held) {
		return held
	}
	return time.Time{}
}

// overLimitBody is the 429 body of authorize: the error and the decision.
type overLimitBody struct {
	Error events.ErrorDetail `json:"error"`
	events.AuthorizeReply
}

// handleAuthorizes decides the authorize requests that arrived together
// with one Redis round trip (each its own atomic script call), then
// publishes the threshold notices they crossed together.
func (m *Meter) handleAuthorizes(reqs []micro.Request) {
	if m.lost.Load() {
		for _, req := range reqs {
			m.reply(req, "authorize", nil, m.rebuildingError())
		}
		return
	}
	valid := make([]micro.Request, 0, len(reqs))
	ops := make([]store.AuthorizeOp, 0, len(reqs))
	for _, req := range reqs {
		var body events.AuthorizeRequest
		uid, err := m.uidOf(req, "authorize")
		if err == nil {
			err = events.DecodeRequest(req.Data(), &body)
		}
		var mc usage.MetricConfig
		var limit float64
		if err == nil {
			mc, limit, err = m.grantMetric(body.Metric)
		}
		if err != nil {
			m.reply(req, "authorize", nil, err)
			continue
		}
		valid = append(valid, req)
		ops = append(ops, store.AuthorizeOp{ID: body.ID, UID: uid, Metric: body.Metric, Config: mc, Limit: limit, Amount: body.Amount})
	}
	if len(valid) == 0 {
		return
	}
	ctx, cancel := m.batchContext(reqs)
	defer cancel()
	ds, errs := m.store.AuthorizeMany(ctx, ops)
	// Each decision carries every notice still pending for its grant, so
	// requests for one grant in one batch repeat each other's: publish
	// each once.
	var notices []noticeBatch
	seen := map[string]bool{}
	for i, d := range ds {
		if errs[i] != nil {
			continue
		}
		var fresh []store.Notice
		for _, n := range d.Notices {
			key := fmt.Sprintf("%s\x00%s\x00%d\x00%g", ops[i].UID, ops[i].Metric, n.Start.UnixMilli(), n.Threshold)
			if !seen[key] {
				seen[key] = true
				fresh = append(fresh, n)
			}
		}
		if len(fresh) > 0 {
			notices = append(notices, noticeBatch{ops[i].UID, ops[i].Metric, ops[i].Config, fresh})
		}
	}
	if len(notices) > 0 {
		// The decisions stand either way; an unpublished notice stays
		// pending in Redis and goes out with the next event or request.
		for i, err := range m.publishNotices(ctx, notices) {
			if err != nil {
				m.log.Warn("threshold notice not published yet", "uid", notices[i].uid, "metric", notices[i].metric, "err", err)
			}
		}
	}
	for i, req := range valid {
		if errs[i] != nil {
			m.reply(req, "authorize", nil, errs[i])
			continue
		}
		m.answerAuthorize(req, ops[i], ds[i])
	}
}

// answerAuthorize answers one decided authorize request: the decision, or
// a 429 carrying it.
func (m *Meter) answerAuthorize(req micro.Request, op store.AuthorizeOp, d store.Decision) {
	decision := events.AuthorizeReply{
		Allowed:   d.Allowed,
		Remaining: math.Max(0, d.Grant.Limit-d.Grant.Used),
		ResetsAt:  d.Grant.End,
	}
	if d.Allowed {
		m.metrics.authorized.WithLabelValues("allowed").Inc()
		m.reply(req, "authorize", decision, nil)
		return
	}
	m.metrics.authorized.WithLabelValues("refused").Inc()
	m.metrics.requests.WithLabelValues("authorize", string(events.CodeOverLimit)).Inc()
	serr := events.NewServiceError(events.CodeOverLimit, "amount", "%s: %s more would pass the limit of %s (used %s)", op.Metric, plain(op.Amount), plain(d.Grant.Limit), plain(d.Grant.Used))
	b, _ := json.Marshal(overLimitBody{Error: events.ErrorDetail{Code: serr.Code, Message: serr.Message, Field: serr.Field}, AuthorizeReply: decision})
	_ = req.Error(serr.StatusText(), serr.Message, b)
}

func (m *Meter) handleGrants(req micro.Request) {
	var body events.GrantsRequest
	uid, err := m.uidOf(req, "grants")
	if err == nil {
		err = events.DecodeRequest(req.Data(), &body)
	}
	if err != nil {
		m.reply(req, "grants", nil, err)
		return
	}
	ctx, cancel := m.requestContext()
	defer cancel()
	var overrides map[string]float64
	if len(body.Set) > 0 || len(body.Unset) > 0 {
		// Every name is checked before anything is written.
		err = m.grants.check(body, func() (map[string]float64, error) { return m.store.Overrides(ctx, uid) })
		if err != nil {
			m.reply(req, "grants", nil, err)
			return
		}
		overrides, err = m.store.SetOverrides(ctx, uid, body.Set, body.Unset)
		if err == nil {
			m.log.Info("grants changed", "uid", uid, "set", body.Set, "unset", body.Unset)
		}
	} else {
		overrides, err = m.store.Overrides(ctx, uid)
	}
	if err != nil {
		m.reply(req, "grants", nil, err)
		return
	}
	effective := make(map[string]float64, len(m.cfg.Usage.Grants)+len(overrides))
	for k, v := range m.cfg.Usage.Grants {
		effective[k] = v
	}
	for k, v := range overrides {
		effective[k] = v
	}
	m.reply(req, "grants", events.GrantsReply{UID: uid, Grants: effective}, nil)
}

// noticeBatch is the threshold notices one event or request produced
// for one (uid, metric).
type noticeBatch struct {
	uid, metric string
	mc          usage.MetricConfig
	notices     []store.Notice
}

// publishNotices publishes every notice of batches to the NOTIFY stream
// at once, waits for the stream's acks, and clears the notices that went
// out from their pending lists in one round trip. It returns, per batch,
// what kept it from going out (nil when it did). Each notice carries a
// fixed id as Nats-Msg-Id, so one published again (a failed clear, a
// redelivery) is a duplicate the stream drops.
func (m *Meter) publishNotices(ctx context.Context, batches []noticeBatch) []error {
	errs := make([]error, len(batches))
	var msgs []*nats.Msg
	var owner []int // the batch of each message
	for i, b := range batches {
		for _, n := range b.notices {
			notice := events.UsageNotice{
				ID:          noticeID(b.uid, b.metric, n),
				UID:         b.uid,
				Metric:      b.metric,
				Threshold:   n.Threshold,
				Used:        n.Used,
				Limit:       n.Limit,
				Period:      b.mc.Period,
				PeriodStart: n.Start,
				ResetsAt:    n.End,
			}
			data, err := json.Marshal(notice)
			if err != nil {
				errs[i] = err
				break
			}
			msg := nats.NewMsg(m.subj.NotifyUsage(b.uid))
			msg.Data = data
			msg.Header.Set(events.MsgIDHeader, notice.ID)
			msgs = append(msgs, msg)
			owner = append(owner, i)
		}
	}
	for j, err := range service.PublishAll(ctx, m.js, msgs) {
		if err != nil && errs[owner[j]] == nil {
			errs[owner[j]] = fmt.Errorf("meter: publish notice %s: %w", msgs[j].Header.Get(events.MsgIDHeader), err)
		}
	}
	var out []store.Confirmation
	for i, b := range batches {
		if errs[i] != nil {
			continue
		}
		out = append(out, store.Confirmation{UID: b.uid, Metric: b.metric, Notices: b.notices})
		for _, n := range b.notices {
			m.metrics.notices.Inc()
			m.log.Info("threshold crossed", "uid", b.uid, "metric", b.metric, "threshold", n.Threshold, "used", n.Used, "limit", n.Limit)
		}
	}
	if err := m.store.ConfirmAll(ctx, out); err != nil {
		// Out, but still pending in Redis: they go out again with the
		// uid's next event or request, as duplicates the stream drops.
		m.log.Warn("notices published but not cleared; they will be published again", "err", err)
	}
	return errs
}

// noticeID is the fixed id of uid's notice n of metric: the stream drops
// it when it is published again, and a rebuild finds it there.
func noticeID(uid, metric string, n store.Notice) string {
	return fmt.Sprintf("%s.%s.%d.%s", uid, metric, n.Start.UnixMilli(), formatNumber(n.Threshold))
}

// plain writes a number as a decimal, without an exponent: every
// number the meter keeps is at most 1e15.
func plain(f float64) string {
	return strconv.FormatFloat(f, 'f', -1, 64)
}

func formatNumber(f float64) string {
	return fmt.Sprint(f)
}
