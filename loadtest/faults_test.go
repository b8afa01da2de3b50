package main

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/usage"
)

func faultEnvVars(k string) string {
	if k == "ALLOT_TEST_NATS_SERVER" {
		return "/bin/nats-server"
	}
	return ""
}

func TestParseFaultOptionsRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		getenv func(string) string
		want   string
	}{
		{"unknown fault", []string{"-profile", "faults", "-faults", "kill-meter,melt"}, faultEnvVars, `unknown fault scenario "melt"`},
		{"no fault", []string{"-profile", "faults", "-faults", " , "}, faultEnvVars, "-faults: name at least one"},
		{"no nats-server", []string{"-profile", "faults-quick"}, noEnv, "-nats-server: the fault suite needs the pinned nats-server"},
		{"a target of the user's", []string{"-profile", "faults", "-nats-url", "nats://127.0.0.1:4222"}, faultEnvVars, "-nats-url: the fault suite starts servers"},
		{"a redis of the user's", []string{"-profile", "faults", "-redis-url", "redis://127.0.0.1:6379/0"}, faultEnvVars, "-redis-url: the fault suite starts servers"},
		{"stacks", []string{"-profile", "faults", "-stacks", "2"}, faultEnvVars, "-stacks"},
		{"scenarios", []string{"-profile", "faults", "-scenarios", "ingest"}, faultEnvVars, "-scenarios"},
		{"zero kills", []string{"-profile", "faults", "-kills", "0"}, faultEnvVars, "-kills"},
		{"zero backlog", []string{"-profile", "faults", "-backlog", "0"}, faultEnvVars, "-backlog"},
		{"huge flood", []string{"-profile", "faults", "-flood", "20000000"}, faultEnvVars, "-flood"},
		{"short traffic", []string{"-profile", "faults", "-duration", "2s"}, faultEnvVars, "-duration: must be between 5s and 1h"},
		{"dup NaN", []string{"-profile", "faults", "-dup", "NaN"}, faultEnvVars, "-dup"},
		{"fault flags without a fault profile", []string{"-profile", "quick", "-kills", "3"}, faultEnvVars, "are for the fault profiles"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			_, err := parseOptions(tc.args, tc.getenv, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseOptions(%q) = %v, want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestParseFaultProfiles(t *testing.T) {
	o, err := parseOptions([]string{"-profile", "faults-quick"}, faultEnvVars, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.Faults, ",") != strings.Join(faultNames(), ",") || o.Duration != 12*time.Second || o.DupRatio != 0.1 ||
		o.FaultBacklog != 50_000 || o.FaultFlood != 10_000 || o.FaultKills != 5 || o.NATSServer != "/bin/nats-server" || len(o.Scenarios) != 0 {
		t.Errorf("faults-quick = %+v", o)
	}
	o, err = parseOptions([]string{"-profile", "faults", "-faults", "redis-empty, kill-meter", "-backlog", "1000", "-dup", "0.2", "-nats-server", "/x/nats"}, noEnv, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.Faults, ",") != "redis-empty,kill-meter" || o.FaultBacklog != 1000 || o.FaultFlood != 100_000 || o.DupRatio != 0.2 || o.NATSServer != "/x/nats" || o.Duration != 30*time.Second {
		t.Errorf("faults with flags = %+v", o)
	}
}

func TestParseNoticeTask(t *testing.T) {
	k, err := parseNoticeTask("usage:u-1:u-1.photo_daily_total.1796598604651.80")
	if err != nil || k != (noticeKey{uid: "u-1", metric: "photo_daily_total", threshold: "80"}) {
		t.Errorf("parseNoticeTask = %+v, %v", k, err)
	}
	if k, err := parseNoticeTask("usage:u-1:u-1.m.0.12.5"); err != nil || k.threshold != "12.5" {
		t.Errorf("a fractional threshold = %+v, %v", k, err)
	}
	for _, bad := range []string{"", "usage:", "usage:u-1", "usage:u-1:u-2.m.0.80", "usage:u-1:u-1.m.0", "usage:u-1:u-1..0.80", "confirm:u-1:x", "usage:u-1:u-1.m.0.", "usage::.0..0", "usage:u:u.m.x.80"} {
		if _, err := parseNoticeTask(bad); err == nil {
			t.Errorf("parseNoticeTask(%q) = nil error", bad)
		}
	}
}

// Every message of the flood is one the meter refuses: its subject is
// not a uid's, or its body does not decode, does not match the subject,
// names a metric allot does not declare, or breaks the metric's rules.
func TestMalformedMessagesAreAllRefused(t *testing.T) {
	f := &faultRun{o: Options{UIDs: 3}, h: &harness{t: &target{runID: "r", cfg: service.Default()}}}
	subj := events.DefaultSubjects()
	cat := usage.Default()
	for i := range 2048 {
		subject, body, onUID := f.malformedMsg(i)
		uid, err := subj.ParseUsage(subject)
		if err != nil {
			if onUID {
				t.Errorf("message %d: subject %q is not a uid's but onUID is set", i, subject)
			}
			continue
		}
		if !onUID {
			t.Errorf("message %d: subject %q is a uid's but onUID is not set", i, subject)
		}
		ev, err := events.Decode(body, events.DefaultMaxEventBytes)
		if err != nil {
			continue
		}
		if ev.CheckSubject(uid) != nil {
			continue
		}
		mc, ok := cat.Metric(ev.Data.Metric)
		if !ok || (ev.Data.Value < 0 && mc.Style != usage.StyleGauge) {
			continue
		}
		refused := false
		for name := range ev.Data.Labels {
			refused = refused || !mc.AllowsLabel(name)
		}
		if !refused {
			t.Errorf("message %d (%d bytes) would be applied: %s", i, len(body), body)
		}
	}
}

func TestFaultTableFlagsFailures(t *testing.T) {
	rows := []faultRow{
		{Name: "a", Scenario: "fine", Published: 1200, Applied: 1000, DupsDropped: 190, Dead: 10, Recover: 1500 * time.Millisecond},
		{Name: "b", Scenario: "broken", Lost: 3, Failures: []string{"3 lost"}},
	}
	got := faultTable(rows)
	for _, want := range []string{"| fine | 1,200 | 1,000 | 190 | 10 | 0 | 0 | 0 | 1.5 s |", "| **FAILED** broken |", "FAILED: 3 lost."} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}

func FuzzParseNoticeTask(f *testing.F) {
	f.Add("usage:u-1:u-1.photo_daily_total.1796598604651.80")
	f.Add("usage:u-1:u-1.m.0.12.5")
	f.Add("usage::..")
	f.Fuzz(func(t *testing.T, task string) {
		k, err := parseNoticeTask(task)
		if err != nil {
			return
		}
		if k.uid == "" || k.metric == "" || k.threshold == "" || !strings.HasPrefix(task, "usage:"+k.uid+":"+k.uid+"."+k.metric+".") {
			t.Errorf("parseNoticeTask(%q) = %+v", task, k)
		}
	})
}

// The kill moments fall in the middle of the traffic, sorted and apart,
// for every -kills the options allow (a dozen in the short profile once
// drew forever).
func TestMoments(t *testing.T) {
	f := &faultRun{rng: rand.New(rand.NewPCG(1, 2))}
	for _, d := range []time.Duration{12 * time.Second, 30 * time.Second} {
		for n := 1; n <= 50; n++ {
			gap := min(1500*time.Millisecond, time.Duration(0.75*float64(d)/float64(n+1)))
			out := f.moments(n, d)
			if len(out) != n {
				t.Fatalf("%d moments in %v: got %d", n, d, len(out))
			}
			for i, m := range out {
				if m < d/10 || float64(m) > 0.85*float64(d) {
					t.Errorf("%d in %v: moment %v outside the middle", n, d, m)
				}
				if i > 0 && m-out[i-1] < gap-time.Microsecond {
					t.Errorf("%d in %v: moments %v and %v closer than %v", n, d, out[i-1], m, gap)
				}
			}
		}
	}
}

func TestClusterScenariosRunOnlyWhenNamed(t *testing.T) {
	o, err := parseOptions([]string{"-profile", "faults"}, faultEnvVars, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range o.Faults {
		if strings.HasPrefix(s, "cluster-") {
			t.Errorf("the faults profile runs %s by default", s)
		}
	}
	o, err = parseOptions([]string{"-profile", "faults", "-faults", "cluster-kill-nats-node,cluster-kill-nats-node-fetch,cluster-kill-redis-master,cluster-kill-redis-master-wait"}, faultEnvVars, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.Faults, ",") != "cluster-kill-nats-node,cluster-kill-nats-node-fetch,cluster-kill-redis-master,cluster-kill-redis-master-wait" {
		t.Errorf("-faults cluster-... = %v", o.Faults)
	}
}

func TestParseClusterNodes(t *testing.T) {
	text := "07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected\n" +
		"67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922\n" +
		"e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 10923 [5461->-67ed]\n" +
		"6ec2 127.0.0.1:30005@40005 master,fail - 1426238316232 1426238316232 5 disconnected\n"
	nodes := parseClusterNodes(text)
	if len(nodes) != 4 {
		t.Fatalf("%d nodes, want 4: %+v", len(nodes), nodes)
	}
	r, m := nodes[0], nodes[2]
	if r.isMaster || r.master != "e7d1" || r.port != 30004 || r.addr != "127.0.0.1:30004" {
		t.Errorf("replica = %+v", r)
	}
	if !m.isMaster || !m.serves(0) || !m.serves(5460) || !m.serves(10923) || m.serves(5461) || m.slotCount() != 5462 {
		t.Errorf("master = %+v (slots %d)", m, m.slotCount())
	}
	if !nodes[3].failed || nodes[1].failed {
		t.Errorf("fail flags: %+v", nodes)
	}
}

func TestUIDErrorsText(t *testing.T) {
	u := newUIDErrors()
	if got := u.text(nil); got != "no credit, check or authorize request failed" {
		t.Errorf("empty: %q", got)
	}
	u.add("credit", 7, "unavailable")
	u.add("credit", 3, "unavailable")
	u.add("credit", 7, "timeout")
	u.add("authorize", 9, "unavailable")
	got := u.text(map[int]bool{7: true})
	for _, want := range []string{"credit: 3 failed (unavailable 2, timeout 1) for 2 uids [3 7], 1 of them on the faulty master's slots", "check: none failed", "authorize: 1 failed (unavailable 1) for 1 uids [9], 0 of them"} {
		if !strings.Contains(got, want) {
			t.Errorf("text = %q, want it to contain %q", got, want)
		}
	}
	if ids := u.uids(); len(ids) != 3 || ids[0] != 3 || ids[2] != 9 {
		t.Errorf("uids = %v", ids)
	}
}

func TestRedisPortsLeaveRoomForTheBusPorts(t *testing.T) {
	ports, err := redisPorts(6)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p < 20000 || p+10000 >= 32768 || seen[p] {
			t.Errorf("port %d of %v: want distinct ports from 20000 whose bus port (+10000) is below 32768", p, ports)
		}
		seen[p] = true
	}
}
