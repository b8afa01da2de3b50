package k8s

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/allot/allot/pkg/service"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

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
	return slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return portIs(cp, port) })
}

// portIs reports whether cp is port, by name or number.
func portIs(cp corev1.ContainerPort, port intstr.IntOrString) bool {
	if port.Type == intstr.String {
		return cp.Name == port.StrVal
	}
	return cp.ContainerPort == port.IntVal
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
