package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The clusters of the cluster scenarios (cluster-kill-nats-node,
// cluster-kill-redis-master): a 3-node NATS cluster and a Redis Cluster
// of 3 masters and 3 replicas, as tools/cluster makes them (the same
// nats.conf, the same redis-server flags, redis-cli --cluster create),
// but on spare ports the kernel hands out and in the scenario's own
// directory, so they never meet a cluster a developer has up (tools/cluster's
// 14221-14223 and 17001-17006); started by the harness, so that it can
// kill -9 one node and start it again with the same arguments and store.

// redisNodeTimeout is the Redis Cluster's cluster-node-timeout, as
// tools/cluster sets it: a master that does not answer for this long is
// failed, and its replica promoted.
const redisNodeTimeout = 2 * time.Second

// clusterSet is a scenario's NATS cluster and Redis Cluster.
type clusterSet struct {
	nats      []*server // n1, n2, n3
	natsNames []string
	natsMon   []int // their monitoring ports (/healthz)
	redis     []*server
	log       *slog.Logger
}

// startClusters starts both clusters under dir. On error what was
// started is left for close.
func startClusters(ctx context.Context, c *clusterSet, dir, natsBin, redisBin string) error {
	ports := make([]int, 3*3)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	client, route, mon := ports[0:3], ports[3:6], ports[6:9]
	rport, err := redisPorts(6)
	if err != nil {
		return err
	}
	for i := range 3 {
		name := "n" + strconv.Itoa(i+1)
		ndir := filepath.Join(dir, "nats-"+name)
		if err := os.MkdirAll(ndir, 0o755); err != nil {
			return err
		}
		var routes []string
		for j := range 3 {
			if j != i {
				routes = append(routes, "nats-route://127.0.0.1:"+strconv.Itoa(route[j]))
			}
		}
		// max_file_store is what JetStream may reserve, not what it uses:
		// streams reserve their max_bytes (USAGE 8 GiB) on every replica.
		conf := fmt.Sprintf("server_name: %s\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\njetstream {\n  store_dir: %q\n  max_file_store: 1T\n  max_memory_store: 1G\n}\ncluster {\n  name: allot-faults\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n",
			name, client[i], mon[i], filepath.Join(ndir, "js"), route[i], strings.Join(routes, ", "))
		path := filepath.Join(ndir, "nats.conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			return err
		}
		s, err := newServer("nats-server "+name, natsBin, []string{"-c", path}, client[i], filepath.Join(ndir, "nats.log"))
		if err != nil {
			return err
		}
		c.nats, c.natsNames, c.natsMon = append(c.nats, s), append(c.natsNames, name), append(c.natsMon, mon[i])
	}
	for _, p := range rport {
		rdir := filepath.Join(dir, "redis-"+strconv.Itoa(p))
		if err := os.MkdirAll(rdir, 0o755); err != nil {
			return err
		}
		s, err := newServer("redis-server :"+strconv.Itoa(p), redisBin, []string{"--port", strconv.Itoa(p), "--bind", "127.0.0.1",
			"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(rdir, "nodes.conf"),
			"--cluster-node-timeout", strconv.FormatInt(redisNodeTimeout.Milliseconds(), 10),
			"--dir", rdir, "--save", "", "--appendonly", "no"}, p, filepath.Join(rdir, "redis.log"))
		if err != nil {
			return err
		}
		c.redis = append(c.redis, s)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(c.nats)+len(c.redis))
	for i, s := range append(slices.Clone(c.nats), c.redis...) {
		wg.Go(func() { errs[i] = s.start(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	cli := filepath.Join(filepath.Dir(redisBin), "redis-cli")
	if !strings.Contains(redisBin, "/") {
		var err error
		if cli, err = exec.LookPath("redis-cli"); err != nil {
			return errors.New("redis-cli is missing (Debian: apt-get install redis-tools): the cluster scenarios create their Redis Cluster with it")
		}
	}
	args := append([]string{"--cluster", "create"}, c.redisAddrs()...)
	out, err := exec.CommandContext(ctx, cli, append(args, "--cluster-replicas", "1", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("redis-cli --cluster create: %w: %s", err, lastLines(string(out), 3))
	}
	if err := retryFor(ctx, 30*time.Second, func(ctx context.Context) error { return c.redisOK(ctx, nil) }); err != nil {
		return fmt.Errorf("the Redis Cluster: %w", err)
	}
	// Every replica's link to its master up (the initial sync done): a
	// meter waiting for replicas (meter.wait_replicas) fails every write
	// before.
	for _, s := range c.redis {
		err := retryFor(ctx, 30*time.Second, func(ctx context.Context) error {
			role, up, err := c.role(ctx, s)
			if err == nil && role == "slave" && !up {
				err = errors.New("its link to the master is not up")
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("Redis :%d: %w", s.port, err)
		}
	}
	for i := range c.nats {
		if err := retryFor(ctx, 30*time.Second, func(ctx context.Context) error { return c.natsHealthy(ctx, i) }); err != nil {
			return fmt.Errorf("NATS node %s: %w", c.natsNames[i], err)
		}
	}
	return nil
}

// redisPorts finds n ports for Redis Cluster nodes: each free, and its
// cluster bus port (port + 10000) too, so below 55536; from 20000 up,
// under the kernel's ephemeral range (32768 on), where freePort's come
// from (the nodes on 20000-22767, their bus ports on 30000-32767).
func redisPorts(n int) ([]int, error) {
	free := func(p int) bool {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			return false
		}
		_ = l.Close()
		return true
	}
	var out []int
	start := 20000 + rand.IntN(2700)
	for p := start; p < 32768-10000 && len(out) < n; p++ {
		if free(p) && free(p+10000) {
			out = append(out, p)
		}
	}
	if len(out) < n {
		return nil, fmt.Errorf("no %d free port pairs (p, p+10000) from %d for the Redis Cluster", n, start)
	}
	return out, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " / ")
}

func (c *clusterSet) natsURLs() string {
	urls := make([]string, len(c.nats))
	for i, s := range c.nats {
		urls[i] = "nats://127.0.0.1:" + strconv.Itoa(s.port)
	}
	return strings.Join(urls, ",")
}

func (c *clusterSet) redisAddrs() []string {
	addrs := make([]string, len(c.redis))
	for i, s := range c.redis {
		addrs[i] = "127.0.0.1:" + strconv.Itoa(s.port)
	}
	return addrs
}

// natsHealthy asks node i's /healthz: 200 once its JetStream is current.
func (c *clusterSet) natsHealthy(ctx context.Context, i int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(c.natsMon[i])+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/healthz answered %s", resp.Status)
	}
	return nil
}

func (c *clusterSet) natsIndex(name string) int { return slices.Index(c.natsNames, name) }

// node is a single-node client of one Redis of the cluster.
func (c *clusterSet) node(s *server) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(s.port), DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1})
}

// redisOK checks that every running node (but skip) says cluster_state:ok
// and knows 3 masters with slots.
func (c *clusterSet) redisOK(ctx context.Context, skip *server) error {
	for _, s := range c.redis {
		if s == skip {
			continue
		}
		rc := c.node(s)
		info, err := rc.ClusterInfo(ctx).Result()
		_ = rc.Close()
		if err != nil {
			return fmt.Errorf("node :%d: %w", s.port, err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("node :%d: cluster_state is not ok", s.port)
		}
	}
	return nil
}

// redisNode is one line of CLUSTER NODES.
type redisNode struct {
	id, addr, master string // master: the id of a replica's master
	port             int
	isMaster, failed bool
	slots            [][2]int
}

// topology reads CLUSTER NODES from the first node that answers (but skip).
func (c *clusterSet) topology(ctx context.Context, skip *server) ([]redisNode, error) {
	var lastErr error
	for _, s := range c.redis {
		if s == skip {
			continue
		}
		rc := c.node(s)
		text, err := rc.ClusterNodes(ctx).Result()
		_ = rc.Close()
		if err != nil {
			lastErr = err
			continue
		}
		return parseClusterNodes(text), nil
	}
	return nil, fmt.Errorf("no Redis node answered CLUSTER NODES: %w", lastErr)
}

// parseClusterNodes reads CLUSTER NODES: "<id> <ip:port@cport>
// <flags> <master id or -> <ping> <pong> <epoch> <link> <slot ranges...>".
func parseClusterNodes(text string) []redisNode {
	var nodes []redisNode
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 {
			continue
		}
		n := redisNode{id: f[0], addr: strings.SplitN(f[1], "@", 2)[0], master: f[3]}
		_, p, _ := strings.Cut(n.addr, ":")
		n.port, _ = strconv.Atoi(p)
		flags := strings.Split(f[2], ",")
		n.isMaster = slices.Contains(flags, "master")
		n.failed = slices.Contains(flags, "fail") || slices.Contains(flags, "fail?")
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // a slot being migrated
			}
			lo, hi, ok := strings.Cut(r, "-")
			a, _ := strconv.Atoi(lo)
			b := a
			if ok {
				b, _ = strconv.Atoi(hi)
			}
			n.slots = append(n.slots, [2]int{a, b})
		}
		nodes = append(nodes, n)
	}
	return nodes
}

func (n redisNode) serves(slot int) bool {
	for _, r := range n.slots {
		if slot >= r[0] && slot <= r[1] {
			return true
		}
	}
	return false
}

func (n redisNode) slotCount() int {
	k := 0
	for _, r := range n.slots {
		k += r[1] - r[0] + 1
	}
	return k
}

func (c *clusterSet) redisByPort(port int) *server {
	for _, s := range c.redis {
		if s.port == port {
			return s
		}
	}
	return nil
}

// role reads a node's INFO replication: "master" or "slave", and for a
// replica whether its link to the master is up.
func (c *clusterSet) role(ctx context.Context, s *server) (role string, linkUp bool, err error) {
	rc := c.node(s)
	defer rc.Close()
	info, err := rc.Info(ctx, "replication").Result()
	if err != nil {
		return "", false, err
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "role:"); ok {
			role = v
		}
		if v, ok := strings.CutPrefix(line, "master_link_status:"); ok {
			linkUp = v == "up"
		}
	}
	return role, linkUp, nil
}

// replOffset reads a node's replication offset: master_repl_offset of
// a master, slave_repl_offset of a replica (what it has received).
func (c *clusterSet) replOffset(ctx context.Context, s *server, field string) (int64, error) {
	rc := c.node(s)
	defer rc.Close()
	info, err := rc.Info(ctx, "replication").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in INFO replication of :%d", field, s.port)
}

// slots returns the hash slot of each key, asked of the cluster.
func (c *clusterSet) slots(ctx context.Context, keys []string) ([]int, error) {
	for _, s := range c.redis {
		rc := c.node(s)
		pipe := rc.Pipeline()
		cmds := make([]*redis.IntCmd, len(keys))
		for i, k := range keys {
			cmds[i] = pipe.ClusterKeySlot(ctx, k)
		}
		_, err := pipe.Exec(ctx)
		_ = rc.Close()
		if err != nil {
			continue
		}
		out := make([]int, len(keys))
		for i, cmd := range cmds {
			out[i] = int(cmd.Val())
		}
		return out, nil
	}
	return nil, errors.New("no Redis node answered CLUSTER KEYSLOT")
}

func (c *clusterSet) close() {
	var wg sync.WaitGroup
	for _, s := range append(slices.Clone(c.nats), c.redis...) {
		wg.Go(s.close)
	}
	wg.Wait()
}
