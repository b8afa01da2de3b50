package k8s

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// exporterProblems returns what keeps Prometheus from a server's own
// metrics: every NATS and Redis pod must run its exporter
// (prometheus-nats-exporter, redis_exporter) and ask to be scraped on the
// exporter's port; with PodMonitors in the render (the servicemonitor
// component), one must scrape the exporter's port of each. Check makes
// sure those ports serve Prometheus's format; this makes sure they exist.
func exporterProblems(r *Rendered) []string {
	var out []string
	monitors := All[*PodMonitor](r)
	for _, w := range r.Workloads() {
		pod := &w.Template.Spec
		i := slices.IndexFunc(pod.Containers, func(c corev1.Container) bool {
			n := imageName(c.Image)
			return n == "nats" || n == "redis"
		})
		if i < 0 {
			continue
		}
		server := imageName(pod.Containers[i].Image)
		j := slices.IndexFunc(pod.Containers, func(c corev1.Container) bool {
			e, ok := exporterOf(&c)
			return ok && e.server == server
		})
		if j < 0 {
			out = append(out, fmt.Sprintf("%s: no exporter beside %s: Prometheus gets none of its metrics", w.Object, server))
			continue
		}
		c := &pod.Containers[j]
		e, _ := exporterOf(c)
		listen := portOf(e.listen(parseCommand(c.Args, e.valued, r.env(w.Object, c, false))))
		if ann := w.Template.Annotations; ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != fmt.Sprint(listen) {
			out = append(out, fmt.Sprintf("%s: annotations: want prometheus.io/scrape \"true\" and prometheus.io/port %q (%s), got %q and %q",
				w.Object, fmt.Sprint(listen), c.Name, ann["prometheus.io/scrape"], ann["prometheus.io/port"]))
		}
		if len(monitors) == 0 {
			continue
		}
		scraped := slices.ContainsFunc(monitors, func(pm *PodMonitor) bool {
			sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
			return err == nil && !sel.Empty() && pm.Namespace == w.Object.Namespace && sel.Matches(labels.Set(w.Template.Labels)) &&
				slices.ContainsFunc(pm.Spec.PodMetricsEndpoints, func(ep PodMetricsEndpoint) bool {
					k := slices.IndexFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == ep.Port })
					return k >= 0 && c.Ports[k].ContainerPort == listen
				})
		})
		if !scraped {
			out = append(out, fmt.Sprintf("%s: no PodMonitor scrapes container %s on %d", w.Object, c.Name, listen))
		}
	}
	return out
}

// Base, dev and prod carry both exporters where their servers run (prod's
// Redis is external: it has neither), scraped by annotation and, with the
// servicemonitor component, by PodMonitor.
func TestExporters(t *testing.T) {
	for dir, want := range map[string][]string{
		"base":          {"StatefulSet/nats", "StatefulSet/redis"},
		"overlays/dev":  {"StatefulSet/nats", "StatefulSet/redis"},
		"overlays/prod": {"StatefulSet/nats"},
	} {
		t.Run(dir, func(t *testing.T) {
			r := render(t, dir)
			for _, msg := range exporterProblems(r) {
				t.Error(msg)
			}
			var got []string
			for _, w := range r.Workloads() {
				if slices.ContainsFunc(w.Template.Spec.Containers, func(c corev1.Container) bool { _, ok := exporterOf(&c); return ok }) {
					got = append(got, w.Object.String())
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("workloads with an exporter (-want +got):\n%s", diff)
			}
			if dir == "overlays/prod" {
				if _, ok := r.Find("PodMonitor", "redis"); ok {
					t.Error("PodMonitor/redis: prod's Redis is external; the in-cluster one's PodMonitor must go with it")
				}
				if _, ok := r.Find("PodMonitor", "nats"); !ok {
					t.Error("PodMonitor/nats: missing; prod includes components/servicemonitor")
				}
			}
		})
	}
}

// Each case changes base (with the servicemonitor component) in one way
// that would leave Prometheus without a server's metrics: Check must
// report it, naming the object and the field, with one error for each
// place the change breaks (check lists a substring of each, in order); and
// exporterProblems as well where the exporter or its scrape is gone.
func TestScrapeTargets(t *testing.T) {
	const (
		nats  = "      kind: StatefulSet\n      name: nats\n"
		redis = "      kind: StatefulSet\n      name: redis\n"
		pm    = "      kind: PodMonitor\n      name: nats\n"
		sm    = "      kind: ServiceMonitor\n      name: allot\n"
	)
	// Each allot service's Service, through the ServiceMonitor.
	var services []string
	for _, name := range []string{"auth", "meter", "notifier", "ratelimit", "registry"} {
		services = append(services, fmt.Sprintf("ServiceMonitor/allot: spec.endpoints[0].port: Service/%s, Deployment/%s: path /stats: container %s serves its metrics on /metrics", name, name, name))
	}
	cases := []struct {
		name, target, patch string
		check, exporter     []string // a substring of each error, in order
	}{{
		name:     "nats-monitoring-port-annotated",
		target:   nats,
		patch:    "- op: replace\n  path: /spec/template/metadata/annotations/prometheus.io~1port\n  value: \"8222\"",
		check:    []string{"StatefulSet/nats: spec.template.metadata.annotations[prometheus.io/port]: port 8222 of container nats is nats-server's: its monitoring port serves JSON, not Prometheus's text format"},
		exporter: []string{`StatefulSet/nats: annotations: want prometheus.io/scrape "true" and prometheus.io/port "7777" (exporter), got "true" and "8222"`},
	}, {
		name:     "podmonitor-on-monitoring-port",
		target:   pm,
		patch:    "- op: replace\n  path: /spec/podMetricsEndpoints/0/port\n  value: monitor",
		check:    []string{"PodMonitor/nats: spec.podMetricsEndpoints[0].port: StatefulSet/nats: port 8222 of container nats is nats-server's"},
		exporter: []string{"StatefulSet/nats: no PodMonitor scrapes container exporter on 7777"},
	}, {
		name:   "podmonitor-wrong-path",
		target: pm,
		patch:  "- op: replace\n  path: /spec/podMetricsEndpoints/0/path\n  value: /varz",
		check:  []string{"PodMonitor/nats: spec.podMetricsEndpoints[0].port: StatefulSet/nats: path /varz: container exporter serves its metrics on /metrics"},
	}, {
		name:     "podmonitor-missing-port",
		target:   pm,
		patch:    "- op: replace\n  path: /spec/podMetricsEndpoints/0/port\n  value: metric",
		check:    []string{"PodMonitor/nats: spec.podMetricsEndpoints[0].port: StatefulSet/nats: metric is not a port of any container of the pod"},
		exporter: []string{"StatefulSet/nats: no PodMonitor scrapes container exporter on 7777"},
	}, {
		name:   "servicemonitor-wrong-path",
		target: sm,
		patch:  "- op: replace\n  path: /spec/endpoints/0/path\n  value: /stats",
		check:  services,
	}, {
		name:   "nats-exporter-missing",
		target: nats,
		patch:  "- op: remove\n  path: /spec/template/spec/containers/1",
		check: []string{
			"StatefulSet/nats: spec.template.metadata.annotations[prometheus.io/port]: 7777 is not a port of any container of the pod",
			"PodMonitor/nats: spec.podMetricsEndpoints[0].port: StatefulSet/nats: metrics is not a port of any container of the pod",
		},
		exporter: []string{"StatefulSet/nats: no exporter beside nats: Prometheus gets none of its metrics"},
	}, {
		name:   "nats-exporter-reads-wrong-port",
		target: nats,
		patch:  "- op: replace\n  path: /spec/template/spec/containers/1/args/9\n  value: http://localhost:4222",
		check:  []string{"StatefulSet/nats: spec.template.spec.containers[exporter].args: reads http://localhost:4222, but nats-server's monitoring port (http_port) is 8222"},
	}, {
		name:   "nats-exporter-reads-undeclared-port",
		target: nats,
		patch:  "- op: replace\n  path: /spec/template/spec/containers/1/args/9\n  value: http://localhost:8223",
		check:  []string{"StatefulSet/nats: spec.template.spec.containers[exporter]: reads http://localhost:8223, but container nats declares no port 8223"},
	}, {
		name:   "nats-exporter-listens-elsewhere",
		target: nats,
		patch:  "- op: replace\n  path: /spec/template/spec/containers/1/args/0\n  value: -port=7778",
		check: []string{
			"StatefulSet/nats: spec.template.metadata.annotations[prometheus.io/port]: port 7777 of container exporter is not the one prometheus-nats-exporter listens on (7778)",
			"StatefulSet/nats: spec.template.spec.containers[exporter].ports: prometheus-nats-exporter listens on 7778 (:7778), which the container does not declare",
			"PodMonitor/nats: spec.podMetricsEndpoints[0].port: StatefulSet/nats: port 7777 of container exporter is not the one prometheus-nats-exporter listens on (7778)",
		},
		exporter: []string{
			`StatefulSet/nats: annotations: want prometheus.io/scrape "true" and prometheus.io/port "7778" (exporter), got "true" and "7777"`,
			"StatefulSet/nats: no PodMonitor scrapes container exporter on 7778",
		},
	}, {
		name:   "nats-exporter-without-metrics",
		target: nats,
		patch:  "- op: replace\n  path: /spec/template/spec/containers/1/args\n  value: [-port=7777, http://localhost:8222]",
		check:  []string{"StatefulSet/nats: spec.template.spec.containers[exporter].args: chooses no metrics"},
	}, {
		name:     "redis-port-annotated",
		target:   redis,
		patch:    "- op: replace\n  path: /spec/template/metadata/annotations/prometheus.io~1port\n  value: \"6379\"",
		check:    []string{"StatefulSet/redis: spec.template.metadata.annotations[prometheus.io/port]: port 6379 of container redis (redis) serves no Prometheus metrics allot knows of"},
		exporter: []string{`StatefulSet/redis: annotations: want prometheus.io/scrape "true" and prometheus.io/port "9121" (exporter)`},
	}, {
		name:     "scrape-without-port",
		target:   redis,
		patch:    "- op: remove\n  path: /spec/template/metadata/annotations/prometheus.io~1port",
		check:    []string{"StatefulSet/redis: spec.template.metadata.annotations[prometheus.io/port]: missing: Prometheus would scrape every port the pod declares"},
		exporter: []string{`StatefulSet/redis: annotations: want prometheus.io/scrape "true" and prometheus.io/port "9121"`},
	}, {
		name:   "redis-exporter-reads-wrong-port",
		target: redis,
		patch:  "- op: replace\n  path: /spec/template/spec/containers/1/env/0/value\n  value: redis://localhost:6380",
		check:  []string{"StatefulSet/redis: spec.template.spec.containers[exporter]: reads redis://localhost:6380, but container redis declares no port 6380"},
	}, {
		name:   "redis-exporter-without-password",
		target: redis,
		patch:  "- op: remove\n  path: /spec/template/spec/containers/1/env/1",
		check:  []string{"StatefulSet/redis: spec.template.spec.containers[exporter].env[REDIS_PASSWORD]: is not the password container redis requires (--requirepass)"},
	}, {
		name:   "redis-exporter-missing",
		target: redis,
		patch:  "- op: remove\n  path: /spec/template/spec/containers/1",
		check: []string{
			"StatefulSet/redis: spec.template.metadata.annotations[prometheus.io/port]: 9121 is not a port of any container of the pod",
			"PodMonitor/redis: spec.podMetricsEndpoints[0].port: StatefulSet/redis: metrics is not a port of any container of the pod",
		},
		exporter: []string{"StatefulSet/redis: no exporter beside redis: Prometheus gets none of its metrics"},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fsys := inMemory(t)
			k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: allot\nresources:\n  - ../k8s/base\n" +
				"components:\n  - ../k8s/components/servicemonitor\npatches:\n  - target:\n" + tc.target +
				"    patch: |-\n      " + strings.ReplaceAll(tc.patch, "\n", "\n      ") + "\n"
			if err := writeFile(fsys, "/case/kustomization.yaml", []byte(k)); err != nil {
				t.Fatal(err)
			}
			r, err := Render(fsys, "/case")
			if err != nil {
				t.Fatal(err)
			}
			for what, want := range map[string][]string{"Check": tc.check, "exporterProblems": tc.exporter} {
				var got []string
				if what == "Check" {
					for _, err := range r.Check() {
						got = append(got, err.Error())
					}
				} else {
					got = exporterProblems(r)
				}
				if len(got) != len(want) {
					t.Errorf("%s: got %d errors, want %d:\n%s", what, len(got), len(want), strings.Join(got, "\n"))
					continue
				}
				for i, w := range want {
					if !strings.Contains(got[i], w) {
						t.Errorf("%s: error\n  %s\ndoes not contain %q", what, got[i], w)
					}
				}
			}
		})
	}
}

// The command lines the exporters are given are read as Go's flag package
// reads them: -name and --name, =value or, for the valued flags, the next
// argument; the first argument that is no flag ends them.
func TestParseCommand(t *testing.T) {
	valued := exporters["prometheus-nats-exporter"].valued
	env := map[string]string{"URL": "http://localhost:8222"}
	for _, tc := range []struct {
		args  []string
		flags map[string]string
		rest  []string
	}{
		{[]string{"-port=7777", "-varz", "http://localhost:8222"}, map[string]string{"port": "7777", "varz": "true"}, []string{"http://localhost:8222"}},
		{[]string{"--port", "7000", "-jsz", "all", "$(URL)"}, map[string]string{"port": "7000", "jsz": "all"}, []string{"http://localhost:8222"}},
		{[]string{"-p", "7001", "--", "-weird"}, map[string]string{"p": "7001"}, []string{"-weird"}},
		{[]string{"-varz", "http://a:1", "-connz"}, map[string]string{"varz": "true"}, []string{"http://a:1", "-connz"}},
		{[]string{"-port"}, map[string]string{"port": "true"}, nil},
		{nil, map[string]string{}, nil},
	} {
		cmd := parseCommand(tc.args, valued, env)
		if diff := cmp.Diff(tc.flags, cmd.flags); diff != "" {
			t.Errorf("parseCommand(%q): flags (-want +got):\n%s", tc.args, diff)
		}
		if diff := cmp.Diff(tc.rest, cmd.args); diff != "" {
			t.Errorf("parseCommand(%q): arguments (-want +got):\n%s", tc.args, diff)
		}
	}
	redis := exporters["redis_exporter"]
	for _, tc := range []struct {
		args                 []string
		env                  map[string]string
		listen, path, source string
	}{
		{nil, nil, ":9121", "/metrics", "redis://localhost:6379"},
		{nil, map[string]string{"REDIS_ADDR": "localhost:6380", "REDIS_EXPORTER_WEB_LISTEN_ADDRESS": ":9200"}, ":9200", "/metrics", "redis://localhost:6380"},
		{[]string{"--web.listen-address", ":9300", "-web.telemetry-path=/m", "-redis.addr=rediss://r:7000"}, map[string]string{"REDIS_EXPORTER_WEB_LISTEN_ADDRESS": ":9200"}, ":9300", "/m", "rediss://r:7000"},
	} {
		cmd := parseCommand(tc.args, redis.valued, tc.env)
		if got := [3]string{redis.listen(cmd), redis.scrapePath(cmd), redis.source(cmd)}; got != [3]string{tc.listen, tc.path, tc.source} {
			t.Errorf("redis_exporter %q with %v: listen, path, source %q, want %q", tc.args, tc.env, got, [3]string{tc.listen, tc.path, tc.source})
		}
	}
}
