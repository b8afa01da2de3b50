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
	"github.com/allot/allot/services/meter"
	"github.com/allot/allot/services/notifier"
	"github.com/allot/allot/services/ratelimit"
	"github.com/allot/allot/services/registry"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

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
// an env entry of its container from a Secret (fromSecret), never a value
// in a manifest or in allot.yaml. Every allot service but auth also needs
// its API key, keyEnv.
var secretEnv = map[string][]string{
	"registry": {"ALLOT_REGISTRY_KEYS"},
	"notifier": {"ALLOT_NOTIFIER_TOKEN_SECRETS"},
	authName:   {"NATS_PASSWORD", "ALLOT_AUTH_SYS_PASSWORD", "ALLOT_AUTH_ISSUER_SEED", "ALLOT_AUTH_STATIC_KEYS"},
}

// sections names, by a service's app.kubernetes.io/name, what it reads of
// allot.yaml besides the runtime's sections, as its binary checks it
// (service.Run); auth's is loadAuthConfig.
var sections = map[string]service.OwnedSection{
	"meter":     meter.Section(),
	"ratelimit": ratelimit.Section(),
	"registry":  registry.Section(),
	"notifier":  notifier.Section(),
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
	secretsOK := true
	required := func(env, why string) {
		switch msg := fromSecret(c, env); msg {
		case "":
		case "missing":
			secretsOK = false
			p.add(o, field+".env["+env+"]", "missing: %s; take it from a Secret", why)
		default:
			secretsOK = false
			p.add(o, field+".env["+env+"]", "%s", msg)
		}
	}
	for _, env := range secretEnv[name] {
		required(env, fmt.Sprintf("the %s refuses to start without it", name))
	}
	if name != authName {
		required(keyEnv, "NATS hands every connection to the auth service, which refuses one without an API key (nats.key)")
	}
	ann := w.Template.Annotations
	for k, want := range map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": fmt.Sprint(httpPort)} {
		if ann[k] != want {
			p.add(o, "spec.template.metadata.annotations["+k+"]", "must be %q, got %q", want, ann[k])
		}
	}
	if name == authName && secretsOK {
		if _, err := r.loadAuthConfig(o, pod, c, field); err != nil {
			*p = append(*p, err)
		}
	}
	cfg, err := r.loadConfig(o, pod, c, field, ownSections(w)...)
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
// container's environment, validated as the service would, its own
// sections included. Each of also then reads the same file and
// environment beside the runtime's configuration, as a service's
// LoadConfig does.
func (r *Rendered) Config(w Workload, also ...func(rt service.Config, path string, getenv func(string) string) error) (service.Config, error) {
	c := &w.Template.Spec.Containers[0]
	return r.loadConfig(w.Object, &w.Template.Spec, c, fmt.Sprintf("spec.template.spec.containers[%s]", c.Name), append(ownSections(w), also...)...)
}

// ownSections loads and checks the sections the service w owns.
func ownSections(w Workload) []func(rt service.Config, path string, getenv func(string) string) error {
	o, ok := sections[w.Template.Labels["app.kubernetes.io/name"]]
	if !ok {
		return nil
	}
	return []func(service.Config, string, func(string) string) error{func(rt service.Config, path string, getenv func(string) string) error {
		_, err := o.Load(rt, path, getenv)
		return err
	}}
}

func (r *Rendered) loadConfig(o Object, pod *corev1.PodSpec, c *corev1.Container, field string, also ...func(rt service.Config, path string, getenv func(string) string) error) (service.Config, error) {
	var cfg service.Config
	err := r.withConfig(o, pod, c, field, true, func(file string, getenv func(string) string) error {
		var err error
		cfg, err = service.Load(file, getenv)
		if err == nil {
			err = cfg.Validate()
		}
		for _, f := range also {
			if err == nil {
				err = f(cfg, file, getenv)
			}
		}
		return err
	})
	return cfg, err
}

// withConfig calls load with the allot.yaml container c loads (the
// ConfigMap key ALLOT_CONFIG points into, in a temporary file) and the
// container's environment (with standIn, placeholders stood in for: env);
// an error names
// the ConfigMap's key, not the file.
func (r *Rendered) withConfig(o Object, pod *corev1.PodSpec, c *corev1.Container, field string, standIn bool, load func(file string, getenv func(string) string) error) error {
	env := r.env(o, c, standIn)
	file := env["ALLOT_CONFIG"]
	if file == "" {
		return fmt.Errorf("%s: %s.env[ALLOT_CONFIG]: missing: allot.yaml must come from a ConfigMap", o, field)
	}
	text, cm, ok := r.mountedFile(o, pod, c, file)
	if !ok {
		return fmt.Errorf("%s: %s.env[ALLOT_CONFIG]: %s is not a key of a mounted ConfigMap", o, field, file)
	}
	tmp, err := os.CreateTemp("", "allot-*.yaml")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(text)
	if err = errors.Join(err, tmp.Close()); err != nil {
		return err
	}
	if err := load(tmp.Name(), func(k string) string { return env[k] }); err != nil {
		// Name the ConfigMap's key, not the temporary file.
		msg := strings.ReplaceAll(err.Error(), tmp.Name(), path.Base(file))
		return fmt.Errorf("%s: ConfigMap %s, key %s: %s", o, cm, path.Base(file), msg)
	}
	return nil
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
