package k8s

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Object is one rendered Kubernetes object, decoded into its API type.
type Object struct {
	Kind      string
	Name      string
	Namespace string
	// Value is a pointer to the typed object: *appsv1.Deployment,
	// *corev1.Service, *ServiceMonitor, ...
	Value any
}

// String names the object as kind/name, the way every error does.
func (o Object) String() string { return o.Kind + "/" + o.Name }

// Rendered is everything one kustomization produces.
type Rendered struct {
	Objects []Object
	// YAML is the whole output as `kustomize build` prints it, which the
	// test compares with the oldest kustomize supported.
	YAML []byte
}

// kinds are the object types allot's manifests may use, by apiVersion and
// kind. Anything else (a typo in a kind, an old apiVersion such as
// autoscaling/v1) is an error.
var kinds = map[string]func() any{
	"v1/Namespace":                            func() any { return new(corev1.Namespace) },
	"v1/ServiceAccount":                       func() any { return new(corev1.ServiceAccount) },
	"v1/ConfigMap":                            func() any { return new(corev1.ConfigMap) },
	"v1/Secret":                               func() any { return new(corev1.Secret) },
	"v1/Service":                              func() any { return new(corev1.Service) },
	"apps/v1/Deployment":                      func() any { return new(appsv1.Deployment) },
	"apps/v1/StatefulSet":                     func() any { return new(appsv1.StatefulSet) },
	"policy/v1/PodDisruptionBudget":           func() any { return new(policyv1.PodDisruptionBudget) },
	"autoscaling/v2/HorizontalPodAutoscaler":  func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return new(networkingv1.NetworkPolicy) },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return new(ServiceMonitor) },
	"monitoring.coreos.com/v1/PodMonitor":     func() any { return new(PodMonitor) },
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return new(PrometheusRule) },
}

// Render builds the kustomization in dir on fsys, as `kubectl apply -k`
// would, and decodes every object strictly into its Kubernetes type: an
// unknown or duplicated field is an error naming the object and the
// field's path, such as `Deployment/meter: unknown field "spec.replicass"`.
// All decoding errors are returned together.
func Render(fsys filesys.FileSystem, dir string) (*Rendered, error) {
	opts := krusty.MakeDefaultOptions()
	// What `kustomize build` and `kubectl kustomize` pass without --reorder:
	// the legacy order (Namespaces first) unless a kustomization sets
	// sortOptions. The API's default, none, keeps input order instead.
	opts.Reorder = krusty.ReorderOptionUnspecified
	k := krusty.MakeKustomizer(opts)
	resources, err := k.Run(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	y, err := resources.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	r := Rendered{YAML: y}
	var errs []error
	for _, res := range resources.Resources() {
		obj := Object{Kind: res.GetKind(), Name: res.GetName(), Namespace: res.GetNamespace()}
		y, err := res.AsYAML()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", obj, err))
			continue
		}
		obj.Value, err = decode(y, res.GetApiVersion(), res.GetKind())
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", obj, err))
			continue
		}
		r.Objects = append(r.Objects, obj)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &r, nil
}

// decode turns one object's YAML into its typed value, refusing unknown and
// duplicated fields.
func decode(y []byte, apiVersion, kind string) (any, error) {
	newValue, ok := kinds[apiVersion+"/"+kind]
	if !ok {
		known := make([]string, 0, len(kinds))
		for k := range kinds {
			known = append(known, k)
		}
		slices.Sort(known)
		return nil, fmt.Errorf("apiVersion %s kind %s is not one allot uses (%s)", apiVersion, kind, strings.Join(known, ", "))
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		return nil, err
	}
	v := newValue()
	strict, err := kjson.UnmarshalStrict(j, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return nil, err
	}
	if len(strict) > 0 {
		return nil, errors.Join(strict...)
	}
	return v, nil
}

// All returns the objects of r whose value has type T, such as
// All[*appsv1.Deployment](r), in render order.
func All[T any](r *Rendered) []T {
	var out []T
	for _, o := range r.Objects {
		if v, ok := o.Value.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// ServiceMonitor is the part of the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1) that allot uses. Its CRD types are not in
// k8s.io/api; a field allot does not use here is an unknown field.
type ServiceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ServiceMonitorSpec `json:"spec"`
}

// ServiceMonitorSpec selects the Services to scrape and how.
type ServiceMonitorSpec struct {
	JobLabel          string                   `json:"jobLabel,omitempty"`
	Selector          metav1.LabelSelector     `json:"selector"`
	NamespaceSelector *NamespaceSelector       `json:"namespaceSelector,omitempty"`
	Endpoints         []ServiceMonitorEndpoint `json:"endpoints"`
}

// NamespaceSelector says which namespaces a ServiceMonitor looks in; empty
// means its own.
type NamespaceSelector struct {
	Any        bool     `json:"any,omitempty"`
	MatchNames []string `json:"matchNames,omitempty"`
}

// ServiceMonitorEndpoint is one scraped port of the selected Services.
type ServiceMonitorEndpoint struct {
	Port          string `json:"port,omitempty"`
	Path          string `json:"path,omitempty"`
	Scheme        string `json:"scheme,omitempty"`
	Interval      string `json:"interval,omitempty"`
	ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
	HonorLabels   bool   `json:"honorLabels,omitempty"`
}

// PodMonitor is the part of the Prometheus Operator's PodMonitor
// (monitoring.coreos.com/v1) that allot uses: it scrapes the exporters
// beside NATS and Redis on their pods' ports, with no Service in between.
type PodMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              PodMonitorSpec `json:"spec"`
}

// PodMonitorSpec selects the pods to scrape and how.
type PodMonitorSpec struct {
	JobLabel            string               `json:"jobLabel,omitempty"`
	Selector            metav1.LabelSelector `json:"selector"`
	NamespaceSelector   *NamespaceSelector   `json:"namespaceSelector,omitempty"`
	PodMetricsEndpoints []PodMetricsEndpoint `json:"podMetricsEndpoints"`
}

// PodMetricsEndpoint is one scraped port of the selected pods: the same
// fields as a ServiceMonitor's endpoint, but Port names a container port.
type PodMetricsEndpoint = ServiceMonitorEndpoint

// PrometheusRule is the part of the Prometheus Operator's PrometheusRule
// (monitoring.coreos.com/v1) that allot uses: its spec is a Prometheus
// rule file. promcheck checks the rules themselves (monitoring_test.go).
type PrometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              PrometheusRuleSpec `json:"spec"`
}

// PrometheusRuleSpec holds the rule groups.
type PrometheusRuleSpec struct {
	Groups []RuleGroup `json:"groups"`
}

// RuleGroup is a group of rules evaluated together.
type RuleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []Rule `json:"rules"`
}

// Rule is an alerting or a recording rule.
type Rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}
