package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/loadtest/internal/report"
)

// The scenarios. Each runs traffic (f.traffic) while its fault happens,
// and says in f.row what "recovered" meant and how long it took; the
// check (faultcheck.go) follows.

// killScenario kills svc's process with SIGKILL o.FaultKills times at
// random moments under load, starting it again at once, as a supervisor
// would.
func killScenario(svc string) func(ctx context.Context, f *faultRun) error {
	return func(ctx context.Context, f *faultRun) error {
		f.row.RecoverNote = map[string]string{
			"meter":     "from the kill until the restarted meter has applied every event stored before it (a message the killed process held comes back after the ack wait, 5 s here)",
			"ratelimit": "from the kill until ratelimit.check answers again",
			"registry":  "from the kill until registry.find answers again",
			"notifier":  "from the kill until the restarted notifier has taken every notice published before it (a notice the killed process held comes back after notifier.ack_wait, 5 s here)",
		}[svc]
		d := f.o.Duration
		return f.traffic(ctx, d, true, func(ctx context.Context, start time.Time) error {
			var wg sync.WaitGroup
			defer wg.Wait()
			var at []string
			for _, off := range f.moments(f.o.FaultKills, d) {
				if err := sleepUntil(ctx, start.Add(off)); err != nil {
					return err
				}
				mark, err := f.recoveryMark(ctx, svc)
				if err != nil {
					return err
				}
				killed := time.Now()
				f.env.kill9(svc)
				at = append(at, fmt.Sprintf("%.1f", killed.Sub(start).Seconds()))
				if err := f.env.startService(ctx, svc); err != nil {
					return fmt.Errorf("restart after kill -9: %w", err)
				}
				wg.Go(func() {
					if err := f.waitRecovered(ctx, svc, mark); err != nil {
						f.fail("%s did not recover from the kill at %.1f s: %v", svc, killed.Sub(start).Seconds(), err)
						return
					}
					f.recovered(time.Since(killed))
				})
			}
			f.note("killed at %s s of the traffic", strings.Join(at, ", "))
			return nil
		})
	}
}

// natsKillScenario kills the nats-server with SIGKILL half way and
// starts it again at once on the same port and store directory.
func natsKillScenario(ctx context.Context, f *faultRun) error {
	f.row.RecoverNote = "from the kill until the restarted server has every service answering and the meter has applied every event stored before the kill"
	d := f.o.Duration
	return f.traffic(ctx, d, true, func(ctx context.Context, start time.Time) error {
		if err := sleepUntil(ctx, start.Add(f.between(0.35, 0.6, d))); err != nil {
			return err
		}
		mark, err := f.lastSeq(ctx, f.h.t.cfg.Streams.Usage)
		if err != nil {
			return err
		}
		killed := time.Now()
		f.env.nats.kill()
		if err := f.env.nats.start(ctx); err != nil {
			return fmt.Errorf("restart nats-server on its store: %w", err)
		}
		f.note("killed at %.1f s of the traffic, stream at sequence %s; listening again %.2f s later", killed.Sub(start).Seconds(), commas(int64(mark)), time.Since(killed).Seconds())
		if err := f.waitAll(ctx, mark); err != nil {
			return fmt.Errorf("after the restart: %w", err)
		}
		f.recovered(time.Since(killed))
		return nil
	})
}

// redisEmptyScenario kills the redis-server half way and starts it again
// empty: the meter finds its epoch marker gone, answers 503 and rebuilds
// the state from the usage stream. As soon as the rebuild has written a
// part of it, the meter is killed with SIGKILL and started again: the
// rebuild must resume and still end exact. The rate limiter rebuilds its
// windows of hits from the stream too (checkHits compares them with the
// meter's counters). The notifier's confirmed addresses are written again
// right after the restart (as apps would confirm them again); what else
// other services kept in Redis (windows of checks, registrations, queued
// emails) is gone, as it would be.
func redisEmptyScenario(ctx context.Context, f *faultRun) error {
	f.row.RecoverNote = "from the restart until meter.credit answers again (not 503 rebuilding) and the meter has applied every event stored before the restart"
	d := f.o.Duration
	// No authorize load: a rebuild replays the usage stream, which does
	// not hold what meter.authorize charged.
	return f.traffic(ctx, d, false, func(ctx context.Context, start time.Time) error {
		if err := sleepUntil(ctx, start.Add(f.between(0.45, 0.6, d))); err != nil {
			return err
		}
		mark, err := f.lastSeq(ctx, f.h.t.cfg.Streams.Usage)
		if err != nil {
			return err
		}
		wiped := time.Now()
		f.env.redis.kill()
		if err := f.env.redis.start(ctx); err != nil {
			return fmt.Errorf("restart redis-server: %w", err)
		}
		if err := f.confirmAddresses(ctx); err != nil {
			return err
		}
		f.noticesLost = "the notifier's queued tasks live in the Redis that was wiped"
		f.note("Redis killed and started empty at %.1f s of the traffic, the usage stream at sequence %s", wiped.Sub(start).Seconds(), commas(int64(mark)))
		if err := f.killMidRebuild(ctx, mark); err != nil {
			return err
		}
		if err := f.waitMeter(ctx, mark); err != nil {
			return fmt.Errorf("after the restart: %w", err)
		}
		f.recovered(time.Since(wiped))
		return nil
	})
}

// killMidRebuild waits until the meter's rebuild is writing the state
// (its "rebuilding" mark beside the missing marker, and a tenth of the
// events stored already recorded again), kills the meter with SIGKILL
// there and starts it again. A rebuild that ends before that is noted.
func (f *faultRun) killMidRebuild(ctx context.Context, stored uint64) error {
	k := f.h.t.keys
	rdb := f.h.t.rdb
	began := time.Now()
	for {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if m, err := rdb.HGetAll(ctx, k.MeterEpoch()).Result(); err == nil {
			switch {
			case m["seq"] != "":
				f.note("the rebuild ended before a kill could land (%.2f s after the restart): the kill mid-rebuild was not tested", time.Since(began).Seconds())
				return nil
			case m["rebuilding"] != "":
				n, err := f.recordsNow(ctx)
				if err == nil && n >= max(50, int64(stored)/10) {
					f.env.kill9("meter")
					f.note("the meter was killed -9 mid-rebuild, %.2f s after the restart, with %s of the %s messages stored replayed", time.Since(began).Seconds(), commas(n), commas(int64(stored)))
					if err := f.env.startService(ctx, "meter"); err != nil {
						return fmt.Errorf("restart the meter after the kill mid-rebuild: %w", err)
					}
					return nil
				}
			}
		}
		if time.Since(began) > 60*time.Second {
			return errors.New("the meter did not begin a rebuild within 60s of Redis coming back empty")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// redisUnreachableScenario blackholes every service's link to Redis for
// o.FaultOutage. Meanwhile a probe asks meter.credit, meter.authorize
// and ratelimit.check ten times a second each: every request must fail
// the way its service is configured to (503 from the meter within
// nats.request_timeout; 503 from the rate limiter, which fails closed,
// within ratelimit.timeout), and once Redis is back, the authorizations
// that failed are sent again with their ids and must count once.
func redisUnreachableScenario(ctx context.Context, f *faultRun) error {
	f.row.RecoverNote = "from the end of the outage until credit, authorize and check answer again and the meter has applied every event stored before"
	d := max(f.o.Duration, 2*f.o.FaultOutage+4*time.Second)
	return f.traffic(ctx, d, true, func(ctx context.Context, start time.Time) error {
		if err := sleepUntil(ctx, start.Add(f.between(0.2, 0.3, d))); err != nil {
			return err
		}
		probe := f.startOutageProbe(ctx)
		time.Sleep(500 * time.Millisecond)
		cut := time.Now()
		for _, svc := range faultServices {
			if err := f.env.links[svc+"-redis"].cut(); err != nil {
				return err
			}
		}
		_ = sleepUntil(ctx, cut.Add(f.o.FaultOutage))
		healed := time.Now()
		for _, svc := range faultServices {
			if err := f.env.links[svc+"-redis"].heal(); err != nil {
				return err
			}
		}
		mark, err := f.lastSeq(ctx, f.h.t.cfg.Streams.Usage)
		if err != nil {
			return err
		}
		werr := f.waitAll(ctx, mark)
		f.recovered(time.Since(healed))
		time.Sleep(time.Second)
		probe.stop()
		probe.judge(f, cut, healed)
		if werr != nil {
			return fmt.Errorf("after the outage: %w", werr)
		}
		return nil
	})
}

// partitionScenario blackholes one link (toxiproxy's timeout toxic both
// ways) for o.FaultPartition: the meter to Redis, or the meter to NATS.
func partitionScenario(name string) func(ctx context.Context, f *faultRun) error {
	return func(ctx context.Context, f *faultRun) error {
		f.row.RecoverNote = "from the end of the partition until the meter has applied every event stored before it"
		d := max(f.o.Duration, 2*f.o.FaultPartition+4*time.Second)
		return f.traffic(ctx, d, true, func(ctx context.Context, start time.Time) error {
			if err := sleepUntil(ctx, start.Add(f.between(0.2, 0.3, d))); err != nil {
				return err
			}
			l := f.env.links[name]
			cut := time.Now()
			if err := l.cut(); err != nil {
				return err
			}
			_ = sleepUntil(ctx, cut.Add(f.o.FaultPartition))
			healed := time.Now()
			if err := l.heal(); err != nil {
				return err
			}
			mark, err := f.lastSeq(ctx, f.h.t.cfg.Streams.Usage)
			if err != nil {
				return err
			}
			f.note("cut at %.1f s of the traffic for %s", cut.Sub(start).Seconds(), healed.Sub(cut).Round(100*time.Millisecond))
			if err := f.waitMeter(ctx, mark); err != nil {
				return fmt.Errorf("after the partition: %w", err)
			}
			f.recovered(time.Since(healed))
			return nil
		})
	}
}

// backlogScenario publishes o.FaultBacklog events (with the copies and
// bad events of -dup and -bad) while no meter runs, then starts the meter
// and measures how fast it drains them and how much memory it takes at
// its peak (VmHWM).
func backlogScenario(ctx context.Context, f *faultRun) error {
	f.row.RecoverNote = "from starting the meter until it has applied the whole backlog"
	began := time.Now()
	if err := f.publishBacklog(ctx, f.o.FaultBacklog); err != nil {
		return err
	}
	stored, err := f.lastSeq(ctx, f.h.t.cfg.Streams.Usage)
	if err != nil {
		return err
	}
	f.note("published in %.1f s", time.Since(began).Seconds())
	startAt := time.Now()
	if err := f.env.startService(ctx, "meter"); err != nil {
		return err
	}
	ready := time.Now()
	m := f.env.service("meter")
	peak := &peakRSS{pid: m.pid()}
	pctx, stop := context.WithCancel(ctx)
	go peak.run(pctx, 250*time.Millisecond)
	err = f.waitFloorAll(ctx, f.h.t.cfg.Streams.Usage, f.h.t.meter.Consumer, stored, 10*time.Minute)
	drained := time.Now()
	hwm := peak.hwm()
	stop()
	if err != nil {
		return fmt.Errorf("the meter did not drain the backlog: %w", err)
	}
	secs := drained.Sub(ready).Seconds()
	f.recovered(drained.Sub(startAt))
	f.note("the meter started in %.1f s and drained %s messages in %.1f s: %s messages/s; its peak memory (VmHWM) %.0f MiB, RSS sampled every 250 ms at most %.0f MiB",
		ready.Sub(startAt).Seconds(), commas(int64(stored)), secs, report.Num(float64(stored)/secs), float64(hwm)/1024, float64(peak.max())/1024)
	return nil
}

// floodScenario publishes o.FaultFlood malformed messages raw on usage.*
// (nats.go, no client library) while the apps' good traffic runs: every
// one must be dead-lettered with its reason, and the good traffic must
// still count exactly.
func floodScenario(ctx context.Context, f *faultRun) error {
	f.row.RecoverNote = "from the end of the flood until the meter has applied every message stored before it"
	d := f.o.Duration
	return f.traffic(ctx, d, true, func(ctx context.Context, start time.Time) error {
		if err := sleepUntil(ctx, start.Add(d/4)); err != nil {
			return err
		}
		began := time.Now()
		n, onUIDs, err := f.publishMalformed(ctx, f.o.FaultFlood)
		f.malformed += n
		f.malformedUIDs += onUIDs
		f.h.ledger.bad.Add(onUIDs) // dead-lettered under the run's uids, as the bad events are
		if err != nil {
			return fmt.Errorf("the flood: %w", err)
		}
		ended := time.Now()
		f.note("%s malformed messages stored in %.1f s (%s/s)", commas(n), ended.Sub(began).Seconds(), report.Num(float64(n)/ended.Sub(began).Seconds()))
		mark, err := f.lastSeq(ctx, f.h.t.cfg.Streams.Usage)
		if err != nil {
			return err
		}
		if err := f.waitMeter(ctx, mark); err != nil {
			return fmt.Errorf("after the flood: %w", err)
		}
		f.recovered(time.Since(ended))
		return nil
	})
}
