package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/ratelimit"
	"github.com/redis/go-redis/v9"
)

// hitService is the rate-limited service whose hits the fault suite's
// rate limiter counts from the usage events of metricCounter, in the
// scenarios that take the rate limiter's state away (countsHits). Its
// windows are 31 days long, the most allot takes: a run spans at most
// two, and a uid's two window hashes keep both, so they hold every hit
// counted on any date.
const (
	hitService  = "faulthits"
	hitInterval = "744h"
)

// countsHits tells the scenarios whose rate limiter counts hitService:
// its process killed, or its Redis (or one master of the Cluster) wiped,
// the windows rebuilt from the usage stream.
func countsHits(scenario string) bool {
	return scenario == "kill-ratelimit" || scenario == "redis-empty" || scenario == "cluster-redis-master-empty"
}

// checkHits compares, uid by uid, the hits the rate limiter's windows of
// hitService hold with the meter's counter of the same events, which the
// exactness check has just compared with the ledger: both count every
// event the stream stored once, whatever was killed or wiped, the rate
// limiter's after its own replay of the stream. It waits for the rate
// limiter's consumer to take every event first.
func (f *faultRun) checkHits(ctx context.Context) {
	t, row := f.h.t, f.row
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	stream, consumer := t.cfg.Streams.Usage, ratelimit.DefaultSettings().Consumer
	w, err := watchFloor(ctx, t.js, stream, []string{consumer}, nil)
	if err == nil {
		err = w.drain(ctx, t.js, "the rate limiter's hits", stream)
	}
	if err != nil {
		row.fail("hit windows not checked: %v", err)
		return
	}
	uids := make([]string, f.o.UIDs)
	for i := range uids {
		uids[i] = t.uid(i)
	}
	var meter map[stateKey]float64
	var hits map[string]int64
	// The windows are whole once the markers are back (a rebuild writes
	// them last; on a Cluster one per hash slot too): until then they may
	// still be replayed into.
	epoch := service.NewEpoch(t.rdb, t.keys.RateLimitEpoch())
	if _, ok := t.rdb.(*redis.ClusterClient); ok {
		epoch = service.NewSlottedEpoch(t.rdb, t.keys.RateLimitEpoch(), t.keys.RateLimitEpochSlots())
	}
	err = retryFor(ctx, 60*time.Second, func(ctx context.Context) error {
		m, err := epoch.ReadAll(ctx)
		if err != nil {
			return fmt.Errorf("the rate limiter's epoch markers: %w", err)
		}
		if !m.Whole() {
			return fmt.Errorf("the rate limiter's epoch markers are not all there (%d slots' missing): its windows are being rebuilt", len(m.Missing))
		}
		if meter, err = readState(ctx, t.rdb, t.keys, uids, []string{metricCounter}, nil); err != nil {
			return err
		}
		hits, err = readHits(ctx, t.rdb, t.keys, uids, hitService)
		return err
	})
	if err != nil {
		row.fail("hit windows not checked: %v", err)
		return
	}
	counted := map[string]float64{}
	for k, v := range meter {
		counted[k.uid] += v
	}
	var total int64
	var differ []string
	for _, uid := range uids {
		total += hits[uid]
		if float64(hits[uid]) != counted[uid] {
			differ = append(differ, fmt.Sprintf("%s: %d hits, the meter counted %s", uid, hits[uid], strconv.FormatFloat(counted[uid], 'f', -1, 64)))
		}
	}
	for i, d := range differ {
		if i == 10 {
			row.fail("... and %d more uids whose hit windows differ from the meter's counter", len(differ)-10)
			break
		}
		row.fail("hit windows of %s", d)
	}
	if len(differ) == 0 {
		row.note("the rate limiter's windows of %s hold %s hits over %s uids, each uid's equal to the meter's %s", hitService, commas(total), commas(int64(len(uids))), metricCounter)
	}
}

// readHits sums, per uid, the counts of both window hashes of service.
func readHits(ctx context.Context, rdb redis.UniversalClient, k keys.Keys, uids []string, service string) (map[string]int64, error) {
	out := map[string]int64{}
	for start := 0; start < len(uids); start += 200 {
		chunk := uids[start:min(len(uids), start+200)]
		pipe := rdb.Pipeline()
		cmds := make([][2]*redis.StringCmd, len(chunk))
		for i, uid := range chunk {
			even, odd := k.RateLimit(uid, service)
			cmds[i] = [2]*redis.StringCmd{pipe.HGet(ctx, even, "n"), pipe.HGet(ctx, odd, "n")}
		}
		if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
			return nil, fmt.Errorf("read the windows of %s: %w", service, err)
		}
		for i, uid := range chunk {
			for _, cmd := range cmds[i] {
				v, err := cmd.Result()
				if err == redis.Nil {
					continue
				}
				if err != nil {
					return nil, fmt.Errorf("read a window of %s/%s: %w", uid, service, err)
				}
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("a window of %s/%s holds %q", uid, service, v)
				}
				out[uid] += n
			}
		}
	}
	return out, nil
}
