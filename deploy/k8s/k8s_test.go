package k8s

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/auth"
	"github.com/allot/allot/services/notifier"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nkeys"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// render builds the kustomization in dir (relative to this module) and
// fails the test on a build or decoding error.
func render(t *testing.T, dir string) *Rendered {
	t.Helper()
	r, err := Render(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Every overlay, and the base alone (a small install), passes every rule.
func TestOverlaysPassCheck(t *testing.T) {
	for _, dir := range []string{"base", "overlays/dev", "overlays/prod", "testdata/good"} {
		t.Run(dir, func(t *testing.T) {
			r := render(t, dir)
			if len(r.Objects) == 0 {
				t.Fatal("renders no object")
			}
			for _, err := range r.Check() {
				t.Error(err)
			}
		})
	}
}

// Each fixture under testdata/bad breaks one rule: rendering or Check must
// fail with exactly one error, and that error must name the object and the
// field.
func TestBadFixtures(t *testing.T) {
	cases := map[string][]string{
		"typo-field":                     {"Deployment/web: ", `unknown field "spec.replicass"`},
		"service-selects-nothing":        {"Service/web: spec.selector: ", "selects no pod template"},
		"missing-readiness-probe":        {"Deployment/web: spec.template.spec.containers[web].readinessProbe: missing"},
		"latest-image":                   {"Deployment/web: spec.template.spec.containers[web].image: ", `"example.com/web:latest" uses the latest tag`},
		"untagged-image":                 {"Deployment/web: spec.template.spec.containers[web].image: ", "has no tag"},
		"missing-configmap-key":          {"Deployment/web: spec.template.spec.containers[web].env[LOG_LEVEL].valueFrom.configMapKeyRef: ", `ConfigMap "web-config" has no key "log_level"`},
		"missing-secret":                 {"Deployment/web: spec.template.spec.containers[web].env[API_TOKEN].valueFrom.secretKeyRef: ", `Secret "web-token" does not exist`},
		"target-port-mismatch":           {"Service/web: spec.ports[http].targetPort: ", "metrics is not a container port of Deployment/web"},
		"writable-root-filesystem":       {"Deployment/web: spec.template.spec.containers[web].securityContext.readOnlyRootFilesystem: must be true"},
		"pdb-blocks-drains":              {"PodDisruptionBudget/web: spec.minAvailable: ", "blocks every node drain"},
		"old-api-version":                {"HorizontalPodAutoscaler/web: ", "apiVersion autoscaling/v1 kind HorizontalPodAutoscaler is not one allot uses"},
		"notifier-without-token-secret":  {"Deployment/notifier: spec.template.spec.containers[notifier].env[ALLOT_NOTIFIER_TOKEN_SECRETS]: missing"},
		"old-nats-image":                 {"Deployment/web: spec.template.spec.containers[web].image: ", `"nats:2.9.25-alpine" must be tagged with nats-server 2.10.0 or later (service: unsupported nats-server: it runs 2.9.25-alpine; allot needs 2.10.0 or later)`},
		"notifier-token-secret-as-value": {"Deployment/notifier: spec.template.spec.containers[notifier].env[ALLOT_NOTIFIER_TOKEN_SECRETS]: must come from a Secret"},
		"service-without-key":            {"Deployment/meter: spec.template.spec.containers[meter].env[ALLOT_KEY]: missing: ", "without an API key"},
		"issuer-seed-as-value":           {"Deployment/auth: spec.template.spec.containers[auth].env[ALLOT_AUTH_ISSUER_SEED]: must come from a Secret"},
		"nats-without-auth-callout":      {"StatefulSet/nats: ConfigMap nats-config-", ", key nats.conf: authorization.auth_callout: missing: nats-server would not hand connections to the auth service"},
		"auth-users-without-auth-user":   {"StatefulSet/nats: ConfigMap nats-config-", `key nats.conf: authorization.auth_callout.auth_users: ["allot-sys"] lacks "allot-auth", the auth service's user (its own, nats.user)`},
		"nats-extra-user":                {"StatefulSet/nats: ConfigMap nats-config-", "key nats.conf: the access control is not what auth.ServerConfig.Render writes", `"backdoor in account $G, password: the auth service's nats.password"`, `"backdoor",`},
		"meter-section":                  {"Deployment/meter: ", "key allot.yaml: ", "meter.batch: must be between 1 and 10000, got 0"},
	}
	dirs, err := os.ReadDir("testdata/bad")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if _, ok := cases[d.Name()]; !ok {
			t.Errorf("testdata/bad/%s has no case in TestBadFixtures", d.Name())
		}
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join("testdata/bad", name)
			var errs []error
			r, err := Render(filesys.MakeFsOnDisk(), dir)
			if err != nil {
				errs = []error{err}
			} else {
				errs = r.Check()
			}
			if len(errs) != 1 {
				t.Fatalf("%s: got %d errors, want exactly 1:\n%v", dir, len(errs), errors.Join(errs...))
			}
			for _, w := range want {
				if !strings.Contains(errs[0].Error(), w) {
					t.Errorf("%s: error\n  %v\ndoes not contain %q", dir, errs[0], w)
				}
			}
		})
	}
}

// An image named nats, on any registry, must be tagged with the version
// of a nats-server allot runs on (2.10.0 or later, a patch version named);
// other images are not the rule's business.
func TestNATSImage(t *testing.T) {
	const refused = "must be tagged with nats-server 2.10.0 or later"
	for image, ok := range map[string]bool{
		"nats:2.15.2-alpine":                      true,
		"nats:2.10.0":                             true,
		"nats:3.0.0-scratch":                      true,
		"docker.io/library/nats:2.11.4":           true,
		"registry.local:5000/nats:2.12.1":         true,
		"registry.local:5000/library/nats:2.10.0": true,
		"nats:2.15.2-alpine@sha256:0123abcd":      true,
		"natsio/nats-box:0.14.5":                  true,
		"example.com/natsish:1.0":                 true,
		"registry.local:5000/nats-server:1.0":     true,
		"nats:2.9.25-alpine":                      false,
		"nats:1.4.1":                              false,
		"registry.local:5000/nats:2.9.10":         false,
		"nats:2.10":                               false, // a floating tag: which 2.10?
		"nats:2":                                  false,
		"nats:alpine":                             false,
		"nats:2.x.0":                              false,
		"nats@sha256:0123abcd":                    false,
		"nats:99999999999999999999.0.0":           false,
	} {
		got := natsProblem(image)
		if ok && got != "" || !ok && !strings.HasPrefix(got, refused) {
			t.Errorf("natsProblem(%q) = %q, want ok %v", image, got, ok)
		}
	}
}

// dev: one replica of every service, one NATS server and streams of one
// replica, the in-cluster Redis with AOF.
func TestDev(t *testing.T) {
	r := render(t, "overlays/dev")
	services := allotServices(t, r)
	for _, w := range services {
		if w.Replicas != 1 {
			t.Errorf("%s: spec.replicas: %d, want 1 in dev", w.Object, w.Replicas)
		}
	}
	for _, h := range All[*autoscalingv2.HorizontalPodAutoscaler](r) {
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas != 1 {
			t.Errorf("HorizontalPodAutoscaler/%s: spec.minReplicas: %v, want 1 in dev", h.Name, h.Spec.MinReplicas)
		}
	}
	checkNATS(t, r, 1)
	checkInClusterRedis(t, r)
	checkNetworkPolicies(t, r)
}

// prod: at least two replicas of every service spread over nodes, NATS of
// 3 with R3 streams, an external Redis only, ServiceMonitors.
func TestProd(t *testing.T) {
	r := render(t, "overlays/prod")
	for _, w := range allotServices(t, r) {
		if w.Replicas < 2 {
			t.Errorf("%s: spec.replicas: %d, want at least 2 in prod", w.Object, w.Replicas)
		}
		checkAntiAffinity(t, w)
		cfg, err := r.Config(w)
		if err != nil {
			t.Fatal(err)
		}
		if len(cfg.Redis.Addrs) == 0 || cfg.Redis.URL != "" {
			t.Errorf("%s: allot.yaml: redis: want an external Redis in redis.addrs (Cluster or Sentinel), got url %q addrs %v", w.Object, cfg.Redis.URL, cfg.Redis.Addrs)
		}
	}
	for _, h := range All[*autoscalingv2.HorizontalPodAutoscaler](r) {
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 {
			t.Errorf("HorizontalPodAutoscaler/%s: spec.minReplicas: %v, want at least 2 in prod", h.Name, h.Spec.MinReplicas)
		}
	}
	for _, kind := range []string{"StatefulSet", "Service", "NetworkPolicy"} {
		if _, ok := r.Find(kind, "redis"); ok {
			t.Errorf("%s/redis: prod uses an external Redis; the in-cluster one must be removed", kind)
		}
	}
	for _, w := range r.Workloads() {
		for _, c := range w.Template.Spec.Containers {
			if strings.HasPrefix(c.Image, "redis:") {
				t.Errorf("%s: container %s runs %s; prod's Redis is external", w.Object, c.Name, c.Image)
			}
		}
	}
	checkNATS(t, r, 3)
	checkNetworkPolicies(t, r)
	checkServiceMonitors(t, r)
}

// The base alone is a small install: NATS of 3, R3 streams, in-cluster
// Redis.
func TestBase(t *testing.T) {
	r := render(t, "base")
	allotServices(t, r)
	checkNATS(t, r, 3)
	checkInClusterRedis(t, r)
	checkNetworkPolicies(t, r)
}

// allotServices returns the allot services of r (at least the meter), each
// a Deployment with an HPA on CPU.
func allotServices(t *testing.T, r *Rendered) []Workload {
	t.Helper()
	var out []Workload
	for _, w := range r.Workloads() {
		if w.IsService() {
			out = append(out, w)
		}
	}
	if !slices.ContainsFunc(out, func(w Workload) bool { return w.Object.String() == "Deployment/meter" }) {
		t.Fatalf("no Deployment/meter labelled %s: allot", PartOf)
	}
	for _, w := range out {
		if w.Object.Kind != "Deployment" {
			t.Errorf("%s: an allot service runs as a Deployment", w.Object)
		}
	}
	if _, ok := r.Find("HorizontalPodAutoscaler", "meter"); !ok {
		t.Error("HorizontalPodAutoscaler/meter: missing")
	}
	for _, h := range All[*autoscalingv2.HorizontalPodAutoscaler](r) {
		if !slices.ContainsFunc(h.Spec.Metrics, func(m autoscalingv2.MetricSpec) bool {
			return m.Resource != nil && m.Resource.Name == corev1.ResourceCPU
		}) {
			t.Errorf("HorizontalPodAutoscaler/%s: spec.metrics: want a cpu Resource metric", h.Name)
		}
	}
	return out
}

// checkAntiAffinity checks that w prefers to put its replicas on different
// nodes.
func checkAntiAffinity(t *testing.T, w Workload) {
	t.Helper()
	a := w.Template.Spec.Affinity
	if a == nil || a.PodAntiAffinity == nil {
		t.Errorf("%s: spec.template.spec.affinity.podAntiAffinity: missing", w.Object)
		return
	}
	ok := slices.ContainsFunc(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution, func(term corev1.WeightedPodAffinityTerm) bool {
		sel, err := metav1.LabelSelectorAsSelector(term.PodAffinityTerm.LabelSelector)
		return err == nil && term.PodAffinityTerm.TopologyKey == "kubernetes.io/hostname" && !sel.Empty() && sel.Matches(labels.Set(w.Template.Labels))
	})
	if !ok {
		t.Errorf("%s: spec.template.spec.affinity.podAntiAffinity: want a preferred term on kubernetes.io/hostname selecting its own pods", w.Object)
	}
}

// routeRE finds a cluster route in nats.conf, such as
// nats://nats-1.nats-headless:6222.
var routeRE = regexp.MustCompile(`nats://(nats-\d+)\.([a-z0-9-]+):6222`)

// checkNATS checks the NATS StatefulSet: replicas servers with JetStream
// on a PersistentVolumeClaim, clustered over routes to every pod when more
// than one, reached through Service nats on 4222; and that every allot
// service connects there with streams of as many replicas as servers.
func checkNATS(t *testing.T, r *Rendered, replicas int32) {
	t.Helper()
	o, ok := r.Find("StatefulSet", "nats")
	if !ok {
		t.Fatal("StatefulSet/nats: missing")
	}
	ss := o.Value.(*appsv1.StatefulSet)
	if got := *ss.Spec.Replicas; got != replicas {
		t.Errorf("StatefulSet/nats: spec.replicas: %d, want %d", got, replicas)
	}
	c := &ss.Spec.Template.Spec.Containers[0]
	// Check holds an image named nats to service.MinNATSVersion or later;
	// the server must run one, or nothing would keep its version from
	// drifting below.
	if _, ok := natsImageTag(c.Image); !ok {
		t.Errorf("StatefulSet/nats: containers[nats].image: %q is not named nats, so no rule holds it to nats-server %s or later", c.Image, service.MinNATSVersion)
	}
	if msg := natsProblem(c.Image); msg != "" {
		t.Errorf("StatefulSet/nats: containers[nats].image: %q %s", c.Image, msg)
	}
	for name, port := range map[string]int32{"client": 4222, "cluster": 6222} {
		if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == name && p.ContainerPort == port }) {
			t.Errorf("StatefulSet/nats: containers[nats].ports: want %s on %d", name, port)
		}
	}
	i := slices.IndexFunc(c.Args, func(a string) bool { return a == "--config" || a == "-c" })
	if i < 0 || i+1 == len(c.Args) {
		t.Fatalf("StatefulSet/nats: containers[nats].args: want --config <file>, got %v", c.Args)
	}
	conf, cm, ok := r.mountedFile(o, &ss.Spec.Template.Spec, c, c.Args[i+1])
	if !ok {
		t.Fatalf("StatefulSet/nats: containers[nats].args: %s is not a key of a mounted ConfigMap", c.Args[i+1])
	}
	store := regexp.MustCompile(`(?m)^\s*store_dir:\s*"?([^"\s]+)`).FindStringSubmatch(conf)
	if !strings.Contains(conf, "jetstream") || store == nil {
		t.Errorf("ConfigMap/%s: nats.conf: want a jetstream block with store_dir", cm)
	} else if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return slices.Contains(ssClaims(ss), m.Name) && strings.HasPrefix(store[1], strings.TrimSuffix(m.MountPath, "/")+"/")
	}) {
		t.Errorf("StatefulSet/nats: JetStream's store_dir %s is not on a volumeClaimTemplate", store[1])
	}
	clustered := regexp.MustCompile(`(?m)^\s*cluster\s*\{`).MatchString(conf)
	switch {
	case replicas == 1 && clustered:
		t.Errorf("ConfigMap/%s: nats.conf: a single server must not have a cluster block: JetStream would wait for peers", cm)
	case replicas > 1:
		if !clustered || !strings.Contains(conf, "port: 6222") {
			t.Errorf("ConfigMap/%s: nats.conf: want a cluster block on port 6222 for %d servers", cm, replicas)
		}
		var got []string
		for _, m := range routeRE.FindAllStringSubmatch(conf, -1) {
			got = append(got, m[1])
			if m[2] != ss.Spec.ServiceName {
				t.Errorf("ConfigMap/%s: nats.conf: route %s goes through %q, not the governing Service %q", cm, m[0], m[2], ss.Spec.ServiceName)
			}
		}
		for n := range replicas {
			if pod := fmt.Sprintf("nats-%d", n); !slices.Contains(got, pod) {
				t.Errorf("ConfigMap/%s: nats.conf: cluster.routes: no route to %s", cm, pod)
			}
		}
	}
	checkLameDuck(t, ss, c, conf, cm)
	so, ok := r.Find("Service", "nats")
	if !ok || !slices.ContainsFunc(so.Value.(*corev1.Service).Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == 4222 }) {
		t.Error("Service/nats: want the client Service on port 4222")
	}
	for _, w := range allotServices(t, r) {
		cfg, err := r.Config(w)
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Streams.Replicas; int32(got) != replicas {
			t.Errorf("%s: allot.yaml: streams.replicas: %d, want %d for %d NATS server(s)", w.Object, got, replicas, replicas)
		}
		if !strings.HasPrefix(cfg.NATS.URL.Reveal(), "nats://nats:4222") {
			t.Errorf("%s: allot.yaml: nats.url: %s, want nats://nats:4222", w.Object, cfg.NATS.URL.Reveal())
		}
	}
}

// checkLameDuck checks that a NATS pod enters lame duck mode before it
// stops (its preStop hook signals the pid file's server) and that lame duck
// ends inside the pod's grace period.
func checkLameDuck(t *testing.T, ss *appsv1.StatefulSet, c *corev1.Container, conf, cm string) {
	t.Helper()
	pid := regexp.MustCompile(`(?m)^\s*pid_file:\s*"?([^"\s]+)`).FindStringSubmatch(conf)
	if pid == nil {
		t.Errorf("ConfigMap/%s: nats.conf: want a pid_file for the preStop hook", cm)
		return
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Exec == nil ||
		!slices.Contains(c.Lifecycle.PreStop.Exec.Command, "ldm="+pid[1]) {
		t.Errorf("StatefulSet/nats: containers[nats].lifecycle.preStop: want nats-server --signal ldm=%s", pid[1])
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return !m.ReadOnly && m.MountPath == path.Dir(pid[1]) }) {
		t.Errorf("StatefulSet/nats: containers[nats].volumeMounts: %s (pid_file) is not on a writable volume", path.Dir(pid[1]))
	}
	var total time.Duration
	for _, key := range []string{"lame_duck_duration", "lame_duck_grace_period"} {
		m := regexp.MustCompile(`(?m)^\s*` + key + `:\s*"?([0-9a-z]+)`).FindStringSubmatch(conf)
		if m == nil {
			t.Errorf("ConfigMap/%s: nats.conf: %s: missing", cm, key)
			continue
		}
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Errorf("ConfigMap/%s: nats.conf: %s: %v", cm, key, err)
		}
		total += d
	}
	grace := ss.Spec.Template.Spec.TerminationGracePeriodSeconds
	if grace == nil || time.Duration(*grace)*time.Second <= total {
		t.Errorf("StatefulSet/nats: spec.template.spec.terminationGracePeriodSeconds: %v, want above lame duck's %s", grace, total)
	}
}

func ssClaims(ss *appsv1.StatefulSet) []string {
	var out []string
	for _, c := range ss.Spec.VolumeClaimTemplates {
		out = append(out, c.Name)
	}
	return out
}

// checkInClusterRedis checks the Redis StatefulSet: AOF on its
// PersistentVolumeClaim, the password from Secret allot-redis as the
// services have it, and every service pointed at it.
func checkInClusterRedis(t *testing.T, r *Rendered) {
	t.Helper()
	o, ok := r.Find("StatefulSet", "redis")
	if !ok {
		t.Fatal("StatefulSet/redis: missing")
	}
	ss := o.Value.(*appsv1.StatefulSet)
	c := ss.Spec.Template.Spec.Containers[0]
	args := strings.Join(c.Args, " ")
	if !strings.Contains(args, "--appendonly yes") {
		t.Errorf("StatefulSet/redis: containers[redis].args: want --appendonly yes, got %q", args)
	}
	dir := regexp.MustCompile(`--dir (\S+)`).FindStringSubmatch(args)
	if dir == nil || !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return slices.Contains(ssClaims(ss), m.Name) && m.MountPath == dir[1]
	}) {
		t.Errorf("StatefulSet/redis: containers[redis].args: --dir must be the mount of a volumeClaimTemplate, got %q", args)
	}
	if !strings.Contains(args, "--requirepass $(REDIS_PASSWORD)") || !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "REDIS_PASSWORD" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == "allot-redis"
	}) {
		t.Error("StatefulSet/redis: containers[redis]: want --requirepass $(REDIS_PASSWORD) from Secret allot-redis")
	}
	for _, w := range allotServices(t, r) {
		cfg, err := r.Config(w)
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Redis.URL.Reveal(); !strings.HasPrefix(got, "redis://redis:6379") {
			t.Errorf("%s: allot.yaml: redis.url: %s, want the in-cluster redis://redis:6379", w.Object, got)
		}
		if cfg.Redis.Password.Reveal() == "" {
			t.Errorf("%s: REDIS_PASSWORD: empty; want it from Secret allot-redis", w.Object)
		}
	}
}

// checkNetworkPolicies checks the ingress rules: nothing reaches a pod
// unless allowed; applications reach NATS on 4222; only allot services
// reach Redis, on 6379; the services take only Prometheus's scrapes on
// 8080; Prometheus reaches the exporters beside NATS and Redis on 7777 and
// 9121, and nothing reaches nats-server's monitoring port, 8222.
func checkNetworkPolicies(t *testing.T, r *Rendered) {
	t.Helper()
	nps := All[*networkingv1.NetworkPolicy](r)
	if !slices.ContainsFunc(nps, func(np *networkingv1.NetworkPolicy) bool {
		return len(np.Spec.PodSelector.MatchLabels)+len(np.Spec.PodSelector.MatchExpressions) == 0 &&
			slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) && len(np.Spec.Ingress) == 0
	}) {
		t.Error("NetworkPolicy: want a default deny of ingress (podSelector {}, policyTypes [Ingress], no rules)")
	}
	// The policies that apply to the pods of a workload.
	applying := func(w Workload) []*networkingv1.NetworkPolicy {
		var out []*networkingv1.NetworkPolicy
		for _, np := range nps {
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			if err == nil && sel.Matches(labels.Set(w.Template.Labels)) && len(np.Spec.Ingress) > 0 {
				out = append(out, np)
			}
		}
		return out
	}
	ports := func(rule networkingv1.NetworkPolicyIngressRule) []int32 {
		var out []int32
		for _, p := range rule.Ports {
			if p.Port == nil {
				out = append(out, 0) // every port
			} else {
				out = append(out, p.Port.IntVal)
			}
		}
		if len(rule.Ports) == 0 {
			out = append(out, 0)
		}
		return out
	}
	isAllot := func(peer networkingv1.NetworkPolicyPeer) bool {
		return peer.NamespaceSelector == nil && peer.IPBlock == nil && peer.PodSelector != nil &&
			peer.PodSelector.MatchLabels[PartOf] == "allot"
	}
	peers := func(rule networkingv1.NetworkPolicyIngressRule) string {
		if len(rule.From) == 0 {
			return "anywhere"
		}
		var out []string
		for _, p := range rule.From {
			var parts []string
			if p.NamespaceSelector != nil {
				parts = append(parts, "namespaces "+metav1.FormatLabelSelector(p.NamespaceSelector))
			}
			if p.PodSelector != nil {
				parts = append(parts, "pods "+metav1.FormatLabelSelector(p.PodSelector))
			}
			if p.IPBlock != nil {
				parts = append(parts, "ipBlock "+p.IPBlock.CIDR)
			}
			out = append(out, strings.Join(parts, " and "))
		}
		return strings.Join(out, "; ")
	}
	isPrometheus := func(peer networkingv1.NetworkPolicyPeer) bool {
		return peer.PodSelector != nil && peer.PodSelector.MatchLabels["app.kubernetes.io/name"] == "prometheus"
	}
	for _, w := range r.Workloads() {
		rules := []networkingv1.NetworkPolicyIngressRule{}
		for _, np := range applying(w) {
			rules = append(rules, np.Spec.Ingress...)
		}
		name := w.Template.Labels["app.kubernetes.io/name"]
		// Prometheus-only rules on the exporter's port.
		isScrape := func(rule networkingv1.NetworkPolicyIngressRule, port int32) bool {
			return slices.Equal(ports(rule), []int32{port}) && len(rule.From) > 0 &&
				!slices.ContainsFunc(rule.From, func(p networkingv1.NetworkPolicyPeer) bool { return !isPrometheus(p) })
		}
		switch {
		case w.IsService():
			scraped := false
			for _, rule := range rules {
				if !slices.Equal(ports(rule), []int32{8080}) || len(rule.From) == 0 || !slices.ContainsFunc(rule.From, isPrometheus) {
					t.Errorf("%s: a NetworkPolicy lets in %v from %s; an allot service takes only Prometheus on 8080", w.Object, ports(rule), peers(rule))
				}
				scraped = true
			}
			if !scraped {
				t.Errorf("%s: no NetworkPolicy lets Prometheus scrape 8080", w.Object)
			}
		case name == "nats":
			open := slices.ContainsFunc(rules, func(rule networkingv1.NetworkPolicyIngressRule) bool {
				return len(rule.From) == 0 && slices.Equal(ports(rule), []int32{4222})
			})
			if !open {
				t.Errorf("%s: no NetworkPolicy lets applications reach 4222", w.Object)
			}
			if !slices.ContainsFunc(rules, func(rule networkingv1.NetworkPolicyIngressRule) bool { return isScrape(rule, 7777) }) {
				t.Errorf("%s: no NetworkPolicy lets Prometheus scrape the exporter on 7777", w.Object)
			}
			for _, rule := range rules {
				if slices.Contains(ports(rule), 0) {
					t.Errorf("%s: a NetworkPolicy rule opens every port", w.Object)
				}
				if slices.Contains(ports(rule), 8222) {
					t.Errorf("%s: a NetworkPolicy lets %s reach 8222, nats-server's monitoring port (JSON, read by the exporter over localhost)", w.Object, peers(rule))
				}
			}
		case name == "redis":
			if !slices.ContainsFunc(rules, func(rule networkingv1.NetworkPolicyIngressRule) bool { return slices.Equal(ports(rule), []int32{6379}) }) {
				t.Errorf("%s: no NetworkPolicy lets the allot services reach 6379", w.Object)
			}
			if !slices.ContainsFunc(rules, func(rule networkingv1.NetworkPolicyIngressRule) bool { return isScrape(rule, 9121) }) {
				t.Errorf("%s: no NetworkPolicy lets Prometheus scrape the exporter on 9121", w.Object)
			}
			for _, rule := range rules {
				if isScrape(rule, 9121) {
					continue
				}
				if !slices.Equal(ports(rule), []int32{6379}) || len(rule.From) == 0 || !slices.ContainsFunc(rule.From, isAllot) || slices.ContainsFunc(rule.From, func(p networkingv1.NetworkPolicyPeer) bool { return !isAllot(p) }) {
					t.Errorf("%s: a NetworkPolicy lets in %v from %s; only allot services may reach Redis, on 6379, and only Prometheus its exporter, on 9121", w.Object, ports(rule), peers(rule))
				}
			}
		default:
			t.Errorf("%s: no network policy rules are known for it", w.Object)
		}
	}
	for _, msg := range egressProblems(t, r) {
		t.Error(msg)
	}
}

// egressProblems returns what an allot service cannot reach that it needs:
// DNS (53, UDP and TCP), its NATS and Redis ports from its allot.yaml, and
// for the notifier its SMTP relay's port outside the cluster. A pod no
// egress policy selects reaches everything.
func egressProblems(t *testing.T, r *Rendered) []string {
	t.Helper()
	type dest struct {
		what     string
		protocol corev1.Protocol
		port     int32
		external bool // outside the cluster: only an ipBlock or no peer reaches it
	}
	portOf := func(what, hostport string) dest {
		_, p, err := net.SplitHostPort(hostport)
		n, err2 := strconv.ParseInt(p, 10, 32)
		if err != nil || err2 != nil {
			t.Fatalf("%s: %q has no port", what, hostport)
		}
		return dest{what: what, protocol: corev1.ProtocolTCP, port: int32(n)}
	}
	var out []string
	for _, w := range allotServices(t, r) {
		cfg, err := r.Config(w)
		if err != nil {
			t.Fatal(err)
		}
		needs := []dest{
			{what: "DNS", protocol: corev1.ProtocolUDP, port: 53},
			{what: "DNS", protocol: corev1.ProtocolTCP, port: 53},
		}
		if u, err := url.Parse(cfg.NATS.URL.Reveal()); err == nil {
			needs = append(needs, portOf("NATS", u.Host))
		}
		if u := cfg.Redis.URL.Reveal(); u != "" {
			if pu, err := url.Parse(u); err == nil {
				needs = append(needs, portOf("Redis", pu.Host))
			}
		}
		for _, a := range cfg.Redis.Addrs {
			needs = append(needs, portOf("Redis", a))
		}
		if w.Template.Labels["app.kubernetes.io/name"] == "notifier" {
			needs = append(needs, dest{what: "the SMTP relay (notifier.smtp.port)", protocol: corev1.ProtocolTCP, port: int32(notifierSettings(t, r, w).SMTP.Port), external: true})
		}
		var rules []networkingv1.NetworkPolicyEgressRule
		restricted := false
		for _, np := range All[*networkingv1.NetworkPolicy](r) {
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			if err != nil || np.Namespace != w.Object.Namespace || !sel.Matches(labels.Set(w.Template.Labels)) {
				continue
			}
			if slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) || len(np.Spec.Egress) > 0 {
				restricted = true
				rules = append(rules, np.Spec.Egress...)
			}
		}
		if !restricted {
			continue
		}
		for _, d := range needs {
			open := slices.ContainsFunc(rules, func(rule networkingv1.NetworkPolicyEgressRule) bool {
				if d.external && len(rule.To) > 0 && !slices.ContainsFunc(rule.To, func(p networkingv1.NetworkPolicyPeer) bool { return p.IPBlock != nil }) {
					return false
				}
				if len(rule.Ports) == 0 {
					return true
				}
				return slices.ContainsFunc(rule.Ports, func(p networkingv1.NetworkPolicyPort) bool {
					proto := corev1.ProtocolTCP
					if p.Protocol != nil {
						proto = *p.Protocol
					}
					if proto != d.protocol {
						return false
					}
					if p.Port == nil {
						return true
					}
					end := p.Port.IntVal
					if p.EndPort != nil {
						end = *p.EndPort
					}
					return p.Port.IntVal <= d.port && d.port <= end
				})
			})
			if !open {
				out = append(out, fmt.Sprintf("%s: its egress NetworkPolicies do not let it reach %s on %s %d", w.Object, d.what, d.protocol, d.port))
			}
		}
	}
	return out
}

// checkServiceMonitors checks that every allot service has a Service
// scraped by a ServiceMonitor on its http port.
func checkServiceMonitors(t *testing.T, r *Rendered) {
	t.Helper()
	sms := All[*ServiceMonitor](r)
	if len(sms) == 0 {
		t.Fatal("ServiceMonitor: none; prod includes components/servicemonitor")
	}
	for _, w := range allotServices(t, r) {
		scraped := false
		for _, svc := range All[*corev1.Service](r) {
			if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(w.Template.Labels)) || len(svc.Spec.Selector) == 0 {
				continue
			}
			for _, sm := range sms {
				sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
				if err == nil && sel.Matches(labels.Set(svc.Labels)) && slices.ContainsFunc(sm.Spec.Endpoints, func(e ServiceMonitorEndpoint) bool {
					return e.Port == "http" && e.Path == "/metrics"
				}) {
					scraped = true
				}
			}
		}
		if !scraped {
			t.Errorf("%s: no ServiceMonitor scrapes /metrics on port http of a Service selecting it", w.Object)
		}
	}
}

// The notifier, in base and in every overlay: a service like the others
// (Check and the overlay tests see to that) that takes its token secret and
// its relay's host and credentials from the Secrets, whose placeholders get
// as far as the notifier's own CHANGE-ME- refusal, and whose allot.yaml
// names a confirmation page and a sender other than the defaults.
func TestNotifier(t *testing.T) {
	for dir, replicas := range map[string]int32{"base": 2, "overlays/dev": 1, "overlays/prod": 2} {
		t.Run(dir, func(t *testing.T) {
			r := render(t, dir)
			services := allotServices(t, r)
			i := slices.IndexFunc(services, func(w Workload) bool { return w.Object.String() == "Deployment/notifier" })
			if i < 0 {
				t.Fatalf("no Deployment/notifier labelled %s: allot", PartOf)
			}
			w := services[i]
			if w.Replicas != replicas {
				t.Errorf("%s: spec.replicas: %d, want %d", w.Object, w.Replicas, replicas)
			}
			for _, kind := range []string{"Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} {
				if _, ok := r.Find(kind, "notifier"); !ok {
					t.Errorf("%s/notifier: missing", kind)
				}
			}
			c := w.Template.Spec.Containers[0]
			for env, ref := range map[string][2]string{
				"ALLOT_NOTIFIER_TOKEN_SECRETS": {"allot-notifier", "token-secrets"},
				"ALLOT_SMTP_HOST":              {"allot-smtp", "host"},
				"ALLOT_SMTP_USERNAME":          {"allot-smtp", "username"},
				"ALLOT_SMTP_PASSWORD":          {"allot-smtp", "password"},
			} {
				if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
					return e.Name == env && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil &&
						e.ValueFrom.SecretKeyRef.Name == ref[0] && e.ValueFrom.SecretKeyRef.Key == ref[1]
				}) {
					t.Errorf("%s: env[%s]: want it from Secret %s, key %s", w.Object, env, ref[0], ref[1])
				}
			}
			nc := notifierSettings(t, r, w)
			if len(nc.TokenSecrets) == 0 {
				t.Fatalf("%s: notifier.token_secrets: empty", w.Object)
			}
			for i, s := range nc.TokenSecrets {
				// Shorter, and Validate would stop the pod with a length
				// error instead of the notifier's "put a random secret in".
				if !strings.HasPrefix(s.Reveal(), Placeholder) || len(s.Reveal()) < notifier.MinTokenSecretLen {
					t.Errorf("%s: notifier.token_secrets[%d]: want a %s placeholder of at least %d characters", w.Object, i, Placeholder, notifier.MinTokenSecretLen)
				}
			}
			if nc.SMTP.Host == "" || nc.SMTP.Username == "" || nc.SMTP.Password.Reveal() == "" {
				t.Errorf("%s: notifier.smtp: want host, username and password from Secret allot-smtp", w.Object)
			}
			def := notifier.DefaultSettings()
			if nc.ConfirmURL == def.ConfirmURL {
				t.Errorf("%s: allot.yaml: notifier.confirm_url: the default %s points inside the pod; want the application's page", w.Object, nc.ConfirmURL)
			}
			if nc.SMTP.From == def.SMTP.From {
				t.Errorf("%s: allot.yaml: notifier.smtp.from: the default %s is no sender a relay accepts", w.Object, nc.SMTP.From)
			}
		})
	}
}

// The egress rule bites: a default deny of egress for the allot services
// that lets through DNS, NATS and Redis but not SMTP must be reported for
// the notifier alone.
func TestEgressPolicyMustLetTheNotifierMail(t *testing.T) {
	fsys := inMemory(t)
	np := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allot-egress
spec:
  podSelector:
    matchLabels:
      app.kubernetes.io/part-of: allot
  policyTypes:
    - Egress
  egress:
    - ports:
        - protocol: UDP
          port: 53
        - protocol: TCP
          port: 53
        - protocol: TCP
          port: 4222
        - protocol: TCP
          port: 6379
`
	kust, err := fsys.ReadFile("/k8s/base/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for path, text := range map[string]string{
		"/k8s/base/egress.yaml":        np,
		"/k8s/base/kustomization.yaml": strings.Replace(string(kust), "  - networkpolicies.yaml\n", "  - networkpolicies.yaml\n  - egress.yaml\n", 1),
	} {
		if err := fsys.WriteFile(path, []byte(text)); err != nil {
			t.Fatal(err)
		}
	}
	r, err := Render(fsys, "/k8s/base")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"Deployment/notifier: its egress NetworkPolicies do not let it reach the SMTP relay (notifier.smtp.port) on TCP 587"}
	if diff := cmp.Diff(want, egressProblems(t, r)); diff != "" {
		t.Errorf("egress problems (-want +got):\n%s", diff)
	}
}

// A later service (ratelimit, registry, notifier) is one file: meter.yaml
// copied under another name, listed in the base. This renders the overlays
// with such a copy and wants it to pass every rule and to get each
// overlay's replicas, spreading and scraping without touching the overlays.
func TestNewServiceIsOneCopiedFile(t *testing.T) {
	fsys := inMemory(t)
	meter, err := fsys.ReadFile("/k8s/base/meter.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kust, err := fsys.ReadFile("/k8s/base/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(kust), "  - meter.yaml\n") {
		t.Fatal("base/kustomization.yaml: resources: no line `  - meter.yaml`")
	}
	for path, text := range map[string]string{
		"/k8s/base/demo.yaml":          strings.ReplaceAll(string(meter), "meter", "demo"),
		"/k8s/base/kustomization.yaml": strings.Replace(string(kust), "  - meter.yaml\n", "  - meter.yaml\n  - demo.yaml\n", 1),
	} {
		if err := fsys.WriteFile(path, []byte(text)); err != nil {
			t.Fatal(err)
		}
	}
	for overlay, replicas := range map[string]int32{"dev": 1, "prod": 2} {
		t.Run(overlay, func(t *testing.T) {
			r, err := Render(fsys, "/k8s/overlays/"+overlay)
			if err != nil {
				t.Fatal(err)
			}
			for _, err := range r.Check() {
				t.Error(err)
			}
			i := slices.IndexFunc(r.Workloads(), func(w Workload) bool { return w.Object.String() == "Deployment/demo" })
			if i < 0 {
				t.Fatal("Deployment/demo: not rendered")
			}
			w := r.Workloads()[i]
			if w.Replicas != replicas {
				t.Errorf("Deployment/demo: spec.replicas: %d, want %d", w.Replicas, replicas)
			}
			if overlay == "prod" {
				checkAntiAffinity(t, w)
				checkServiceMonitors(t, r)
			}
			checkNetworkPolicies(t, r)
		})
	}
}

// inMemory copies the manifests (base, components, overlays) under /k8s of
// an in-memory filesystem, for tests that add files beside them.
func inMemory(t *testing.T) filesys.FileSystem {
	t.Helper()
	fsys := filesys.MakeFsInMemory()
	copyManifests(t, fsys, "/k8s")
	return fsys
}

// copyManifests copies base, components and overlays under root of fsys.
func copyManifests(t *testing.T, fsys filesys.FileSystem, root string) {
	t.Helper()
	for _, dir := range []string{"base", "components", "overlays"} {
		err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return writeFile(fsys, path.Join(root, filepath.ToSlash(p)), b)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// writeFile writes b at p of fsys, making its folder first (the disk
// needs it).
func writeFile(fsys filesys.FileSystem, p string, b []byte) error {
	if err := fsys.MkdirAll(path.Dir(p)); err != nil {
		return err
	}
	return fsys.WriteFile(p, b)
}

// secretValues are the real values a private overlay puts in the Secrets
// that NATS, the auth service and the services read, by Secret and key.
type secretValues map[string]map[string]string

// realSecrets makes real values for every Secret the deployment's access
// control and Redis read, as the README says to make them: an issuer pair
// from `allot keys issuer`, API keys from `allot keys new`, passwords of
// letters and digits.
func realSecrets(t *testing.T) secretValues {
	t.Helper()
	kp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	public, _ := kp.PublicKey()
	key := func() string {
		k, err := auth.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	return secretValues{
		"allot-redis":     {"password": "s3cret"},
		"allot-nats-auth": {"auth-password": "pAuth0123456789", "sys-password": "pSys0123456789"},
		"allot-auth":      {"issuer-seed": string(seed), "issuer-public": public},
		"allot-keys":      {"service": key(), "admin": key()},
	}
}

// privateOverlay is the README's overlay of one's own, as files under
// root: over the overlay at base (relative to root/private, such as
// ../k8s/overlays/prod) it replaces the Secrets of values, each key from a
// file of its own.
func privateOverlay(root, base string, values secretValues) map[string]string {
	files := map[string]string{}
	var k strings.Builder
	fmt.Fprintf(&k, "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\nsecretGenerator:\n", base)
	for _, name := range slices.Sorted(maps.Keys(values)) {
		fmt.Fprintf(&k, "  - name: %s\n    namespace: allot\n    behavior: replace\n    files:\n", name)
		for _, key := range slices.Sorted(maps.Keys(values[name])) {
			file := name + "-" + key + ".txt"
			fmt.Fprintf(&k, "      - %s=%s\n", key, file)
			files[root+"/private/"+file] = values[name][key]
		}
	}
	files[root+"/private/kustomization.yaml"] = k.String()
	return files
}

// renderPrivate renders a private overlay of values over base (a path
// under /k8s) on an in-memory copy of the manifests.
func renderPrivate(t *testing.T, base string, values secretValues) *Rendered {
	t.Helper()
	fsys := inMemory(t)
	for p, text := range privateOverlay("", "../k8s/"+base, values) {
		if err := writeFile(fsys, p, []byte(text)); err != nil {
			t.Fatal(err)
		}
	}
	r, err := Render(fsys, "/private")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// checkOnlyPlaceholderRule checks that Check objects to the real values
// of values (each is no CHANGE-ME- placeholder) and to nothing else but
// what want lists (substrings of one error each).
func checkOnlyPlaceholderRule(t *testing.T, r *Rendered, values secretValues, want ...string) {
	t.Helper()
	placeholders := 0
	var others []error
	for _, err := range r.Check() {
		if strings.Contains(err.Error(), "must be a CHANGE-ME- placeholder") {
			placeholders++
		} else {
			others = append(others, err)
		}
	}
	n := 0
	for _, keys := range values {
		n += len(keys)
	}
	if placeholders != n {
		t.Errorf("the placeholder rule objects to %d values, want the %d real ones", placeholders, n)
	}
	if len(others) != len(want) {
		t.Fatalf("want %d other errors (%q), got %d:\n%v", len(want), want, len(others), errors.Join(others...))
	}
	for i, w := range want {
		if !strings.Contains(others[i].Error(), w) {
			t.Errorf("error\n  %v\ndoes not contain %q", others[i], w)
		}
	}
}

// The README's way to put real secrets in: an overlay of one's own, kept
// out of this repository, that replaces the Secrets from files. The
// services, the auth service and NATS must then get the real values under
// the same Secret names and keys, and every rule but the placeholder one
// must hold with them as they are (no stand-ins).
func TestPrivateOverlayReplacesSecrets(t *testing.T) {
	values := realSecrets(t)
	r := renderPrivate(t, "overlays/prod", values)
	checkOnlyPlaceholderRule(t, r, values)
	serviceKey := values["allot-keys"]["service"]
	for _, w := range allotServices(t, r) {
		cfg, err := r.Config(w)
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Redis.Password.Reveal(); got != "s3cret" {
			t.Errorf("%s: REDIS_PASSWORD: %q, want the private overlay's", w.Object, got)
		}
		if w.Template.Labels["app.kubernetes.io/name"] == authName {
			continue
		}
		if got := cfg.NATS.Key.Reveal(); got != serviceKey {
			t.Errorf("%s: ALLOT_KEY: %q, want the private overlay's service key", w.Object, got)
		}
	}
	a := authWorkload(t, r)
	cfg, err := r.loadAuthConfig(a.Object, &a.Template.Spec, &a.Template.Spec.Containers[0], "containers[auth]")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"service=" + serviceKey, "admin=" + values["allot-keys"]["admin"]}
	var got []string
	for _, k := range cfg.StaticKeys {
		got = append(got, k.Reveal())
	}
	if !slices.Equal(got, want) {
		t.Errorf("Deployment/auth: auth.static_keys: got %q, want the service and admin keys of the private overlay", got)
	}
	opts, where, err := r.NATSOptions(natsWorkload(t, r), false)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	if got, want := opts.AuthCallout.Issuer, values["allot-auth"]["issuer-public"]; got != want {
		t.Errorf("%s: auth_callout.issuer: %s, want the private overlay's %s", where, got, want)
	}
}

// Every kubectl from 1.31 on applies the same objects: base, the overlays
// and a private overlay over prod render byte for byte alike with the
// oldest kustomize supported (module kustomize-oldest: v5.4.2, as kubectl
// 1.31 embeds) and with the kustomize API this module imports (the newest).
// kubectl 1.32 and 1.33 embed v5.5.0 and v5.6.0, between the two.
func TestOldestKustomize(t *testing.T) {
	kustomize := oldestKustomize(t)
	root := t.TempDir()
	fsys := filesys.MakeFsOnDisk()
	copyManifests(t, fsys, filepath.Join(root, "k8s"))
	for p, text := range privateOverlay(root, "../k8s/overlays/prod", realSecrets(t)) {
		if err := writeFile(fsys, p, []byte(text)); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []string{"k8s/base", "k8s/overlays/dev", "k8s/overlays/prod", "private"} {
		t.Run(dir, func(t *testing.T) {
			dir := filepath.Join(root, dir)
			want, err := Render(fsys, dir)
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd := exec.Command(kustomize, "build", dir)
			cmd.Stderr = &stderr
			got, err := cmd.Output()
			if err != nil {
				t.Fatalf("the oldest kustomize supported fails where the newest renders: kustomize build: %v\n%s", err, firstLines(stderr.String(), 12))
			}
			lines := func(b []byte) []string { return strings.Split(string(b), "\n") }
			if diff := cmp.Diff(lines(want.YAML), lines(got)); diff != "" {
				t.Errorf("the oldest kustomize supported renders otherwise, by line (-newest +oldest):\n%s", diff)
			}
		})
	}
}

// oldestKustomize builds the kustomize that module kustomize-oldest pins
// and returns the executable's path.
//
// One test binary cannot link two versions of the kustomize API, so the
// oldest runs as a program of its own module (not in go.work), built by
// `go tool`, which keeps the executable in the Go build cache: the first
// run fetches it through the Go module proxy and compiles it (about 70 s
// of CPU, 3 minutes on a busy two-core machine), later runs take about a
// second. Where it cannot be built (a laptop offline) the test skips and
// says why, unless ALLOT_REQUIRE_INTEGRATION=1, which CI sets so that
// nothing outside the process is silently missing; -short skips it too.
func oldestKustomize(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: not building the oldest kustomize supported")
	}
	var stderr bytes.Buffer
	cmd := exec.Command("go", "tool", "-n", "kustomize")
	cmd.Dir = "kustomize-oldest"
	cmd.Env = append(os.Environ(), "GOWORK=off")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	path := strings.TrimSpace(string(out))
	if err == nil && path == "" {
		err = errors.New("printed no path")
	}
	if err != nil {
		msg := fmt.Sprintf("building the oldest kustomize supported (go tool -n kustomize in kustomize-oldest): %v\n%s", err, stderr.String())
		if os.Getenv("ALLOT_REQUIRE_INTEGRATION") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg + "\nALLOT_REQUIRE_INTEGRATION=1 makes this a failure")
	}
	return path
}

// firstLines returns the first n lines of s, enough of a panic's trace to
// say where it came from.
func firstLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) <= n {
		return s
	}
	return strings.Join(lines[:n], "") + "...\n"
}

// notifierSettings returns the notifier section the notifier w runs with,
// read from its allot.yaml and environment as the notifier reads it.
func notifierSettings(t *testing.T, r *Rendered, w Workload) notifier.Settings {
	t.Helper()
	var ns notifier.Settings
	if _, err := r.Config(w, func(rt service.Config, path string, getenv func(string) string) error {
		cfg, err := notifier.LoadConfig(rt, path, getenv)
		ns = cfg.Notifier
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return ns
}
