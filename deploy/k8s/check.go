package k8s

import (
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/allot/allot/pkg/service"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// PartOf is the label, with value "allot", that marks the allot services:
// their Deployments get the service rules (probes on /readyz and /healthz,
// allot.yaml mounted, a PDB) and only their pods may reach Redis.
const PartOf = "app.kubernetes.io/part-of"

// Placeholder starts every Secret value kept in this repository: real
// secrets are put in at deploy time, never committed.
const Placeholder = "CHANGE-ME-"

// Workload is a Deployment or a StatefulSet, seen through what the rules
// need.
type Workload struct {
	Object   Object
	Replicas int32
	Selector *metav1.LabelSelector
	Template *corev1.PodTemplateSpec
	// Claims names the StatefulSet's volumeClaimTemplates.
	Claims []string
}

// IsService reports whether w is an allot service.
func (w Workload) IsService() bool { return w.Template.Labels[PartOf] == "allot" }

// Workloads returns the Deployments and StatefulSets of r.
func (r *Rendered) Workloads() []Workload {
	var out []Workload
	for _, o := range r.Objects {
		switch v := o.Value.(type) {
		case *appsv1.Deployment:
			out = append(out, Workload{Object: o, Replicas: replicas(v.Spec.Replicas), Selector: v.Spec.Selector, Template: &v.Spec.Template})
		case *appsv1.StatefulSet:
			w := Workload{Object: o, Replicas: replicas(v.Spec.Replicas), Selector: v.Spec.Selector, Template: &v.Spec.Template}
			for _, c := range v.Spec.VolumeClaimTemplates {
				w.Claims = append(w.Claims, c.Name)
			}
			out = append(out, w)
		}
	}
	return out
}

// replicas is a workload's replica count, 1 when unset as in the API.
func replicas(n *int32) int32 {
	if n == nil {
		return 1
	}
	return *n
}

// Find returns the object of kind and name, or false.
func (r *Rendered) Find(kind, name string) (Object, bool) {
	for _, o := range r.Objects {
		if o.Kind == kind && o.Name == name {
			return o, true
		}
	}
	return Object{}, false
}

// problems collects broken rules, each as "kind/name: field: what is wrong".
type problems []error

func (p *problems) add(obj Object, field, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s: %s", obj, field, fmt.Sprintf(format, args...)))
}

// Check applies every rule that holds for any kustomization of allot and
// returns one error per broken rule, naming the object and the field:
//
//   - every container: an image with a tag or digest, never latest; an
//     image named nats tagged with the version of a nats-server allot
//     runs on (service.MinNATSVersion, 2.10.0, or later);
//     requests and limits for cpu and memory; non-root, no privilege
//     escalation, read-only root filesystem, ALL capabilities dropped,
//     seccomp RuntimeDefault; readiness, liveness and startup probes on
//     declared ports (init containers: all but the probes);
//   - every referenced ConfigMap, Secret and key exists, and every volume
//     mount names a volume;
//   - a workload's selector matches its pod template; a StatefulSet's
//     serviceName is a headless Service selecting its pods;
//   - every Service selects a pod template and its target ports are ports
//     of the selected containers; every PDB, NetworkPolicy and
//     ServiceMonitor selects something, every HPA targets a workload;
//   - every Secret value is a CHANGE-ME- placeholder;
//   - an allot service (pod label app.kubernetes.io/part-of: allot) serves
//     port http (8080) with readiness on /readyz and liveness and startup on
//     /healthz, carries the Prometheus annotations, loads a valid allot.yaml
//     from a mounted ConfigMap (ALLOT_CONFIG), outlives its shutdown.timeout
//     in terminationGracePeriodSeconds, and has a PodDisruptionBudget;
//   - the registry and the notifier take the secrets they refuse to start
//     without (secretEnv) from a Secret.
func (r *Rendered) Check() []error {
	var p problems
	ws := r.Workloads()
	for _, w := range ws {
		r.checkWorkload(&p, w)
		if w.IsService() {
			r.checkService(&p, w)
		}
	}
	for _, o := range r.Objects {
		switch v := o.Value.(type) {
		case *corev1.Service:
			checkServiceObject(&p, o, v, ws)
		case *appsv1.StatefulSet:
			r.checkGoverningService(&p, o, v)
		case *policyv1.PodDisruptionBudget:
			checkPDB(&p, o, v, ws)
		case *autoscalingv2.HorizontalPodAutoscaler:
			checkHPA(&p, o, v, ws)
		case *networkingv1.NetworkPolicy:
			if len(v.Spec.PodSelector.MatchLabels)+len(v.Spec.PodSelector.MatchExpressions) > 0 && len(selected(o.Namespace, &v.Spec.PodSelector, ws)) == 0 {
				p.add(o, "spec.podSelector", "selects no pod template")
			}
		case *ServiceMonitor:
			r.checkServiceMonitor(&p, o, v)
		case *corev1.Secret:
			for k, val := range v.StringData {
				if !strings.HasPrefix(val, Placeholder) {
					p.add(o, "stringData."+k, "must be a %s placeholder: real secrets are set at deploy time, never committed", Placeholder)
				}
			}
			for k, val := range v.Data {
				if !strings.HasPrefix(string(val), Placeholder) {
					p.add(o, "data."+k, "must be a %s placeholder: real secrets are set at deploy time, never committed", Placeholder)
				}
			}
		}
	}
	return p
}

// checkWorkload applies the rules every pod template must meet.
func (r *Rendered) checkWorkload(p *problems, w Workload) {
	o, pod := w.Object, &w.Template.Spec
	if sel, err := metav1.LabelSelectorAsSelector(w.Selector); err != nil {
		p.add(o, "spec.selector", "%v", err)
	} else if sel.Empty() || !sel.Matches(labels.Set(w.Template.Labels)) {
		p.add(o, "spec.selector", "does not match the pod template's labels %v", w.Template.Labels)
	}
	if sa := pod.ServiceAccountName; sa != "" && sa != "default" {
		if _, ok := r.find(o.Namespace, "ServiceAccount", sa); !ok {
			p.add(o, "spec.template.spec.serviceAccountName", "ServiceAccount %q does not exist", sa)
		}
	}
	volumes := map[string]bool{}
	for _, c := range w.Claims {
		volumes[c] = true
	}
	for i, v := range pod.Volumes {
		volumes[v.Name] = true
		field := fmt.Sprintf("spec.template.spec.volumes[%s]", v.Name)
		if i > 0 && slices.ContainsFunc(pod.Volumes[:i], func(u corev1.Volume) bool { return u.Name == v.Name }) {
			p.add(o, field, "declared twice")
		}
		switch {
		case v.ConfigMap != nil:
			for _, it := range v.ConfigMap.Items {
				r.checkRef(p, o, field+".configMap", "ConfigMap", v.ConfigMap.Name, it.Key, v.ConfigMap.Optional)
			}
			if len(v.ConfigMap.Items) == 0 {
				r.checkRef(p, o, field+".configMap", "ConfigMap", v.ConfigMap.Name, "", v.ConfigMap.Optional)
			}
		case v.Secret != nil:
			for _, it := range v.Secret.Items {
				r.checkRef(p, o, field+".secret", "Secret", v.Secret.SecretName, it.Key, v.Secret.Optional)
			}
			if len(v.Secret.Items) == 0 {
				r.checkRef(p, o, field+".secret", "Secret", v.Secret.SecretName, "", v.Secret.Optional)
			}
		}
	}
	containers := func(kind string, cs []corev1.Container, probes bool) {
		for i := range cs {
			c := &cs[i]
			field := fmt.Sprintf("spec.template.spec.%s[%s]", kind, c.Name)
			r.checkContainer(p, o, field, pod, c, probes)
			for _, m := range c.VolumeMounts {
				if !volumes[m.Name] {
					p.add(o, field+".volumeMounts["+m.Name+"]", "no volume or volumeClaimTemplate is named %q", m.Name)
				}
			}
		}
	}
	containers("initContainers", pod.InitContainers, false)
	containers("containers", pod.Containers, true)
	if len(pod.Containers) == 0 {
		p.add(o, "spec.template.spec.containers", "none")
	}
}

// checkContainer applies the rules of one container; field is its path.
func (r *Rendered) checkContainer(p *problems, o Object, field string, pod *corev1.PodSpec, c *corev1.Container, probes bool) {
	msg := imageProblem(c.Image)
	if msg == "" {
		msg = natsProblem(c.Image)
	}
	if msg != "" {
		p.add(o, field+".image", "%q %s", c.Image, msg)
	}
	for _, kind := range []string{"requests", "limits"} {
		list := c.Resources.Requests
		if kind == "limits" {
			list = c.Resources.Limits
		}
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := list[res]; !ok {
				p.add(o, fmt.Sprintf("%s.resources.%s.%s", field, kind, res), "missing")
			}
		}
	}
	for res, req := range c.Resources.Requests {
		if lim, ok := c.Resources.Limits[res]; ok && req.Cmp(lim) > 0 {
			p.add(o, fmt.Sprintf("%s.resources.requests.%s", field, res), "%s is above the limit %s", req.String(), lim.String())
		}
	}
	checkSecurity(p, o, field, pod.SecurityContext, c.SecurityContext)
	if probes {
		for _, pr := range []struct {
			name  string
			probe *corev1.Probe
		}{{"readinessProbe", c.ReadinessProbe}, {"livenessProbe", c.LivenessProbe}, {"startupProbe", c.StartupProbe}} {
			if pr.probe == nil {
				p.add(o, field+"."+pr.name, "missing")
				continue
			}
			if port, ok := probePort(pr.probe); ok && !hasPort(c, port) {
				p.add(o, field+"."+pr.name, "port %s is not a port of the container", port.String())
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			continue
		}
		ef := fmt.Sprintf("%s.env[%s].valueFrom", field, e.Name)
		if ref := e.ValueFrom.ConfigMapKeyRef; ref != nil {
			r.checkRef(p, o, ef+".configMapKeyRef", "ConfigMap", ref.Name, ref.Key, ref.Optional)
		}
		if ref := e.ValueFrom.SecretKeyRef; ref != nil {
			r.checkRef(p, o, ef+".secretKeyRef", "Secret", ref.Name, ref.Key, ref.Optional)
		}
	}
	for i, e := range c.EnvFrom {
		ef := fmt.Sprintf("%s.envFrom[%d]", field, i)
		if ref := e.ConfigMapRef; ref != nil {
			r.checkRef(p, o, ef+".configMapRef", "ConfigMap", ref.Name, "", ref.Optional)
		}
		if ref := e.SecretRef; ref != nil {
			r.checkRef(p, o, ef+".secretRef", "Secret", ref.Name, "", ref.Optional)
		}
	}
}

// imageProblem says what is wrong with an image reference, or "".
func imageProblem(image string) string {
	if image == "" {
		return "is empty"
	}
	if strings.Contains(image, "@") {
		return "" // a digest pins it
	}
	last := image[strings.LastIndex(image, "/")+1:]
	i := strings.LastIndex(last, ":")
	switch {
	case i < 0:
		return "has no tag: pin a version, such as ghcr.io/allot/meter:0.1.0"
	case last[i+1:] == "latest":
		return "uses the latest tag: pin a version, such as ghcr.io/allot/meter:0.1.0"
	}
	return ""
}

// natsProblem says what is wrong with an image named nats (on any
// registry), or "": its tag must be the version of a nats-server allot runs
// on, as service.CheckNATSVersion reads it (2.15.2-alpine is 2.15.2); a
// digest alone does not say which. Other images are not its business.
func natsProblem(image string) string {
	tag, ok := natsImageTag(image)
	if !ok {
		return ""
	}
	if err := service.CheckNATSVersion(tag); err != nil {
		return fmt.Sprintf("must be tagged with nats-server %s or later (%v)", service.MinNATSVersion, err)
	}
	return ""
}

// natsImageTag returns the tag of an image named nats, on any registry
// (nats:2.15.2-alpine, docker.io/library/nats:2.15.2), "" when it has none,
// and false for any other image.
func natsImageTag(image string) (string, bool) {
	ref, _, _ := strings.Cut(image, "@")
	repo, tag := ref, ""
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo, tag = ref[:i], ref[i+1:]
	}
	return tag, path.Base(repo) == "nats"
}

// checkSecurity checks a container's effective security context: the
// container's own settings, else the pod's.
func checkSecurity(p *problems, o Object, field string, pod *corev1.PodSecurityContext, c *corev1.SecurityContext) {
	field += ".securityContext"
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	if c == nil {
		c = &corev1.SecurityContext{}
	}
	nonRoot := pod.RunAsNonRoot
	if c.RunAsNonRoot != nil {
		nonRoot = c.RunAsNonRoot
	}
	if nonRoot == nil || !*nonRoot {
		p.add(o, field+".runAsNonRoot", "must be true (here or in the pod's securityContext)")
	}
	user := pod.RunAsUser
	if c.RunAsUser != nil {
		user = c.RunAsUser
	}
	if user != nil && *user == 0 {
		p.add(o, field+".runAsUser", "must not be 0 (root)")
	}
	if c.AllowPrivilegeEscalation == nil || *c.AllowPrivilegeEscalation {
		p.add(o, field+".allowPrivilegeEscalation", "must be false")
	}
	if c.Privileged != nil && *c.Privileged {
		p.add(o, field+".privileged", "must not be true")
	}
	if c.ReadOnlyRootFilesystem == nil || !*c.ReadOnlyRootFilesystem {
		p.add(o, field+".readOnlyRootFilesystem", "must be true")
	}
	if c.Capabilities == nil || !slices.Contains(c.Capabilities.Drop, "ALL") {
		p.add(o, field+".capabilities.drop", "must contain ALL")
	} else if len(c.Capabilities.Add) > 0 {
		p.add(o, field+".capabilities.add", "must be empty, got %v", c.Capabilities.Add)
	}
	seccomp := pod.SeccompProfile
	if c.SeccompProfile != nil {
		seccomp = c.SeccompProfile
	}
	if seccomp == nil || (seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault && seccomp.Type != corev1.SeccompProfileTypeLocalhost) {
		p.add(o, field+".seccompProfile.type", "must be RuntimeDefault (here or in the pod's securityContext)")
	}
}

// probePort is the port a probe connects to, if it names one.
func probePort(pr *corev1.Probe) (intstr.IntOrString, bool) {
	switch {
	case pr.HTTPGet != nil:
		return pr.HTTPGet.Port, true
	case pr.TCPSocket != nil:
		return pr.TCPSocket.Port, true
	case pr.GRPC != nil:
		return intstr.FromInt32(pr.GRPC.Port), true
	}
	return intstr.IntOrString{}, false
}

// hasPort reports whether the container declares port, by name or number.
func hasPort(c *corev1.Container, port intstr.IntOrString) bool {
	return slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool {
		if port.Type == intstr.String {
			return cp.Name == port.StrVal
		}
		return cp.ContainerPort == port.IntVal
	})
}

// find returns the object of kind and name in namespace ns.
func (r *Rendered) find(ns, kind, name string) (Object, bool) {
	for _, o := range r.Objects {
		if o.Kind == kind && o.Name == name && o.Namespace == ns {
			return o, true
		}
	}
	return Object{}, false
}

// keys returns the keys of a ConfigMap or Secret object.
func keys(o Object) []string {
	var ks []string
	switch v := o.Value.(type) {
	case *corev1.ConfigMap:
		for k := range v.Data {
			ks = append(ks, k)
		}
		for k := range v.BinaryData {
			ks = append(ks, k)
		}
	case *corev1.Secret:
		for k := range v.Data {
			ks = append(ks, k)
		}
		for k := range v.StringData {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	return ks
}

// checkRef checks that the ConfigMap or Secret name exists in o's
// namespace and, unless key is "", that it has key. An optional reference
// may point at nothing.
func (r *Rendered) checkRef(p *problems, o Object, field, kind, name, key string, optional *bool) {
	if optional != nil && *optional {
		return
	}
	ref, ok := r.find(o.Namespace, kind, name)
	if !ok {
		p.add(o, field, "%s %q does not exist", kind, name)
		return
	}
	if key != "" && !slices.Contains(keys(ref), key) {
		p.add(o, field, "%s %q has no key %q (it has %s)", kind, name, key, strings.Join(keys(ref), ", "))
	}
}

// selected returns the workloads in namespace ns whose pod template sel
// matches.
func selected(ns string, sel *metav1.LabelSelector, ws []Workload) []Workload {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() {
		return nil
	}
	var out []Workload
	for _, w := range ws {
		if w.Object.Namespace == ns && s.Matches(labels.Set(w.Template.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

// checkServiceObject checks that a Service selects pods and that each of
// its ports reaches a port of every selected pod.
func checkServiceObject(p *problems, o Object, svc *corev1.Service, ws []Workload) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return
	}
	if len(svc.Spec.Selector) == 0 {
		p.add(o, "spec.selector", "missing: the Service would select no pod")
		return
	}
	targets := selected(o.Namespace, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, ws)
	if len(targets) == 0 {
		p.add(o, "spec.selector", "%v selects no pod template", svc.Spec.Selector)
		return
	}
	for _, sp := range svc.Spec.Ports {
		target := sp.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(sp.Port)
		}
		for _, w := range targets {
			if !slices.ContainsFunc(w.Template.Spec.Containers, func(c corev1.Container) bool { return hasPort(&c, target) }) {
				p.add(o, fmt.Sprintf("spec.ports[%s].targetPort", portName(sp)), "%s is not a container port of %s", target.String(), w.Object)
			}
		}
	}
}

func portName(sp corev1.ServicePort) string {
	if sp.Name != "" {
		return sp.Name
	}
	return fmt.Sprint(sp.Port)
}

// checkGoverningService checks a StatefulSet's serviceName: a headless
// Service that selects its pods, which gives each pod its DNS name.
func (r *Rendered) checkGoverningService(p *problems, o Object, ss *appsv1.StatefulSet) {
	so, ok := r.find(o.Namespace, "Service", ss.Spec.ServiceName)
	if !ok {
		p.add(o, "spec.serviceName", "Service %q does not exist", ss.Spec.ServiceName)
		return
	}
	svc := so.Value.(*corev1.Service)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		p.add(o, "spec.serviceName", "Service %q is not headless (clusterIP: None)", ss.Spec.ServiceName)
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(ss.Spec.Template.Labels)) || len(svc.Spec.Selector) == 0 {
		p.add(o, "spec.serviceName", "Service %q does not select the StatefulSet's pods", ss.Spec.ServiceName)
	}
}

// checkPDB checks that a PodDisruptionBudget selects pods and never blocks
// every eviction.
func checkPDB(p *problems, o Object, pdb *policyv1.PodDisruptionBudget, ws []Workload) {
	targets := selected(o.Namespace, pdb.Spec.Selector, ws)
	if len(targets) == 0 {
		p.add(o, "spec.selector", "selects no pod template")
	}
	if m := pdb.Spec.MinAvailable; m != nil && m.Type == intstr.Int {
		for _, w := range targets {
			if m.IntVal >= w.Replicas {
				p.add(o, "spec.minAvailable", "%d with %d replica(s) of %s blocks every node drain; use maxUnavailable: 1", m.IntVal, w.Replicas, w.Object)
			}
		}
	}
	if u := pdb.Spec.MaxUnavailable; u != nil && u.Type == intstr.Int && u.IntVal < 1 {
		p.add(o, "spec.maxUnavailable", "must be at least 1, or no node can be drained")
	}
}

// checkHPA checks that an HPA targets a workload whose containers request
// every resource it scales on.
func checkHPA(p *problems, o Object, hpa *autoscalingv2.HorizontalPodAutoscaler, ws []Workload) {
	ref := hpa.Spec.ScaleTargetRef
	i := slices.IndexFunc(ws, func(w Workload) bool {
		return w.Object.Kind == ref.Kind && w.Object.Name == ref.Name && w.Object.Namespace == o.Namespace
	})
	if i < 0 {
		p.add(o, "spec.scaleTargetRef", "%s/%s does not exist", ref.Kind, ref.Name)
		return
	}
	if hpa.Spec.MinReplicas != nil && *hpa.Spec.MinReplicas > hpa.Spec.MaxReplicas {
		p.add(o, "spec.minReplicas", "%d is above maxReplicas %d", *hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas)
	}
	if len(hpa.Spec.Metrics) == 0 {
		p.add(o, "spec.metrics", "missing")
	}
	for _, m := range hpa.Spec.Metrics {
		if m.Resource == nil {
			continue
		}
		for _, c := range ws[i].Template.Spec.Containers {
			if _, ok := c.Resources.Requests[m.Resource.Name]; !ok {
				p.add(o, "spec.metrics[resource "+string(m.Resource.Name)+"]", "container %s of %s requests no %s: utilization is undefined", c.Name, ws[i].Object, m.Resource.Name)
			}
		}
	}
}

// checkServiceMonitor checks that a ServiceMonitor selects Services in its
// namespace that have every port it scrapes.
func (r *Rendered) checkServiceMonitor(p *problems, o Object, sm *ServiceMonitor) {
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil || sel.Empty() {
		p.add(o, "spec.selector", "must select Services by label")
		return
	}
	var svcs []Object
	for _, so := range r.Objects {
		if svc, ok := so.Value.(*corev1.Service); ok && so.Namespace == o.Namespace && sel.Matches(labels.Set(svc.Labels)) {
			svcs = append(svcs, so)
		}
	}
	if len(svcs) == 0 {
		p.add(o, "spec.selector", "selects no Service")
	}
	if len(sm.Spec.Endpoints) == 0 {
		p.add(o, "spec.endpoints", "missing")
	}
	for i, ep := range sm.Spec.Endpoints {
		for _, so := range svcs {
			if !slices.ContainsFunc(so.Value.(*corev1.Service).Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Name == ep.Port }) {
				p.add(o, fmt.Sprintf("spec.endpoints[%d].port", i), "%s has no port named %q", so, ep.Port)
			}
		}
	}
}

// The port, paths and annotations every allot service serves (pkg/service).
const (
	httpPortName = "http"
	httpPort     = 8080
	readyPath    = "/readyz"
	healthPath   = "/healthz"
	// graceMargin is how much longer than shutdown.timeout the kubelet
	// waits before it kills a pod.
	graceMargin = 5 * time.Second
)

// secretEnv names, by a service's app.kubernetes.io/name, the environment
// variables carrying the secrets it refuses to start without. Each must be
// an env entry of its container with valueFrom.secretKeyRef, never a value
// in a manifest or in allot.yaml.
var secretEnv = map[string][]string{
	"registry": {"ALLOT_REGISTRY_KEYS"},
	"notifier": {"ALLOT_NOTIFIER_TOKEN_SECRETS"},
}

// checkService applies the rules of an allot service.
func (r *Rendered) checkService(p *problems, w Workload) {
	o, pod := w.Object, &w.Template.Spec
	if len(pod.Containers) == 0 {
		return
	}
	c := &pod.Containers[0]
	field := fmt.Sprintf("spec.template.spec.containers[%s]", c.Name)
	if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool {
		return cp.Name == httpPortName && cp.ContainerPort == httpPort
	}) {
		p.add(o, field+".ports", "needs port %q on %d (/metrics, /healthz, /readyz)", httpPortName, httpPort)
	}
	for _, pr := range []struct {
		name, path string
		probe      *corev1.Probe
	}{{"readinessProbe", readyPath, c.ReadinessProbe}, {"livenessProbe", healthPath, c.LivenessProbe}, {"startupProbe", healthPath, c.StartupProbe}} {
		if pr.probe == nil {
			continue // reported by checkContainer
		}
		g := pr.probe.HTTPGet
		if g == nil || g.Path != pr.path || g.Port != intstr.FromString(httpPortName) {
			p.add(o, field+"."+pr.name, "must be httpGet %s on port %q", pr.path, httpPortName)
		}
	}
	name := w.Template.Labels["app.kubernetes.io/name"]
	for _, env := range secretEnv[name] {
		i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == env })
		switch {
		case i < 0:
			p.add(o, field+".env["+env+"]", "missing: the %s refuses to start without it; take it from a Secret", name)
		case c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.SecretKeyRef == nil:
			p.add(o, field+".env["+env+"]", "must come from a Secret (valueFrom.secretKeyRef), not a value in the manifest")
		}
	}
	ann := w.Template.Annotations
	for k, want := range map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": fmt.Sprint(httpPort)} {
		if ann[k] != want {
			p.add(o, "spec.template.metadata.annotations["+k+"]", "must be %q, got %q", want, ann[k])
		}
	}
	cfg, err := r.loadConfig(o, pod, c, field)
	if err != nil {
		*p = append(*p, err)
	} else if grace := pod.TerminationGracePeriodSeconds; grace == nil || time.Duration(*grace)*time.Second < cfg.Shutdown.Timeout+graceMargin {
		got := "unset (30)"
		if grace != nil {
			got = fmt.Sprint(*grace)
		}
		p.add(o, "spec.template.spec.terminationGracePeriodSeconds", "%s must exceed shutdown.timeout %s by at least %s", got, cfg.Shutdown.Timeout, graceMargin)
	}
	hasPDB := slices.ContainsFunc(All[*policyv1.PodDisruptionBudget](r), func(pdb *policyv1.PodDisruptionBudget) bool {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		return err == nil && !sel.Empty() && pdb.Namespace == o.Namespace && sel.Matches(labels.Set(w.Template.Labels))
	})
	if !hasPDB {
		p.add(o, "spec.template.metadata.labels", "no PodDisruptionBudget selects these pods")
	}
}

// Config returns the allot configuration the service w runs with: its
// allot.yaml from the ConfigMap ALLOT_CONFIG points into, overlaid by the
// container's environment, validated as the service would.
func (r *Rendered) Config(w Workload) (service.Config, error) {
	c := &w.Template.Spec.Containers[0]
	return r.loadConfig(w.Object, &w.Template.Spec, c, fmt.Sprintf("spec.template.spec.containers[%s]", c.Name))
}

func (r *Rendered) loadConfig(o Object, pod *corev1.PodSpec, c *corev1.Container, field string) (service.Config, error) {
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			env[e.Name] = "pod-0" // the pod's name or another of its fields
		case e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = r.value("Secret", o.Namespace, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
		case e.ValueFrom.ConfigMapKeyRef != nil:
			env[e.Name] = r.value("ConfigMap", o.Namespace, e.ValueFrom.ConfigMapKeyRef.Name, e.ValueFrom.ConfigMapKeyRef.Key)
		}
	}
	file := env["ALLOT_CONFIG"]
	if file == "" {
		return service.Config{}, fmt.Errorf("%s: %s.env[ALLOT_CONFIG]: missing: allot.yaml must come from a ConfigMap", o, field)
	}
	text, cm, ok := r.mountedFile(o, pod, c, file)
	if !ok {
		return service.Config{}, fmt.Errorf("%s: %s.env[ALLOT_CONFIG]: %s is not a key of a mounted ConfigMap", o, field, file)
	}
	tmp, err := os.CreateTemp("", "allot-*.yaml")
	if err != nil {
		return service.Config{}, err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(text)
	if err = errors.Join(err, tmp.Close()); err != nil {
		return service.Config{}, err
	}
	cfg, err := service.Load(tmp.Name(), func(k string) string { return env[k] })
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		// Name the ConfigMap's key, not the temporary file.
		msg := strings.ReplaceAll(err.Error(), tmp.Name(), path.Base(file))
		return service.Config{}, fmt.Errorf("%s: ConfigMap %s, key %s: %s", o, cm, path.Base(file), msg)
	}
	return cfg, nil
}

// value is the value under key of a ConfigMap or Secret, or "".
func (r *Rendered) value(kind, ns, name, key string) string {
	o, ok := r.find(ns, kind, name)
	if !ok {
		return ""
	}
	switch v := o.Value.(type) {
	case *corev1.ConfigMap:
		return v.Data[key]
	case *corev1.Secret:
		if s, ok := v.StringData[key]; ok {
			return s
		}
		return string(v.Data[key])
	}
	return ""
}

// mountedFile returns the content of the file at file in container c when a
// ConfigMap volume provides it, and the ConfigMap's name.
func (r *Rendered) mountedFile(o Object, pod *corev1.PodSpec, c *corev1.Container, file string) (text, configMap string, ok bool) {
	for _, m := range c.VolumeMounts {
		rel, found := strings.CutPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !found || m.SubPath != "" {
			continue
		}
		i := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 || pod.Volumes[i].ConfigMap == nil {
			continue
		}
		src := pod.Volumes[i].ConfigMap
		key := rel
		if len(src.Items) > 0 {
			j := slices.IndexFunc(src.Items, func(it corev1.KeyToPath) bool { return it.Path == rel })
			if j < 0 {
				continue
			}
			key = src.Items[j].Key
		}
		cm, found := r.find(o.Namespace, "ConfigMap", src.Name)
		if !found {
			continue
		}
		if text, found := cm.Value.(*corev1.ConfigMap).Data[key]; found {
			return text, src.Name, true
		}
	}
	return "", "", false
}
