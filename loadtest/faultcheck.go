package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/usage"
	"github.com/allot/allot/services/notifier"
	"github.com/hibiken/asynq"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// What a scenario waits for, and the check that ends it.

// confirmAddresses gives every uid of the run a confirmed address, so
// the notifier mails its usage notices (to the sink). It writes the
// notifier's key directly, as the confirmation flow (notify.confirm,
// a link, notify.verify) would leave it.
func (f *faultRun) confirmAddresses(ctx context.Context) error {
	t := f.h.t
	pipe := t.rdb.Pipeline()
	for i := range f.o.UIDs {
		uid := t.uid(i)
		pipe.Set(ctx, t.keys.ConfirmedAddress(uid), uid+"@loadtest.invalid", 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("confirm the uids' addresses: %w", err)
	}
	return nil
}

// deadCount reads the dead-letter stream: the distinct USAGE messages
// in it (by their stream sequence), those dead-lettered more than once,
// those without a reason, and the count by reason (its text up to the
// first colon).
type deadCount struct {
	distinct, twice, noReason int64
	reasons                   map[string]int64
}

func (f *faultRun) countDeadLetters(ctx context.Context) (deadCount, error) {
	t := f.h.t
	dc := deadCount{reasons: map[string]int64{}}
	s, err := t.js.Stream(ctx, t.cfg.Streams.Dead)
	if err != nil {
		return dc, err
	}
	info, err := s.Info(ctx)
	if err != nil || info.State.Msgs == 0 {
		return dc, err
	}
	cons, err := t.js.OrderedConsumer(ctx, t.cfg.Streams.Dead, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return dc, err
	}
	seen := map[string]bool{}
	for read := uint64(0); read < info.State.Msgs; {
		batch, err := cons.FetchNoWait(1000)
		if err != nil {
			return dc, err
		}
		got := 0
		for m := range batch.Messages() {
			got++
			read++
			h := m.Headers()
			if !strings.HasPrefix(h.Get("Allot-Original-Subject"), t.cfg.Subjects.Usage+".") {
				continue // a notice the notifier gave up on
			}
			seq := h.Get("Allot-Original-Seq")
			if seen[seq] {
				dc.twice++
				continue
			}
			seen[seq] = true
			dc.distinct++
			reason := h.Get(events.ErrorHeader)
			if reason == "" {
				dc.noReason++
			}
			kind, _, _ := strings.Cut(reason, ":")
			dc.reasons[kind]++
		}
		if err := batch.Error(); err != nil {
			return dc, err
		}
		if got == 0 {
			time.Sleep(20 * time.Millisecond)
		}
		if ctx.Err() != nil {
			return dc, ctx.Err()
		}
	}
	return dc, nil
}

// countApplied counts the events Redis holds: the meter's dedup records
// of event ids, members of its dedup SETs ("<tag> <id>" in the SETs of
// keys.DedupTag on a single Redis, "<id>" in each tag's own on a
// Cluster); authorizations share them under ids of their own, and are
// not counted. A meter with meter.dedup_ids off keeps no such record.
func (f *faultRun) countApplied(ctx context.Context) (int64, error) {
	t := f.h.t
	authPrefix := t.uidPrefix() + "a"
	sets, err := f.dedupSets(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, set := range sets {
		iter := t.rdb.SScan(ctx, set, 0, "", 5000).Iterator()
		for iter.Next(ctx) {
			m := iter.Val()
			id := m[strings.LastIndexByte(m, ' ')+1:]
			if strings.HasPrefix(id, authPrefix) || strings.HasPrefix(id, "notify-") {
				continue
			}
			n++
		}
		if err := iter.Err(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// dedupSets lists the meter's dedup SETs: keys.DedupSet of any tag and
// time bucket.
func (f *faultRun) dedupSets(ctx context.Context) ([]string, error) {
	t := f.h.t
	pattern := t.keys.Prefix() + "{*}:ids:*"
	scan := func(ctx context.Context, c redis.UniversalClient) ([]string, error) {
		var sets []string
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			sets = append(sets, iter.Val())
		}
		return sets, iter.Err()
	}
	cc, ok := t.rdb.(*redis.ClusterClient)
	if !ok {
		return scan(ctx, t.rdb)
	}
	// A Cluster's SCAN sees one node: ask every master.
	var mu sync.Mutex
	var sets []string
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		s, err := scan(ctx, c)
		mu.Lock()
		sets = append(sets, s...)
		mu.Unlock()
		return err
	})
	return sets, err
}

// recordsNow is how many dedup records the meter's SETs hold now, of
// events and authorizations alike.
func (f *faultRun) recordsNow(ctx context.Context) (int64, error) {
	sets, err := f.dedupSets(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, set := range sets {
		c, err := f.h.t.rdb.SCard(ctx, set).Result()
		if err != nil {
			return 0, err
		}
		n += c
	}
	return n, nil
}

// check ends a scenario: the authorizations whose answer was lost are
// sent again, the meter drains, the harness's exactness check runs, and
// the row's counts are read from the stream, Redis and the mail sink.
func (f *faultRun) check(ctx context.Context, grant float64) {
	h, t, row := f.h, f.h.t, f.row
	if f.env.service("meter") == nil {
		row.fail("the meter never ran")
		return
	}
	f.settleAuthorizations(ctx)
	e := h.checkExactness(ctx)
	for _, why := range h.rep.Incomplete {
		row.fail("%s", why)
	}
	if !e.Checked {
		row.fail("exactness not checked: %s", e.Note)
		return
	}
	row.Lost, row.Double = e.Lost, e.Double
	for _, d := range e.Differences {
		row.fail("%s", d)
	}
	row.Published = f.published + f.malformed

	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	s, err := t.js.Stream(rctx, t.cfg.Streams.Usage)
	if err != nil {
		row.fail("stream %s: %v", t.cfg.Streams.Usage, err)
		return
	}
	info, err := s.Info(rctx)
	if err != nil {
		row.fail("stream %s: %v", t.cfg.Streams.Usage, err)
		return
	}
	stored := int64(info.State.Msgs)
	if row.Applied, err = f.countApplied(rctx); err != nil {
		row.fail("count the applied events: %v", err)
		return
	}
	// Read again on a failure: a JetStream API request can meet "no
	// responders" for a moment on a cluster (a raft group between
	// leaders), which says nothing of what the stream holds.
	var dc deadCount
	err = retryFor(rctx, 30*time.Second, func(context.Context) error {
		var err error
		dc, err = f.countDeadLetters(rctx)
		return err
	})
	if err != nil {
		row.fail("read the dead letters: %v", err)
		return
	}
	row.Dead = dc.distinct
	row.DupsDropped = f.streamDups + (stored - row.Applied - dc.distinct)
	good, unknown := h.ledger.good.Load(), h.ledger.unknown.Load()
	if row.Applied > good || row.Applied < good-unknown {
		row.fail("Redis holds %s distinct events of the %s good ones the stream took (%s of unknown fate)", commas(row.Applied), commas(good), commas(unknown))
	}
	wantDead := h.ledger.bad.Load() + (f.malformed - f.malformedUIDs)
	if dc.distinct > wantDead || dc.distinct < wantDead-h.ledger.badFailed.Load() {
		row.fail("%s messages dead-lettered, %s bad or malformed ones published", commas(dc.distinct), commas(wantDead))
	}
	if dc.twice > 0 {
		row.fail("%s messages were dead-lettered twice", commas(dc.twice))
	}
	if dc.noReason > 0 {
		row.fail("%s dead letters carry no reason (%s)", commas(dc.noReason), events.ErrorHeader)
	}
	if f.malformed > 0 {
		row.note("dead letters by reason: %s", kindsText(dc.reasons))
	}
	nctx, cancelNotices := context.WithTimeout(ctx, 150*time.Second)
	defer cancelNotices()
	f.checkNotices(nctx, grant)
}

// checkNotices waits until the notifier has mailed what it will, then
// compares the mail with the notices the final state says were due:
// one per threshold each uid's grants reached.
func (f *faultRun) checkNotices(ctx context.Context, grant float64) {
	t, row := f.h.t, f.row
	uids := make([]string, f.o.UIDs)
	for i := range uids {
		uids[i] = t.uid(i)
	}
	cat := usage.Default()
	limits := map[string]float64{metricGrant: grant, metricAuthorize: cat.Grants[metricAuthorize]}
	state, err := readState(ctx, t.rdb, t.keys, uids, nil, []string{metricGrant, metricAuthorize})
	if err != nil {
		row.fail("read the grants for the notices due: %v", err)
		return
	}
	due := map[noticeKey]bool{}
	for k, used := range state {
		mc, ok := cat.Metric(k.metric)
		if !ok {
			continue
		}
		for _, th := range mc.Notify {
			if used >= limits[k.metric]*th/100 {
				due[noticeKey{uid: k.uid, metric: k.metric, threshold: fmt.Sprint(th)}] = true
			}
		}
	}
	// Until the notifier has taken every notice published and its usage
	// queue holds no task still to run (pending, running, scheduled or
	// waiting for a retry), for at most two minutes.
	queue := notifier.DefaultSettings().UsageQueue
	insp := asynq.NewInspectorFromRedisClient(t.rdb)
	var waiting string
	err = retryFor(ctx, 2*time.Minute, func(ctx context.Context) error {
		last, err := f.lastSeq(ctx, t.cfg.Streams.Notify)
		if err != nil {
			return err
		}
		if err := f.waitFloorAll(ctx, t.cfg.Streams.Notify, notifier.DefaultSettings().Durable, last, time.Second); err != nil {
			return err
		}
		queues, err := insp.Queues()
		if err != nil {
			return err
		}
		if !slices.Contains(queues, queue) {
			return nil // no task was enqueued (since Redis started)
		}
		qi, err := insp.GetQueueInfo(queue)
		if err != nil {
			return err
		}
		if n := qi.Pending + qi.Active + qi.Scheduled + qi.Retry; n > 0 {
			waiting = fmt.Sprintf("%d tasks of queue %s still to run (%d pending, %d active, %d scheduled, %d waiting to retry)", n, queue, qi.Pending, qi.Active, qi.Scheduled, qi.Retry)
			return errors.New(waiting)
		}
		if qi.Archived > 0 {
			row.note("%d usage notice tasks were archived (their retries ran out)", qi.Archived)
		}
		return nil
	})
	if err != nil {
		if waiting != "" {
			err = fmt.Errorf("%w; last seen: %s", err, waiting)
		}
		row.fail("the notifier did not finish: %v", err)
	}
	distinct, twice, per, bad := f.env.mail.counts()
	row.Notices, row.NoticesDue, row.NoticesTwice = distinct, len(due), twice
	var missing, unexpected int
	missingOf := map[string]int{}
	for k := range due {
		if per[k] == 0 {
			missing++
			missingOf[k.uid]++
		}
	}
	// An attempt that ended between claiming its sent mark and the
	// server's answer leaves the mark "claimed"; with
	// notifier.unknown_outcome skip (at most once) its rerun counts it
	// as sent. A due notice missing where its uid holds as many claimed
	// marks was skipped so, by the product's choice: noted, not failed.
	skipped, err := claimedMarks(ctx, t.rdb, t.keys.Prefix())
	if err != nil {
		row.fail("reading the notifier's sent marks: %v", err)
	}
	unknown := 0
	for uid, n := range missingOf {
		if k := min(n, skipped[uid]); k > 0 {
			unknown += k
		}
	}
	for k := range per {
		if !due[k] {
			unexpected++
		}
	}
	row.note("usage notices: %s due, %s mailed, %d missing, %d not due, %d mailed twice", commas(int64(len(due))), commas(int64(distinct)), missing, unexpected, twice)
	if twice > 0 {
		row.fail("%d usage notices were mailed more than once: %s", twice, strings.Join(f.env.mail.twice(f.trafficStart), "; "))
	}
	if unknown > 0 {
		row.note("%d usage notices due were never mailed because an attempt ended between claiming its sent mark and the server's answer (unknown outcome, skipped: notifier.unknown_outcome skip, at most once)", unknown)
	}
	switch missing -= unknown; {
	case missing > 0 && f.noticesLost != "":
		row.note("%d usage notices due were never mailed, as expected: %s", missing, f.noticesLost)
	case missing > 0:
		row.fail("%d usage notices due were never mailed", missing)
	}
	if unexpected > 0 {
		row.fail("%d usage notices were mailed for a threshold the grant never reached", unexpected)
	}
	for _, b := range bad {
		row.fail("mail sink: %s", b)
	}
}

// claimedMarks counts, per uid, the notifier's sent marks still
// "claimed" under prefix (on every master of a Cluster): emails whose
// last attempt ended between the claim and the server's answer.
func claimedMarks(ctx context.Context, rdb redis.UniversalClient, prefix string) (map[string]int, error) {
	var mu sync.Mutex
	out := map[string]int{}
	count := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, prefix+"{*}:sent:*", 1000).Iterator()
		for iter.Next(ctx) {
			key := iter.Val()
			v, err := c.Get(ctx, key).Result()
			if errors.Is(err, redis.Nil) || (err == nil && v != "claimed") {
				continue
			}
			if err != nil {
				return err
			}
			tag, _, _ := strings.Cut(strings.TrimPrefix(key, prefix+"{"), "}")
			mu.Lock()
			out[tag]++
			mu.Unlock()
		}
		return iter.Err()
	}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		return out, c.ForEachMaster(ctx, count)
	case *redis.Client:
		return out, count(ctx, c)
	}
	return nil, fmt.Errorf("cannot scan a %T", rdb)
}
