package k8s

import (
	"slices"
	"strings"
	"testing"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/auth"
	"github.com/nats-io/nkeys"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// authWorkload returns the auth service's Deployment of r.
func authWorkload(t *testing.T, r *Rendered) Workload {
	t.Helper()
	for _, w := range r.Workloads() {
		if w.IsService() && w.Object.String() == "Deployment/auth" {
			return w
		}
	}
	t.Fatalf("no Deployment/auth labelled %s: allot", PartOf)
	return Workload{}
}

// natsWorkload returns the NATS StatefulSet of r.
func natsWorkload(t *testing.T, r *Rendered) Workload {
	t.Helper()
	for _, w := range r.Workloads() {
		if w.Object.String() == "StatefulSet/nats" {
			return w
		}
	}
	t.Fatal("no StatefulSet/nats")
	return Workload{}
}

// fromSecretKey reports whether container c takes env from key of Secret
// name.
func fromSecretKey(c *corev1.Container, env, name, key string) bool {
	return slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == env && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil &&
			e.ValueFrom.SecretKeyRef.Name == name && e.ValueFrom.SecretKeyRef.Key == key
	})
}

// Access control, in base and in every overlay: the auth service runs like
// the other services, with its passwords, issuer seed and static keys from
// Secrets; every other service connects with the static key of role
// service; NATS reads the same passwords and the issuer's public key from
// the same Secrets, hands every connection to the auth service, and keeps
// its routes; only Prometheus reaches the auth service, which reaches NATS
// and Redis.
func TestAuth(t *testing.T) {
	for dir, want := range map[string]struct{ replicas, nats int32 }{"base": {2, 3}, "overlays/dev": {1, 1}, "overlays/prod": {2, 3}} {
		t.Run(dir, func(t *testing.T) {
			r := render(t, dir)
			a := authWorkload(t, r)
			if a.Replicas != want.replicas {
				t.Errorf("%s: spec.replicas: %d, want %d", a.Object, a.Replicas, want.replicas)
			}
			for _, kind := range []string{"Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} {
				if _, ok := r.Find(kind, "auth"); !ok {
					t.Errorf("%s/auth: missing", kind)
				}
			}
			c := &a.Template.Spec.Containers[0]
			if !strings.HasPrefix(c.Image, "ghcr.io/allot/auth:") {
				t.Errorf("%s: image %s, want ghcr.io/allot/auth", a.Object, c.Image)
			}
			for env, ref := range map[string][2]string{
				"NATS_PASSWORD":           {"allot-nats-auth", "auth-password"},
				"ALLOT_AUTH_SYS_PASSWORD": {"allot-nats-auth", "sys-password"},
				"ALLOT_AUTH_ISSUER_SEED":  {"allot-auth", "issuer-seed"},
				"REDIS_PASSWORD":          {"allot-redis", "password"},
			} {
				if !fromSecretKey(c, env, ref[0], ref[1]) {
					t.Errorf("%s: env[%s]: want it from Secret %s, key %s", a.Object, env, ref[0], ref[1])
				}
			}
			// The static keys are the Secret's values, as the services
			// have them: the same placeholders before any stand-in.
			raw := r.env(a.Object, c, false)
			keys := func(key string) string { return r.value("Secret", a.Object.Namespace, "allot-keys", key) }
			if got, want := raw["ALLOT_AUTH_STATIC_KEYS"], "service="+keys("service")+",admin="+keys("admin"); got != want {
				t.Errorf("%s: ALLOT_AUTH_STATIC_KEYS: %q, want %q (Secret allot-keys)", a.Object, got, want)
			}
			side, err := r.authSide(a)
			if err != nil {
				t.Fatal(err)
			}
			if side.User != "allot-auth" || side.SysUser != "allot-sys" {
				t.Errorf("%s: users %q and %q, want allot-auth and allot-sys", a.Object, side.User, side.SysUser)
			}
			for _, w := range allotServices(t, r) {
				if w.Object == a.Object {
					continue
				}
				if !fromSecretKey(&w.Template.Spec.Containers[0], keyEnv, "allot-keys", "service") {
					t.Errorf("%s: env[%s]: want it from Secret allot-keys, key service (the static key of role service)", w.Object, keyEnv)
				}
			}

			n := natsWorkload(t, r)
			nc := &n.Template.Spec.Containers[0]
			for env, ref := range map[string][2]string{
				"AUTH_PASSWORD": {"allot-nats-auth", "auth-password"},
				"SYS_PASSWORD":  {"allot-nats-auth", "sys-password"},
				"AUTH_ISSUER":   {"allot-auth", "issuer-public"},
			} {
				if !fromSecretKey(nc, env, ref[0], ref[1]) {
					t.Errorf("%s: env[%s]: want it from Secret %s, key %s", n.Object, env, ref[0], ref[1])
				}
			}
			opts, where, err := r.NATSOptions(n, true)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if opts.AuthCallout == nil {
				t.Fatalf("%s: no auth_callout", where)
			}
			if got := opts.AuthCallout.Issuer; got != side.Issuer {
				t.Errorf("%s: auth_callout.issuer %s, want the auth service's %s", where, got, side.Issuer)
			}
			if got := opts.AuthCallout.AuthUsers; !slices.Equal(got, []string{"allot-auth", "allot-sys"}) {
				t.Errorf("%s: auth_callout.auth_users %q, want allot-auth and allot-sys", where, got)
			}
			if opts.SystemAccount != "SYS" || !opts.JetStream {
				t.Errorf("%s: system_account %q, jetstream %v; want SYS and JetStream on", where, opts.SystemAccount, opts.JetStream)
			}
			routes := 0
			if want.nats > 1 {
				routes = int(want.nats)
			}
			if len(opts.Routes) != routes || opts.Cluster.Username != "" {
				t.Errorf("%s: %d routes (cluster user %q), want %d routes as before, without a user of their own", where, len(opts.Routes), opts.Cluster.Username, routes)
			}

			// The network: Prometheus alone reaches auth (checkNetworkPolicies
			// holds every allot service to that); auth reaches Redis and NATS.
			checkNetworkPolicies(t, r)
			for _, np := range All[*networkingv1.NetworkPolicy](r) {
				if np.Name != "redis" && np.Name != "nats" {
					continue
				}
				admits := slices.ContainsFunc(np.Spec.Ingress, func(rule networkingv1.NetworkPolicyIngressRule) bool {
					return len(rule.From) == 0 || slices.ContainsFunc(rule.From, func(peer networkingv1.NetworkPolicyPeer) bool {
						sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
						return peer.NamespaceSelector == nil && err == nil && sel.Matches(labels.Set(a.Template.Labels))
					})
				})
				if !admits {
					t.Errorf("NetworkPolicy/%s: does not let the auth service in", np.Name)
				}
			}
		})
	}
}

// The placeholders fail at start, where nothing can run on them: nats-server
// refuses the issuer, the auth service its seed and static keys, each
// service its key. (Check sees past them with stand-ins: standIns.)
func TestPlaceholdersFailAtStart(t *testing.T) {
	r := render(t, "base")
	if _, where, err := r.NATSOptions(natsWorkload(t, r), false); err == nil || !strings.Contains(err.Error(), `Expected callout user to be a valid public account nkey, got "CHANGE-ME-issuer-public"`) {
		t.Errorf("%s: nats-server: got %v, want it to refuse the issuer placeholder", where, err)
	}
	for _, w := range allotServices(t, r) {
		pod := &w.Template.Spec
		c := &pod.Containers[0]
		var load func(string, func(string) string) error
		var want []string
		if w.Template.Labels["app.kubernetes.io/name"] == authName {
			load = func(file string, getenv func(string) string) error {
				_, err := auth.LoadConfig(file, getenv)
				return err
			}
			want = []string{"auth: issuer_seed: is not an nkey seed", "auth: static_keys[0]: apikey: malformed key", "auth: static_keys[1]: apikey: malformed key"}
		} else {
			load = func(file string, getenv func(string) string) error {
				cfg, err := service.Load(file, getenv)
				if err == nil {
					err = cfg.Validate()
				}
				return err
			}
			want = []string{"nats.key: is not an API key"}
		}
		err := r.withConfig(w.Object, pod, c, "containers[0]", false, load)
		for _, s := range want {
			if err == nil || !strings.Contains(err.Error(), s) {
				t.Errorf("%s: with the placeholders: got %v, want an error containing %q", w.Object, err, s)
			}
		}
	}
}

// In dev, the placeholders of the NATS passwords work as the Redis one
// does (both sides read one Secret): with only the issuer pair and the
// keys filled, everything loads and nats-server takes the configuration as
// it is, no stand-in.
func TestDevNeedsOnlyTheIssuerAndKeys(t *testing.T) {
	all := realSecrets(t)
	values := secretValues{"allot-auth": all["allot-auth"], "allot-keys": all["allot-keys"]}
	r := renderPrivate(t, "overlays/dev", values)
	checkOnlyPlaceholderRule(t, r, values)
	opts, where, err := r.NATSOptions(natsWorkload(t, r), false)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	for _, u := range opts.Users {
		if !strings.HasPrefix(u.Password, Placeholder) {
			t.Errorf("%s: user %s: the password is not the Secret's placeholder", where, u.Username)
		}
	}
}

// Check refuses an issuer public key that is not the seed's: the auth
// service would sign users nats-server does not trust.
func TestIssuerMustMatchSeed(t *testing.T) {
	values := realSecrets(t)
	other, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	values["allot-auth"]["issuer-public"], _ = other.PublicKey()
	r := renderPrivate(t, "overlays/prod", values)
	checkOnlyPlaceholderRule(t, r, values, "key nats.conf: authorization.auth_callout.issuer: "+values["allot-auth"]["issuer-public"]+" is not the public key of the auth service's issuer seed")
}

// nats-server reads a variable as a value of its configuration file:
// Check refuses a password it would read otherwise than the Secret holds
// (the auth service would send the Secret's), never printing it.
func TestNATSReadsSecretsAsWritten(t *testing.T) {
	for name, password := range map[string]string{
		"digits":           "123456",
		"a size":           "3e",
		"a brace":          "s3cr}et",
		"a newline":        "s3cret\n",
		"a space":          "s3c ret",
		"a leading quote":  `"s3cret"`,
		"a boolean":        "true",
		"a trailing comma": "s3cret,",
	} {
		t.Run(name, func(t *testing.T) {
			values := realSecrets(t)
			values["allot-nats-auth"]["auth-password"] = password
			r := renderPrivate(t, "overlays/prod", values)
			checkOnlyPlaceholderRule(t, r, values, "key nats.conf: nats-server refuses it: $AUTH_PASSWORD: nats-server ")
			for _, err := range r.Check() {
				if strings.Contains(err.Error(), password) {
					t.Errorf("an error prints the password: %v", err)
				}
			}
		})
	}
}

// The kubelet's expansion of $(NAME) in a value: earlier variables only,
// an unknown one kept, $$ for a $.
func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "a", "KEY": "Ab.cd"}
	for in, want := range map[string]string{
		"service=$(KEY),admin=$(A)": "service=Ab.cd,admin=a",
		"$(B)":                      "$(B)",
		"$$(A)":                     "$(A)",
		"a$$b":                      "a$b",
		"$A":                        "$A",
		"x$":                        "x$",
		"$(A":                       "$(A",
		"":                          "",
	} {
		if got := expand(in, vars); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

// What counts as taken from a Secret: a secretKeyRef, or items each ending
// in $(NAME) of an earlier variable from a Secret.
func TestFromSecret(t *testing.T) {
	secret := func(name string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "k"}}}
	}
	value := func(name, v string) corev1.EnvVar { return corev1.EnvVar{Name: name, Value: v} }
	field := corev1.EnvVar{Name: "X", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}
	for name, tc := range map[string]struct {
		env  []corev1.EnvVar
		want string // "" or a prefix of the reason
	}{
		"a secretKeyRef":                   {[]corev1.EnvVar{secret("X")}, ""},
		"items of secrets":                 {[]corev1.EnvVar{secret("A"), secret("B"), value("X", "service=$(A),admin=$(B)")}, ""},
		"an alias":                         {[]corev1.EnvVar{secret("A"), value("X", "$(A)")}, ""},
		"missing":                          {[]corev1.EnvVar{secret("A")}, "missing"},
		"a value":                          {[]corev1.EnvVar{value("X", "SAabc")}, "must come from a Secret"},
		"a literal item":                   {[]corev1.EnvVar{secret("A"), value("X", "service=$(A),admin=Ab.cd")}, "must come from a Secret"},
		"a reference to a plain value":     {[]corev1.EnvVar{value("A", "x"), value("X", "service=$(A)")}, "must come from a Secret"},
		"a reference to a later variable":  {[]corev1.EnvVar{value("X", "service=$(A)"), secret("A")}, "must come from a Secret"},
		"a reference with text after":      {[]corev1.EnvVar{secret("A"), value("X", "$(A)x")}, "must come from a Secret"},
		"another source (a field)":         {[]corev1.EnvVar{field}, "must come from a Secret"},
		"empty":                            {[]corev1.EnvVar{value("X", "")}, "must come from a Secret"},
		"an item of a secret and an empty": {[]corev1.EnvVar{secret("A"), value("X", "$(A),")}, "must come from a Secret"},
	} {
		got := fromSecret(&corev1.Container{Env: tc.env}, "X")
		if tc.want == "" && got != "" || tc.want != "" && !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: fromSecret = %q, want %q", name, got, tc.want)
		}
	}
}

// The variables of a nats-server configuration: outside comments and
// quoted strings; a URL or a value with # is no comment.
func TestVariables(t *testing.T) {
	text := `# $COMMENTED out
server_name: $POD_NAME // $ALSO_COMMENTED
password: "$QUOTED"
pass: '$SINGLE' x: $AFTER_QUOTE
routes: [ nats://a:6222 ] $AFTER_URL
v: ab#c $AFTER_HASH_IN_VALUE
s: "a \" $ESCAPED_QUOTE" y: $AFTER_ESCAPE
bcrypt: $2a$11$abc
`
	want := []string{"AFTER_ESCAPE", "AFTER_HASH_IN_VALUE", "AFTER_QUOTE", "AFTER_URL", "POD_NAME"}
	if got := variables(text); !slices.Equal(got, want) {
		t.Errorf("variables = %q, want %q", got, want)
	}
}

// nats-server's positions are given in the file's own lines, not counting
// the variables Check adds above it.
func TestRenumber(t *testing.T) {
	for in, want := range map[string]string{
		":5:3: unknown field \"x\"":  "nats.conf:3:3: unknown field \"x\"",
		":1:4: bad\n:9:1: worse":     "nats.conf:(the variables):4: bad\nnats.conf:7:1: worse",
		"Parse error on line 4: 'x'": "Parse error on line 2: 'x'",
	} {
		if got := renumber(in, "nats.conf", 2); got != want {
			t.Errorf("renumber(%q) = %q, want %q", in, got, want)
		}
	}
}
