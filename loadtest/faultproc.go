package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/meter"
	"github.com/allot/allot/services/notifier"
	"github.com/allot/allot/services/ratelimit"
	"github.com/allot/allot/services/registry"
	"github.com/rs/zerolog"
)

// The processes of the fault suite: each allot service in a process of
// its own (a child of this binary running exactly what the service's
// own main runs: service.Run with the service's start and section), a
// nats-server and a redis-server the harness starts and can kill -9 and
// start again, and toxiproxy proxies, in this process, on every link
// between a service and those servers.

// services is every allot service the fault suite runs, each in a
// process of its own.
var faultServices = []string{"meter", "ratelimit", "registry", "notifier"}

// startService runs one allot service in the child (roleService):
// service.Run, as the service's binary does, with the spec's config file
// and its NATS, Redis, instance and HTTP address in place of the
// environment's. It is ready once its /readyz answers 200.
func startService(ctx context.Context, spec childSpec) (func(context.Context) error, childReady, error) {
	var start service.StartFunc
	var section service.OwnedSection
	switch spec.Service {
	case "meter":
		start, section = meter.Run, meter.Section()
	case "ratelimit":
		start, section = ratelimit.Run, ratelimit.Section()
	case "registry":
		start, section = registry.Run, registry.Section()
	case "notifier":
		start, section = notifier.Run, notifier.Section()
	default:
		return nil, childReady{}, fmt.Errorf("unknown service %q (want %s)", spec.Service, strings.Join(faultServices, ", "))
	}
	env := map[string]string{"NATS_URL": spec.NATSURL, "REDIS_URL": spec.RedisURL, "REDIS_ADDRS": strings.Join(spec.RedisAddrs, ","),
		"ALLOT_INSTANCE": spec.Instance, "ALLOT_HTTP_ADDR": spec.HTTPAddr, "ALLOT_LOG_LEVEL": spec.LogLevel}
	getenv := func(k string) string { return env[k] } // nothing of the harness's environment leaks in
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- service.Run(rctx, spec.Service, []string{"-config", spec.ConfigPath}, getenv, io.Discard, os.Stderr, start, section)
	}()
	stop := func(sctx context.Context) error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-sctx.Done():
			return sctx.Err()
		}
	}
	url := "http://" + spec.HTTPAddr + "/readyz"
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(40 * time.Second)
	for {
		select {
		case err := <-done:
			cancel()
			if err == nil {
				err = errors.New("it stopped before it was ready")
			}
			return nil, childReady{}, fmt.Errorf("%s: %w", spec.Service, err)
		case <-time.After(50 * time.Millisecond):
		}
		if resp, err := client.Get(url); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return stop, childReady{HTTPURL: "http://" + spec.HTTPAddr, Services: []string{spec.Service}}, nil
			}
		}
		if time.Now().After(deadline) {
			_ = stop(context.Background())
			return nil, childReady{}, fmt.Errorf("%s: %s did not answer 200 within 40s", spec.Service, url)
		}
	}
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// server is a nats-server or redis-server process the harness started:
// it can be killed with SIGKILL and started again with the same
// arguments (the same port, and for NATS the same store).
type server struct {
	name string
	bin  string
	args []string
	port int
	log  *os.File

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

func newServer(name, bin string, args []string, port int, logPath string) (*server, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return &server{name: name, bin: bin, args: args, port: port, log: f}, nil
}

// start starts the process and waits until its port accepts connections.
func (s *server) start(ctx context.Context) error {
	cmd := exec.Command(s.bin, s.args...)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s (%s): %w", s.name, s.bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(s.port), 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited at start; see %s", s.name, s.log.Name())
		case <-ctx.Done():
			s.kill()
			return context.Cause(ctx)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("%s did not listen on 127.0.0.1:%d within 15s; see %s", s.name, s.port, s.log.Name())
		}
	}
}

func (s *server) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// kill sends SIGKILL and waits for the process to be gone.
func (s *server) kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// stop ends the process with SIGTERM, then SIGKILL after d.
func (s *server) stop(d time.Duration) {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(d):
		s.kill()
	}
}

func (s *server) close() {
	s.stop(5 * time.Second)
	_ = s.log.Close()
}

// link is a toxiproxy proxy between one service and one server.
type link struct {
	name  string
	proxy *toxiproxy.Proxy
}

func newLink(tox *toxiproxy.ApiServer, name, upstream string) (*link, error) {
	p := toxiproxy.NewProxy(tox, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("toxiproxy %s: %w", name, err)
	}
	return &link{name: name, proxy: p}, nil
}

func (l *link) addr() string { return l.proxy.Listen }

// cut blackholes the link both ways: toxiproxy's timeout toxic with no
// timeout drops every byte and never closes, as a network partition
// does; clients only notice through their own timeouts.
func (l *link) cut() error {
	for _, dir := range []string{"upstream", "downstream"} {
		body := fmt.Sprintf(`{"name":"cut_%s","type":"timeout","stream":%q,"attributes":{"timeout":0}}`, dir, dir)
		if _, err := l.proxy.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
			return fmt.Errorf("toxiproxy %s: cut %s: %w", l.name, dir, err)
		}
	}
	return nil
}

// heal removes the cut. Toxiproxy closes the connections that were cut
// (their byte streams lost data), so clients reconnect.
func (l *link) heal() error {
	var errs []error
	for _, dir := range []string{"upstream", "downstream"} {
		if err := l.proxy.Toxics.RemoveToxic(context.Background(), "cut_"+dir); err != nil && !errors.Is(err, toxiproxy.ErrToxicNotFound) {
			errs = append(errs, fmt.Errorf("toxiproxy %s: heal %s: %w", l.name, dir, err))
		}
	}
	return errors.Join(errs...)
}

// latency adds a latency toxic (ms, with jitter) downstream.
func (l *link) latency(ms, jitter int) error {
	body := fmt.Sprintf(`{"name":"latency","type":"latency","stream":"downstream","attributes":{"latency":%d,"jitter":%d}}`, ms, jitter)
	if _, err := l.proxy.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
		return fmt.Errorf("toxiproxy %s: latency: %w", l.name, err)
	}
	return nil
}

func (l *link) clear() { l.proxy.Toxics.ResetToxics(context.Background()) }

func newToxiproxy() *toxiproxy.ApiServer {
	return toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
}

// peakRSS samples a process's resident memory.
type peakRSS struct {
	pid     int
	mu      sync.Mutex
	maxKB   int64
	lastHWM int64
}

func (p *peakRSS) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		p.sample()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *peakRSS) sample() {
	rss, hwm := procMemKB(p.pid)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.maxKB = max(p.maxKB, rss)
	p.lastHWM = max(p.lastHWM, hwm)
}

func (p *peakRSS) max() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxKB
}

// hwm is the process's peak resident memory (VmHWM) as last read.
func (p *peakRSS) hwm() int64 {
	p.sample()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastHWM
}

// procMemKB reads VmRSS and VmHWM of a process from /proc.
func procMemKB(pid int) (rss, hwm int64) {
	fh, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		line := sc.Text()
		for name, dst := range map[string]*int64{"VmRSS:": &rss, "VmHWM:": &hwm} {
			if rest, ok := strings.CutPrefix(line, name); ok {
				if v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64); err == nil {
					*dst = v
				}
			}
		}
	}
	return rss, hwm
}
