package k8s

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"

	"github.com/nats-io/nkeys"
	corev1 "k8s.io/api/core/v1"
)

// secretKey names one key of one Secret.
type secretKey struct{ secret, key string }

// standIns says, for the Secret keys whose value must have a shape that is
// checked before anything runs, what a CHANGE-ME- placeholder there stands
// for: a value of that shape. Check loads the services' configuration and
// parses nats.conf as they will be once the Secrets are filled; the
// placeholders themselves fail at start (TestPlaceholdersFailAtStart).
// A password needs no stand-in: any string is one.
var standIns = map[secretKey]func(placeholder string) string{
	{"allot-keys", "service"}:       standInKey,
	{"allot-keys", "admin"}:         standInKey,
	{"allot-auth", "issuer-seed"}:   func(p string) string { seed, _ := standInIssuer(p); return seed },
	{"allot-auth", "issuer-public"}: func(p string) string { _, pub := standInIssuer(p); return pub },
}

// standInKey makes an API key ("<8-character id>.<32-character secret>")
// from a placeholder, the same key for the same placeholder.
func standInKey(placeholder string) string {
	sum := sha256.Sum256([]byte(placeholder))
	s := base64.RawURLEncoding.EncodeToString(sum[:])
	return s[:8] + "." + s[8:40]
}

// standInIssuer is the issuer account key pair the placeholders of
// Secret allot-auth stand for: one pair, so that the public key is the
// seed's, as `allot keys issuer` prints them. (Made from 32 bytes with a
// known prefix, it cannot fail; if it did, the placeholder would stay and
// Check would report what refuses it.)
func standInIssuer(placeholder string) (seed, public string) {
	raw := sha256.Sum256([]byte("allot: the issuer a CHANGE-ME- placeholder stands for"))
	kp, err := nkeys.FromRawSeed(nkeys.PrefixByteAccount, raw[:])
	if err != nil {
		return placeholder, placeholder
	}
	s, err1 := kp.Seed()
	p, err2 := kp.PublicKey()
	if err1 != nil || err2 != nil {
		return placeholder, placeholder
	}
	return string(s), p
}

// env returns the environment container c of o starts with, as the
// kubelet makes it: values from the Secrets and ConfigMaps they name,
// "pod-0" for a field of the pod, and $(NAME) references to earlier
// variables expanded. With standIn, a placeholder of a Secret key in
// standIns becomes the value it stands for.
func (r *Rendered) env(o Object, c *corev1.Container, standIn bool) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = expand(e.Value, env)
		case e.ValueFrom.FieldRef != nil:
			env[e.Name] = "pod-0" // the pod's name or another of its fields
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			v := r.value("Secret", o.Namespace, ref.Name, ref.Key)
			if f, ok := standIns[secretKey{ref.Name, ref.Key}]; ok && standIn && strings.HasPrefix(v, Placeholder) {
				v = f(v)
			}
			env[e.Name] = v
		case e.ValueFrom.ConfigMapKeyRef != nil:
			env[e.Name] = r.value("ConfigMap", o.Namespace, e.ValueFrom.ConfigMapKeyRef.Name, e.ValueFrom.ConfigMapKeyRef.Key)
		}
	}
	return env
}

// expand replaces each $(NAME) of s by the value of NAME in vars, as the
// kubelet does with the variables defined before: an unknown NAME stays as
// it is, and $$ is a $.
func expand(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			ref := s[i : i+3+end]
			if v, ok := vars[ref[2:len(ref)-1]]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(ref)
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// secretRefItem is a comma-separated item of a value that ends in a
// $(NAME) reference, such as service=$(SERVICE_KEY).
var secretRefItem = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)$`)

// fromSecret says why the variable name of container c does not take its
// value from a Secret, or "": it must be a secretKeyRef, or a value each
// of whose comma-separated items ends in a $(NAME) of an earlier variable
// that is one (static keys: service=$(SERVICE_KEY),admin=$(ADMIN_KEY)).
// Anything else is a secret written in the manifest.
func fromSecret(c *corev1.Container, name string) string {
	fromRef := map[string]bool{}
	for _, e := range c.Env {
		if e.Name != name {
			fromRef[e.Name] = e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil
			continue
		}
		if e.ValueFrom != nil {
			if e.ValueFrom.SecretKeyRef != nil {
				return ""
			}
			return "must come from a Secret (valueFrom.secretKeyRef), not from another source"
		}
		for _, item := range strings.Split(e.Value, ",") {
			m := secretRefItem.FindStringSubmatch(item)
			if m == nil || !fromRef[m[1]] {
				return fmt.Sprintf("must come from a Secret (valueFrom.secretKeyRef, or items ending in $(NAME) of a variable above that is one), not a value in the manifest")
			}
		}
		return ""
	}
	return "missing"
}
