package k8s

import (
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

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
