package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/loadtest/internal/report"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/notifier"
	"github.com/nats-io/nats.go/jetstream"
)

// The cluster scenarios: the same traffic and check as every scenario,
// on a 3-node NATS cluster (every stream at R3) and a Redis Cluster of 3
// masters and 3 replicas (faultcluster.go), with two processes of every
// service, none behind a proxy. The fault is one node: the NATS node that
// leads the usage stream, or the Redis master that holds the notifier's
// usage queue (and a third of the uids), killed with SIGKILL under load
// and started again on its store. Every credit, check and authorize
// request that failed is booked under its uid (uidErrors), and the row
// says which uids saw errors, what errors, and what the exactness check
// found for each of them.

// clusterServices is every process of a cluster scenario: two replicas
// of each service ("<service>.2" is the second).
var clusterServices = []string{"meter", "meter.2", "ratelimit", "ratelimit.2", "registry", "registry.2", "notifier", "notifier.2"}

// uidErrors books the failed requests by operation and uid.
type uidErrors struct {
	mu sync.Mutex
	// by op ("credit", "check", "authorize"), uid index, error kind
	m map[string]map[int]map[string]int64
	// every failure's time and uid, and the moments that split the
	// fault into phases (mark)
	at     []time.Time
	atUID  []int
	phases []uidPhase
}

type uidPhase struct {
	name string
	from time.Time
}

func newUIDErrors() *uidErrors { return &uidErrors{m: map[string]map[int]map[string]int64{}} }

func (u *uidErrors) add(op string, uid int, kind string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.at, u.atUID = append(u.at, time.Now()), append(u.atUID, uid)
	if u.m[op] == nil {
		u.m[op] = map[int]map[string]int64{}
	}
	if u.m[op][uid] == nil {
		u.m[op][uid] = map[string]int64{}
	}
	u.m[op][uid][kind]++
}

// wrap books op's errors under the uid its request number names (every
// request op of the traffic takes uid i mod -uids).
func (u *uidErrors) wrap(name string, uids int, op reqOp) reqOp {
	return func(ctx context.Context, c *events.Client, i int64) (string, error) {
		out, err := op(ctx, c, i)
		if err != nil {
			u.add(name, int(i%int64(uids)), errKind(err))
		}
		return out, err
	}
}

// mark starts a phase of the fault at now: the failures after it are
// counted under name.
func (u *uidErrors) mark(name string, at time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.phases = append(u.phases, uidPhase{name, at})
}

// phaseText counts the failures of each phase (from its mark to the
// next), and of the uids among them on the killed node's slots.
func (u *uidErrors) phaseText(onFault map[int]bool) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.phases) == 0 {
		return ""
	}
	type count struct {
		n, on int
		uids  map[int]bool
	}
	counts := make([]count, len(u.phases)+1) // [0]: before the first mark
	for i := range counts {
		counts[i].uids = map[int]bool{}
	}
	for j, at := range u.at {
		p := 0
		for i, ph := range u.phases {
			if !at.Before(ph.from) {
				p = i + 1
			}
		}
		counts[p].n++
		counts[p].uids[u.atUID[j]] = true
		if onFault[u.atUID[j]] {
			counts[p].on++
		}
	}
	var parts []string
	if counts[0].n > 0 {
		parts = append(parts, fmt.Sprintf("before the fault %d", counts[0].n))
	}
	for i, ph := range u.phases {
		c := counts[i+1]
		s := fmt.Sprintf("%s: %d failed requests over %d uids", ph.name, c.n, len(c.uids))
		if onFault != nil {
			s += fmt.Sprintf(", %d of the requests for uids on the faulty master's slots", c.on)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// uids returns every uid index that saw an error, sorted.
func (u *uidErrors) uids() []int {
	u.mu.Lock()
	defer u.mu.Unlock()
	seen := map[int]bool{}
	for _, byUID := range u.m {
		for i := range byUID {
			seen[i] = true
		}
	}
	out := make([]int, 0, len(seen))
	for i := range seen {
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}

// text says, per operation, how many requests failed, for which uids
// (by index i of lt-<run>-<i>), and of what kinds; onFault, when set,
// marks the uids whose state lives on the killed node's slots.
func (u *uidErrors) text(onFault map[int]bool) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.m) == 0 {
		return "no credit, check or authorize request failed"
	}
	var parts []string
	for _, op := range []string{"credit", "check", "authorize"} {
		byUID := u.m[op]
		if len(byUID) == 0 {
			parts = append(parts, op+": none failed")
			continue
		}
		kinds := map[string]int64{}
		var n int64
		idx := make([]int, 0, len(byUID))
		on := 0
		for i, ks := range byUID {
			idx = append(idx, i)
			if onFault[i] {
				on++
			}
			for k, c := range ks {
				kinds[k] += c
				n += c
			}
		}
		sort.Ints(idx)
		s := fmt.Sprintf("%s: %s failed (%s) for %d uids [%s]", op, commas(n), kindsText(kinds), len(idx), intsText(idx))
		if onFault != nil {
			s += fmt.Sprintf(", %d of them on the faulty master's slots", on)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func intsText(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, " ")
}

// judgeUIDs runs the exactness comparison for the uids that saw errors
// alone, and notes it: each of their counters and grants against what
// was sent (the ledger), lost and double-counted apart.
func (f *faultRun) judgeUIDs(ctx context.Context) {
	if f.uidErrs == nil {
		return
	}
	idx := f.uidErrs.uids()
	if len(idx) == 0 {
		return
	}
	t, l := f.h.t, f.h.ledger
	uids := make([]string, len(idx))
	mine := map[string]bool{}
	for i, x := range idx {
		uids[i] = t.uid(x)
		mine[uids[i]] = true
	}
	actual, err := readState(ctx, t.rdb, t.keys, uids, []string{metricCounter}, []string{metricGrant, metricAuthorize})
	if err != nil {
		f.fail("read the state of the uids that saw errors: %v", err)
		return
	}
	exp, unc := map[stateKey]float64{}, map[stateKey]float64{}
	l.mu.Lock()
	for k, v := range l.expected {
		if mine[k.uid] {
			exp[k] = v
		}
	}
	for k, v := range l.uncertain {
		if mine[k.uid] {
			unc[k] = v
		}
	}
	l.mu.Unlock()
	diffs, lost, double := compare(exp, unc, actual)
	if len(diffs) == 0 {
		f.note("the %d uids that saw errors: each of their %d counters and grants holds exactly what was sent (0 lost, 0 double-counted)", len(uids), len(exp))
		return
	}
	var ds []string
	for _, d := range diffs[:min(len(diffs), 10)] {
		ds = append(ds, d.String())
	}
	f.note("the %d uids that saw errors: %s lost, %s double-counted over %d keys: %s", len(uids), report.Num(lost), report.Num(double), len(diffs), strings.Join(ds, "; "))
}

// streamLeader is the server that leads stream's raft group, and the
// one leading consumer's on it.
func (f *faultRun) streamLeader(ctx context.Context, stream, consumer string) (string, string, error) {
	var leader, cleader string
	err := retryFor(ctx, 30*time.Second, func(ctx context.Context) error {
		s, err := f.h.t.js.Stream(ctx, stream)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		if info.Cluster == nil || info.Cluster.Leader == "" {
			return fmt.Errorf("stream %s has no leader", stream)
		}
		leader = info.Cluster.Leader
		c, err := s.Consumer(ctx, consumer)
		if err != nil {
			return err
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if ci.Cluster != nil {
			cleader = ci.Cluster.Leader
		}
		return nil
	})
	return leader, cleader, err
}

// moveConsumerLeader asks the meter's consumer's raft group to elect
// node its leader (a leader stepdown with a preferred placement) and
// waits until it has; it returns the consumer's leader.
func (f *faultRun) moveConsumerLeader(ctx context.Context, node string) (string, error) {
	t := f.h.t
	subj := fmt.Sprintf("$JS.API.CONSUMER.LEADER.STEPDOWN.%s.%s", t.cfg.Streams.Usage, t.meter.Consumer)
	var cleader string
	err := retryFor(ctx, 15*time.Second, func(ctx context.Context) error {
		var err error
		if _, cleader, err = f.streamLeader(ctx, t.cfg.Streams.Usage, t.meter.Consumer); err != nil {
			return err
		}
		if cleader == node {
			return nil
		}
		if _, err := t.ctl.RequestWithContext(ctx, subj, []byte(`{"placement":{"preferred":"`+node+`"}}`)); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
		return fmt.Errorf("the consumer's leader is %s", cleader)
	})
	return cleader, err
}

// waitCurrent waits until node is a current replica of every stream of
// allot (usage, dead letters, notices), caught up with its leader.
func (f *faultRun) waitCurrent(ctx context.Context, node string) error {
	t := f.h.t
	return retryFor(ctx, 2*time.Minute, func(ctx context.Context) error {
		for _, name := range []string{t.cfg.Streams.Usage, t.cfg.Streams.Dead, t.cfg.Streams.Notify} {
			s, err := t.js.Stream(ctx, name)
			if err != nil {
				return err
			}
			info, err := s.Info(ctx)
			if err != nil {
				return err
			}
			if info.Cluster == nil {
				return fmt.Errorf("stream %s: no cluster info", name)
			}
			if info.Cluster.Leader == node {
				continue
			}
			i := slices.IndexFunc(info.Cluster.Replicas, func(p *jetstream.PeerInfo) bool { return p.Name == node })
			if i < 0 || !info.Cluster.Replicas[i].Current || info.Cluster.Replicas[i].Offline {
				return fmt.Errorf("stream %s: %s is not a current replica yet", name, node)
			}
		}
		return nil
	})
}

// clusterNATSKillScenario kills, half way through the traffic, the NATS
// node leading the usage stream (the hard case: its raft group must elect
// another leader before the stream takes a message again), waits until
// the stream has a new leader, starts the node again on its store, and
// waits until it is current again and the meter has applied everything.
func clusterNATSKillScenario(ctx context.Context, f *faultRun) error {
	f.row.RecoverNote = "from the kill until every service answers, the meter has applied every event stored before the kill and the restarted node is a current replica of every stream again"
	d := f.o.Duration
	t := f.h.t
	return f.traffic(ctx, d, true, func(ctx context.Context, start time.Time) error {
		if err := sleepUntil(ctx, start.Add(f.between(0.35, 0.5, d))); err != nil {
			return err
		}
		leader, cleader, err := f.streamLeader(ctx, t.cfg.Streams.Usage, t.meter.Consumer)
		if err != nil {
			return err
		}
		if cleader != leader {
			// The hardest case: the node leads the meter's consumer too,
			// where the meters' pulls wait. Ask the consumer's leader to
			// step down in favour of the stream's.
			if cleader, err = f.moveConsumerLeader(ctx, leader); err != nil {
				f.note("the consumer's leader stayed on %s: %v", cleader, err)
			}
		}
		i := f.env.cl.natsIndex(leader)
		if i < 0 {
			return fmt.Errorf("the usage stream's leader %q is none of the cluster's nodes %v", leader, f.env.cl.natsNames)
		}
		mark, err := f.lastSeq(ctx, t.cfg.Streams.Usage)
		if err != nil {
			return err
		}
		killed := time.Now()
		f.env.cl.nats[i].kill()
		f.uidErrs.mark("from the kill until the stream had a new leader", killed)
		newLeader, _, err := f.streamLeader(ctx, t.cfg.Streams.Usage, t.meter.Consumer)
		if err != nil {
			return fmt.Errorf("no new leader for the usage stream: %w", err)
		}
		elected := time.Since(killed)
		f.uidErrs.mark("after the election", time.Now())
		if err := f.env.cl.nats[i].start(ctx); err != nil {
			return fmt.Errorf("restart NATS node %s on its store: %w", leader, err)
		}
		restarted := time.Since(killed)
		f.note("killed NATS node %s, the usage stream's leader (the meter's consumer's leader: %s), at %.1f s of the traffic, the stream at sequence %s; %s leads the stream %.2f s after the kill; %s restarted on its store at %.2f s",
			leader, cleader, killed.Sub(start).Seconds(), commas(int64(mark)), newLeader, elected.Seconds(), leader, restarted.Seconds())
		if err := f.waitAll(ctx, mark); err != nil {
			return fmt.Errorf("after the kill: %w", err)
		}
		served := time.Since(killed)
		if err := f.waitCurrent(ctx, leader); err != nil {
			return fmt.Errorf("the restarted node: %w", err)
		}
		f.note("every service answered and the meter had applied everything stored before the kill %.2f s after it; %s was current on every stream again at %.2f s",
			served.Seconds(), leader, time.Since(killed).Seconds())
		f.recovered(time.Since(killed))
		return nil
	})
}

// clusterRedisKillScenario kills, half way through the traffic, the Redis
// master that holds the notifier's usage queue (and the state of about a
// third of the uids): its replica is promoted by the Cluster's failover
// once cluster-node-timeout (2 s) has passed. The killed node is started
// again (empty: no persistence) and joins as a replica of the promoted
// one.
func clusterRedisKillScenario(ctx context.Context, f *faultRun) error {
	f.row.RecoverNote = "from the kill until every service answers and the meter has applied every event stored until the Cluster was ok again (its replica promoted)"
	d := f.o.Duration
	t := f.h.t
	cl := f.env.cl
	return f.traffic(ctx, d, true, func(ctx context.Context, start time.Time) error {
		if err := sleepUntil(ctx, start.Add(f.between(0.35, 0.5, d))); err != nil {
			return err
		}
		pick, err := f.pickMaster(ctx, true)
		if err != nil {
			return err
		}
		master, nodes := pick.master, pick.nodes
		ri := slices.IndexFunc(nodes, func(n redisNode) bool { return !n.isMaster && n.master == master.id })
		if ri < 0 {
			return fmt.Errorf("master %s has no replica", master.addr)
		}
		replica := nodes[ri]
		victim, heir := cl.redisByPort(master.port), cl.redisByPort(replica.port)
		onFault := pick.onFault
		mark, err := f.lastSeq(ctx, t.cfg.Streams.Usage)
		if err != nil {
			return err
		}
		// What the replica lacks of the master's writes when the master
		// dies: the master's replication offset just before the kill
		// against what the replica had received just after it. More
		// writes come between the read and the kill, so a gap of 0 says
		// nothing of those; a gap above 0 is writes the failover drops.
		mOff, mErr := cl.replOffset(ctx, victim, "master_repl_offset")
		killed := time.Now()
		victim.kill()
		rOff, rErr := cl.replOffset(ctx, heir, "slave_repl_offset")
		switch {
		case mErr != nil || rErr != nil:
			f.note("replication offsets not read: %v", errors.Join(mErr, rErr))
		case rOff < mOff:
			f.note("the replica had received %s bytes fewer of the master's replication stream than the master had written just before the kill: writes the failover drops", commas(mOff-rOff))
		default:
			f.note("the replica had received the master's whole replication stream as read just before the kill (offset %s; %s bytes more after it), the writes of the last moment unknown", commas(mOff), commas(rOff-mOff))
		}
		f.uidErrs.mark("from the kill until the Cluster marked the master failed (its slots unreachable, the others served)", killed)
		// The replica's promotion, then the Cluster's state ok on every
		// node left; meanwhile the moment the Cluster marks the master
		// failed and refuses every slot (cluster_state:fail, as
		// cluster-require-full-coverage is yes by default) until the
		// replica takes over.
		var promoted, down time.Duration
		err = retryFor(ctx, time.Minute, func(ctx context.Context) error {
			if down == 0 {
				if rc := cl.node(heir); rc != nil {
					info, err := rc.ClusterInfo(ctx).Result()
					_ = rc.Close()
					if err == nil && strings.Contains(info, "cluster_state:fail") {
						down = time.Since(killed)
						f.uidErrs.mark("while the Cluster was down (cluster_state:fail: every slot refused, CLUSTERDOWN)", time.Now())
					}
				}
			}
			if promoted == 0 {
				role, _, err := cl.role(ctx, heir)
				if err != nil {
					return err
				}
				if role != "master" {
					return fmt.Errorf("%s is still a %s", replica.addr, role)
				}
				promoted = time.Since(killed)
				f.uidErrs.mark("after the promotion", time.Now())
			}
			return cl.redisOK(ctx, victim)
		})
		if err != nil {
			return fmt.Errorf("failover of master %s: %w", master.addr, err)
		}
		clusterOK := time.Since(killed)
		if err := victim.start(ctx); err != nil {
			return fmt.Errorf("restart redis-server %s: %w", master.addr, err)
		}
		// The restarted node joining as the new master's replica, watched
		// beside the wait for the services.
		joined := make(chan error, 1)
		var inSync time.Duration
		go func() {
			joined <- retryFor(ctx, time.Minute, func(ctx context.Context) error {
				role, up, err := cl.role(ctx, victim)
				if err != nil {
					return err
				}
				if role != "slave" || !up {
					return fmt.Errorf("%s is a %s, link up %v", master.addr, role, up)
				}
				inSync = time.Since(killed)
				return nil
			})
		}()
		// Recovered once the meter has applied what was stored until the
		// Cluster was whole again: the events of the outage too, which a
		// meter waiting for replicas holds until the new master has one.
		okMark, err := f.lastSeq(ctx, t.cfg.Streams.Usage)
		if err != nil {
			return err
		}
		f.note("killed Redis master %s (%d slots, the state of %d of the %d uids, and the notifier's usage queue) at %.1f s of the traffic, the usage stream at sequence %s; the Cluster down (cluster_state:fail) from %.2f s; its replica %s promoted %.2f s after the kill, the Cluster ok on every node at %.2f s (the stream at %s); %s restarted empty",
			master.addr, master.slotCount(), len(onFault), f.o.UIDs, killed.Sub(start).Seconds(), commas(int64(mark)), down.Seconds(), replica.addr, promoted.Seconds(), clusterOK.Seconds(), commas(int64(okMark)), master.addr)
		if err := f.waitAll(ctx, okMark); err != nil {
			return fmt.Errorf("after the failover: %w", err)
		}
		served := time.Since(killed)
		if err := <-joined; err != nil {
			return fmt.Errorf("the restarted node did not join as a replica: %w", err)
		}
		f.note("every service answered and the meter had applied everything stored until the Cluster was ok %.2f s after the kill; %s was a replica of %s, in sync, at %.2f s",
			served.Seconds(), master.addr, replica.addr, inSync.Seconds())
		f.recovered(served)
		return nil
	})
}

// clusterRedisFlushScenario empties one master of the Redis Cluster
// (FLUSHALL there, which its replica follows: a master that lost its
// data while the others kept theirs) half way through the traffic. The
// meter and the rate limiter see the markers of that master's hash slots
// gone, answer 503 (the rate limiter's services that count hits by their
// fail mode) and rebuild from the usage stream; the exactness check then
// covers every uid, those of the emptied slots too. No authorize load: a
// rebuild cannot restore what meter.authorize charged. The notifier's
// tasks on that master are gone with it; its uids' confirmed addresses
// are written back at once.
func clusterRedisFlushScenario(ctx context.Context, f *faultRun) error {
	f.row.RecoverNote = "from the flush until meter.credit answers again (not 503 rebuilding), the meter has applied every event stored before it and every service answers"
	d := f.o.Duration
	t := f.h.t
	cl := f.env.cl
	return f.traffic(ctx, d, false, func(ctx context.Context, start time.Time) error {
		if err := sleepUntil(ctx, start.Add(f.between(0.35, 0.5, d))); err != nil {
			return err
		}
		pick, err := f.pickMaster(ctx, false)
		if err != nil {
			return err
		}
		master, onFault := pick.master, pick.onFault
		if pick.servesQueue {
			f.noticesLost = "the notifier's queued tasks lived on the master that was emptied"
		}
		mark, err := f.lastSeq(ctx, t.cfg.Streams.Usage)
		if err != nil {
			return err
		}
		// The confirmed addresses of its uids are written back in the
		// same pipeline (as apps would confirm them again).
		rc := cl.node(cl.redisByPort(master.port))
		flushed := time.Now()
		pipe := rc.Pipeline()
		pipe.FlushAll(ctx)
		for i := range onFault {
			uid := t.uid(i)
			pipe.Set(ctx, t.keys.ConfirmedAddress(uid), uid+"@loadtest.invalid", 0)
		}
		_, err = pipe.Exec(ctx)
		_ = rc.Close()
		if err != nil {
			return fmt.Errorf("FLUSHALL on master %s: %w", master.addr, err)
		}
		f.uidErrs.mark("from the flush until the state was rebuilt", flushed)
		f.note("emptied Redis master %s (FLUSHALL, its replica following: %d slots, the state of %d of the %d uids) at %.1f s of the traffic, the usage stream at sequence %s",
			master.addr, master.slotCount(), len(onFault), f.o.UIDs, flushed.Sub(start).Seconds(), commas(int64(mark)))
		// Recovered once the meter's markers are all back (its rebuild
		// writes them last), then as after any fault.
		markers := service.NewSlottedEpoch(t.rdb, t.keys.MeterEpoch(), t.keys.MeterEpochSlots())
		err = retryFor(ctx, 2*time.Minute, func(ctx context.Context) error {
			m, err := markers.ReadAll(ctx)
			if err == nil && !m.Whole() {
				err = fmt.Errorf("the meter's epoch markers of %d slots are missing", len(m.Missing))
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("after the flush: %w", err)
		}
		if err := f.waitAll(ctx, mark); err != nil {
			return fmt.Errorf("after the flush: %w", err)
		}
		f.recovered(time.Since(flushed))
		return nil
	})
}

// pickedMaster is the Redis Cluster master a scenario faults.
type pickedMaster struct {
	master      redisNode
	nodes       []redisNode  // the topology it was picked from
	onFault     map[int]bool // the uids (i of t.uid) whose state it serves
	servesQueue bool         // it serves the notifier's usage queue too
}

// pickMaster picks the master serving the notifier's usage queue
// (byQueue) or the first uid's state, and the uids whose state it
// serves, which it books as the scenario's (f.faultUIDs).
func (f *faultRun) pickMaster(ctx context.Context, byQueue bool) (pickedMaster, error) {
	t, cl := f.h.t, f.env.cl
	queueKey := "asynq:{" + notifier.DefaultSettings().UsageQueue + "}:pending"
	uidKeys := make([]string, f.o.UIDs)
	for i := range uidKeys {
		uidKeys[i] = t.keys.Grant(t.uid(i), metricGrant)
	}
	slots, err := cl.slots(ctx, append(uidKeys, queueKey))
	if err != nil {
		return pickedMaster{}, err
	}
	nodes, err := cl.topology(ctx, nil)
	if err != nil {
		return pickedMaster{}, err
	}
	want, what := slots[0], "the first uid's state"
	if byQueue {
		want, what = slots[len(slots)-1], "the notifier's usage queue"
	}
	mi := slices.IndexFunc(nodes, func(n redisNode) bool { return n.isMaster && n.serves(want) })
	if mi < 0 {
		return pickedMaster{}, fmt.Errorf("no master serves %s", what)
	}
	p := pickedMaster{master: nodes[mi], nodes: nodes, onFault: map[int]bool{}}
	for i := range f.o.UIDs {
		if p.master.serves(slots[i]) {
			p.onFault[i] = true
		}
	}
	p.servesQueue = p.master.serves(slots[len(slots)-1])
	f.faultUIDs = p.onFault
	return p, nil
}
