package k8s

import (
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
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
//     of the selected containers; every PDB, NetworkPolicy, ServiceMonitor
//     and PodMonitor selects something, every HPA targets a workload;
//   - every scrape target (a pod's prometheus.io/port, a ServiceMonitor's
//     or a PodMonitor's port and path) serves Prometheus's text format: an
//     allot service's port http, or the port of a prometheus-nats-exporter
//     or redis_exporter, never nats-server's monitoring port (JSON); each
//     exporter listens on a port it declares and reads its own pod's
//     server on that server's port (nats-server's http_port), with the
//     password Redis requires (checkExporters);
//   - every Secret value is a CHANGE-ME- placeholder;
//   - an allot service (pod label app.kubernetes.io/part-of: allot) serves
//     port http (8080) with readiness on /readyz and liveness and startup on
//     /healthz, carries the Prometheus annotations, loads a valid allot.yaml
//     from a mounted ConfigMap (ALLOT_CONFIG), outlives its shutdown.timeout
//     in terminationGracePeriodSeconds, and has a PodDisruptionBudget;
//   - the registry, the notifier and the auth service take the secrets they
//     refuse to start without (secretEnv) from a Secret, and every other
//     allot service its API key (ALLOT_KEY); the auth service's own
//     section of allot.yaml loads (auth.LoadConfig);
//   - where allot services run beside NATS, the NATS configuration parses
//     with nats-server's own parser and hands every client connection to
//     the auth service: its access control is what auth.ServerConfig.Render
//     writes for the auth service's users, passwords and issuer
//     (checkNATSAuth).
//
// A CHANGE-ME- placeholder of a Secret whose value must have a shape (an
// API key, the issuer key pair: standIns) counts as the value it stands
// for, so that the rules see the configuration as it will run once the
// Secrets are filled.
func (r *Rendered) Check() []error {
	var p problems
	ws := r.Workloads()
	for _, w := range ws {
		r.checkWorkload(&p, w)
		r.checkScrapeAnnotations(&p, w)
		r.checkExporters(&p, w)
		if w.IsService() {
			r.checkService(&p, w)
		}
	}
	r.checkNATSAuth(&p, ws)
	r.checkStreamStore(&p, ws)
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
			r.checkServiceMonitorTargets(&p, o, v, ws)
		case *PodMonitor:
			r.checkPodMonitor(&p, o, v, ws)
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

// find returns the object of kind and name in namespace ns.
func (r *Rendered) find(ns, kind, name string) (Object, bool) {
	for _, o := range r.Objects {
		if o.Kind == kind && o.Name == name && o.Namespace == ns {
			return o, true
		}
	}
	return Object{}, false
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
