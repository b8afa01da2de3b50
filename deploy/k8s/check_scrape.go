package k8s

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// metricsPath is where Prometheus scrapes unless told otherwise, and where
// the allot services serve their metrics.
const metricsPath = "/metrics"

// exporter is an image that serves Prometheus's text format for a server
// beside it, which it reads at each scrape: what it listens on and which
// server it reads, as its own flags and environment say (both exporters
// parse their command line with Go's flag package).
type exporter struct {
	// server is the base name of the image of the server it reads.
	server string
	// valued are the flags that take a value, which may follow as the
	// next argument: the positional arguments come after them.
	valued []string
	// listen, scrapePath and source read the port it serves on, the path
	// of its metrics and the URL of the server it reads.
	listen     func(cmd command) string
	scrapePath func(cmd command) string
	source     func(cmd command) string
}

// exporters are the exporters allot runs, by the base name of their image.
var exporters = map[string]exporter{
	"prometheus-nats-exporter": {
		server: "nats",
		valued: []string{"port", "p", "addr", "a", "path", "ri", "l", "log", "r", "remote_syslog", "jsz",
			"jsz_stream_meta_keys", "jsz_consumer_meta_keys", "tlscert", "tlskey", "tlscacert", "http_user", "http_pass", "prefix"},
		listen: func(cmd command) string {
			return ":" + cmd.flag("7777", "port", "p")
		},
		scrapePath: func(cmd command) string { return cmd.flag(metricsPath, "path") },
		source: func(cmd command) string {
			if len(cmd.args) == 0 {
				return ""
			}
			return cmd.args[0]
		},
	},
	"redis_exporter": {
		server: "redis",
		valued: []string{"redis.addr", "redis.user", "redis.password", "redis.password-file", "web.listen-address", "web.telemetry-path"},
		listen: func(cmd command) string {
			return cmd.flagOrEnv(":9121", "web.listen-address", "REDIS_EXPORTER_WEB_LISTEN_ADDRESS")
		},
		scrapePath: func(cmd command) string {
			return cmd.flagOrEnv(metricsPath, "web.telemetry-path", "REDIS_EXPORTER_WEB_TELEMETRY_PATH")
		},
		source: func(cmd command) string {
			addr := cmd.flagOrEnv("redis://localhost:6379", "redis.addr", "REDIS_ADDR")
			if !strings.Contains(addr, "://") {
				addr = "redis://" + addr
			}
			return addr
		},
	},
}

// defaultPorts are the ports of the URL schemes the exporters read when
// the URL names none.
var defaultPorts = map[string]int32{"http": 80, "https": 443, "redis": 6379, "rediss": 6379}

// natsCollectors are the prometheus-nats-exporter's flags that choose
// metrics: with none, it refuses to start.
var natsCollectors = []string{"varz", "connz", "connz_detailed", "routez", "subz", "healthz", "healthz_js_enabled_only",
	"healthz_js_server_only", "gatewayz", "accstatz", "accountz", "leafz", "jsz"}

// command is a container's command line as a Go program's flag package
// reads it, and its environment.
type command struct {
	flags map[string]string
	args  []string
	env   map[string]string
}

// parseCommand reads args as the flag package does: -name or --name, a
// value after = or, for the valued flags, as the next argument; the first
// argument that is no flag, or --, ends the flags. $(NAME) references are
// expanded from env first, as the kubelet does.
func parseCommand(args, valued []string, env map[string]string) command {
	cmd := command{flags: map[string]string{}, env: env}
	for i := 0; i < len(args); i++ {
		a := expand(args[i], env)
		if a == "--" {
			cmd.args = expandAll(args[i+1:], env)
			return cmd
		}
		if len(a) < 2 || a[0] != '-' {
			cmd.args = expandAll(args[i:], env)
			return cmd
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		if !hasValue {
			value = "true"
			if slices.Contains(valued, name) && i+1 < len(args) {
				i++
				value = expand(args[i], env)
			}
		}
		cmd.flags[name] = value
	}
	return cmd
}

func expandAll(args []string, env map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expand(a, env)
	}
	return out
}

// flag returns the value of the first of names set, or def.
func (c command) flag(def string, names ...string) string {
	for _, n := range names {
		if v, ok := c.flags[n]; ok {
			return v
		}
	}
	return def
}

// flagOrEnv returns the flag's value, else the variable's, else def: the
// variable gives the flag its default.
func (c command) flagOrEnv(def, name, env string) string {
	if v, ok := c.env[env]; ok {
		def = v
	}
	return c.flag(def, name)
}

// exporterOf returns the exporter container c runs, if any.
func exporterOf(c *corev1.Container) (exporter, bool) {
	e, ok := exporters[imageName(c.Image)]
	return e, ok
}

// imageName is the base name of an image's repository: redis for
// redis:7.4.6-alpine, nats for docker.io/library/nats:2.15.2.
func imageName(image string) string {
	ref, _, _ := strings.Cut(image, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return path.Base(ref)
}

// portOf returns the port of a host:port or :port address, or 0.
func portOf(addr string) int32 {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil {
		return 0
	}
	return int32(n)
}

// scrapeProblem says why Prometheus would not get its text format from
// port (a number or a name) of w's pods at urlPath, or "". Only three kinds
// of port serve it: an allot service's port http, and the port a
// prometheus-nats-exporter or a redis_exporter listens on. nats-server's
// monitoring port (8222) serves JSON: scraping it gets no metrics.
func (r *Rendered) scrapeProblem(w Workload, port intstr.IntOrString, urlPath string) string {
	if urlPath == "" {
		urlPath = metricsPath
	}
	pod := &w.Template.Spec
	for i := range pod.Containers {
		c := &pod.Containers[i]
		j := slices.IndexFunc(c.Ports, func(cp corev1.ContainerPort) bool { return portIs(cp, port) })
		if j < 0 {
			continue
		}
		cp := c.Ports[j]
		served := ""
		e, isExporter := exporterOf(c)
		switch {
		case w.IsService() && i == 0 && cp.Name == httpPortName && cp.ContainerPort == httpPort:
			served = metricsPath
		case isExporter:
			cmd := parseCommand(c.Args, e.valued, r.env(w.Object, c, false))
			if listen := portOf(e.listen(cmd)); listen != cp.ContainerPort {
				return fmt.Sprintf("port %d of container %s is not the one %s listens on (%d)", cp.ContainerPort, c.Name, imageName(c.Image), listen)
			}
			served = e.scrapePath(cmd)
		case imageName(c.Image) == "nats":
			return fmt.Sprintf("port %d of container %s is nats-server's: its monitoring port serves JSON, not Prometheus's text format; scrape the prometheus-nats-exporter beside it", cp.ContainerPort, c.Name)
		default:
			return fmt.Sprintf("port %d of container %s (%s) serves no Prometheus metrics allot knows of: scrape an allot service's port %s (%d) or an exporter's (prometheus-nats-exporter, redis_exporter)", cp.ContainerPort, c.Name, imageName(c.Image), httpPortName, httpPort)
		}
		if served != urlPath {
			return fmt.Sprintf("path %s: container %s serves its metrics on %s", urlPath, c.Name, served)
		}
		return ""
	}
	return fmt.Sprintf("%s is not a port of any container of the pod", port.String())
}

// checkScrapeAnnotations checks the prometheus.io/* annotations of a pod
// template that asks to be scraped: they name a port that serves
// Prometheus's format. Without prometheus.io/port, the usual scrape
// configuration takes every declared port, nats-server's JSON one included.
func (r *Rendered) checkScrapeAnnotations(p *problems, w Workload) {
	ann := w.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" {
		return
	}
	const field = "spec.template.metadata.annotations[prometheus.io/port]"
	n, err := strconv.ParseInt(ann["prometheus.io/port"], 10, 32)
	switch {
	case ann["prometheus.io/port"] == "":
		p.add(w.Object, field, "missing: Prometheus would scrape every port the pod declares")
	case err != nil:
		p.add(w.Object, field, "%q is not a port number", ann["prometheus.io/port"])
	default:
		if msg := r.scrapeProblem(w, intstr.FromInt32(int32(n)), ann["prometheus.io/path"]); msg != "" {
			p.add(w.Object, field, "%s", msg)
		}
	}
}

// checkPodMonitor checks that a PodMonitor selects pod templates in its
// namespace and scrapes ports of theirs that serve Prometheus's format.
func (r *Rendered) checkPodMonitor(p *problems, o Object, pm *PodMonitor, ws []Workload) {
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil || sel.Empty() {
		p.add(o, "spec.selector", "must select pods by label")
		return
	}
	targets := selected(o.Namespace, &pm.Spec.Selector, ws)
	if len(targets) == 0 {
		p.add(o, "spec.selector", "selects no pod template")
	}
	if len(pm.Spec.PodMetricsEndpoints) == 0 {
		p.add(o, "spec.podMetricsEndpoints", "missing")
	}
	for i, ep := range pm.Spec.PodMetricsEndpoints {
		field := fmt.Sprintf("spec.podMetricsEndpoints[%d].port", i)
		if ep.Port == "" {
			p.add(o, field, "missing: name the container port that serves the metrics")
			continue
		}
		for _, w := range targets {
			if msg := r.scrapeProblem(w, intstr.FromString(ep.Port), ep.Path); msg != "" {
				p.add(o, field, "%s: %s", w.Object, msg)
			}
		}
	}
}

// checkServiceMonitorTargets checks that each port a ServiceMonitor
// scrapes reaches a port of the selected pods that serves Prometheus's
// format (checkServiceMonitor checks that the Services have it).
func (r *Rendered) checkServiceMonitorTargets(p *problems, o Object, sm *ServiceMonitor, ws []Workload) {
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil || sel.Empty() {
		return
	}
	for _, so := range r.Objects {
		svc, ok := so.Value.(*corev1.Service)
		if !ok || so.Namespace != o.Namespace || !sel.Matches(labels.Set(svc.Labels)) || len(svc.Spec.Selector) == 0 {
			continue
		}
		for i, ep := range sm.Spec.Endpoints {
			j := slices.IndexFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Name == ep.Port })
			if j < 0 {
				continue
			}
			target := svc.Spec.Ports[j].TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(svc.Spec.Ports[j].Port)
			}
			for _, w := range selected(o.Namespace, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, ws) {
				if msg := r.scrapeProblem(w, target, ep.Path); msg != "" {
					p.add(o, fmt.Sprintf("spec.endpoints[%d].port", i), "%s, %s: %s", so, w.Object, msg)
				}
			}
		}
	}
}

// checkExporters checks each exporter container of w: it listens on a
// port it declares and, where it reads a server in its own pod
// (localhost), reads that server's port, with the password Redis
// requires; the prometheus-nats-exporter reads nats-server's monitoring
// port (http_port of its nats.conf) and chooses some metrics.
func (r *Rendered) checkExporters(p *problems, w Workload) {
	pod := &w.Template.Spec
	for i := range pod.Containers {
		c := &pod.Containers[i]
		e, ok := exporterOf(c)
		if !ok {
			continue
		}
		field := fmt.Sprintf("spec.template.spec.containers[%s]", c.Name)
		cmd := parseCommand(c.Args, e.valued, r.env(w.Object, c, false))
		listen := portOf(e.listen(cmd))
		if !hasPort(c, intstr.FromInt32(listen)) {
			p.add(w.Object, field+".ports", "%s listens on %d (%s), which the container does not declare", imageName(c.Image), listen, e.listen(cmd))
		}
		if e.server == "nats" && !slices.ContainsFunc(natsCollectors, func(f string) bool { _, ok := cmd.flags[f]; return ok }) {
			p.add(w.Object, field+".args", "chooses no metrics (-varz, -connz, -jsz=all, ...): the exporter refuses to start")
		}
		src := e.source(cmd)
		u, err := url.Parse(src)
		if err != nil || u.Host == "" {
			p.add(w.Object, field, "%q is not the URL of a server to read", src)
			continue
		}
		if h := u.Hostname(); h != "localhost" && h != "127.0.0.1" && h != "::1" {
			continue // another pod's server: nothing to check offline
		}
		k := slices.IndexFunc(pod.Containers, func(s corev1.Container) bool { return imageName(s.Image) == e.server })
		if k < 0 {
			p.add(w.Object, field, "reads %s, but no %s container runs in the pod", src, e.server)
			continue
		}
		server := &pod.Containers[k]
		port := portOf(u.Host)
		if u.Port() == "" {
			port = defaultPorts[u.Scheme]
		}
		switch {
		case e.server == "nats" && u.Scheme != "http":
			p.add(w.Object, field+".args", "reads %s: want nats-server's monitoring URL, http://localhost:<http_port>", src)
		case !hasPort(server, intstr.FromInt32(port)):
			p.add(w.Object, field, "reads %s, but container %s declares no port %d", src, server.Name, port)
		case e.server == "nats":
			if opts, _, err := r.NATSOptions(w, true); err == nil && int32(opts.HTTPPort) != port {
				p.add(w.Object, field+".args", "reads %s, but nats-server's monitoring port (http_port) is %d", src, opts.HTTPPort)
			}
		case e.server == "redis":
			r.checkRedisPassword(p, w, field, c, cmd, server)
		}
	}
}

// checkRedisPassword checks that redis_exporter c logs in with the
// password the Redis container server requires (--requirepass).
func (r *Rendered) checkRedisPassword(p *problems, w Workload, field string, c *corev1.Container, cmd command, server *corev1.Container) {
	senv := r.env(w.Object, server, false)
	args := expandAll(server.Args, senv)
	i := slices.Index(args, "--requirepass")
	if i < 0 || i+1 == len(args) {
		return
	}
	if cmd.flagOrEnv("", "redis.password-file", "REDIS_PASSWORD_FILE") != "" {
		return // a mounted file: its content is not in the manifests
	}
	if got := cmd.flagOrEnv("", "redis.password", "REDIS_PASSWORD"); got != args[i+1] {
		p.add(w.Object, field+".env[REDIS_PASSWORD]", "is not the password container %s requires (--requirepass): take it from the same Secret key", server.Name)
	}
}
