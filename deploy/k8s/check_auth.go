package k8s

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/allot/allot/services/auth"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/conf"
	"github.com/nats-io/nats-server/v2/server"
	corev1 "k8s.io/api/core/v1"
)

// authName is the app.kubernetes.io/name of the auth service, which
// answers NATS's auth callout; every other allot service connects with an
// API key (keyEnv) and the auth service as the callout's own users.
const authName = "auth"

// keyEnv carries an allot service's API key (nats.key).
const keyEnv = "ALLOT_KEY"

// authSide is what the auth service connects to NATS as, and the public
// key of the issuer it signs users with: what nats.conf must name.
type authSide struct {
	User, Password       string
	SysUser, SysPassword string
	Issuer               string
}

// authSide loads the auth service's configuration as it will run (stand-ins
// for placeholders).
func (r *Rendered) authSide(w Workload) (authSide, error) {
	pod := &w.Template.Spec
	c := &pod.Containers[0]
	field := fmt.Sprintf("spec.template.spec.containers[%s]", c.Name)
	cfg, err := r.loadConfig(w.Object, pod, c, field)
	if err != nil {
		return authSide{}, err
	}
	ac, err := r.loadAuthConfig(w.Object, pod, c, field)
	if err != nil {
		return authSide{}, err
	}
	kp, err := ac.Issuer()
	if err != nil {
		return authSide{}, err
	}
	issuer, err := kp.PublicKey()
	if err != nil {
		return authSide{}, err
	}
	return authSide{User: cfg.NATS.User, Password: cfg.NATS.Password.Reveal(), SysUser: ac.SysUser, SysPassword: ac.SysPassword.Reveal(), Issuer: issuer}, nil
}

// loadAuthConfig loads the auth section of the allot.yaml container c
// loads, with its environment, as the auth service does at start.
func (r *Rendered) loadAuthConfig(o Object, pod *corev1.PodSpec, c *corev1.Container, field string) (auth.Config, error) {
	var cfg auth.Config
	err := r.withConfig(o, pod, c, field, true, func(file string, getenv func(string) string) error {
		var err error
		cfg, err = auth.LoadConfig(file, getenv)
		return err
	})
	return cfg, err
}

// natsContainer returns the container of w that runs nats-server from a
// configuration file (an image named nats, --config or -c), and the file.
func natsContainer(w Workload) (*corev1.Container, string, bool) {
	for i := range w.Template.Spec.Containers {
		c := &w.Template.Spec.Containers[i]
		if _, ok := natsImageTag(c.Image); !ok {
			continue
		}
		j := slices.IndexFunc(c.Args, func(a string) bool { return a == "--config" || a == "-c" })
		if j >= 0 && j+1 < len(c.Args) {
			return c, c.Args[j+1], true
		}
	}
	return nil, "", false
}

// NATSOptions returns nats-server's own reading (ProcessConfigString) of
// the configuration file the NATS container of w runs with, from a mounted
// ConfigMap, its $VARIABLES taken from the container's environment as
// nats-server takes them; where names the file for messages. With standIn,
// the placeholders of standIns become the values they stand for: the file
// as nats-server will read it once the Secrets are filled.
//
// nats-server reads a variable's value as a value of its config file
// ("3e" is a size, "abc}" is abc): a variable from a Secret must read back
// as the same string, or the server and the auth service would disagree on
// a password. The variables are defined above the file, where nats-server
// would read one named like an option (PORT) as that option; the
// environment has none such. A file that includes others is not followed.
func (r *Rendered) NATSOptions(w Workload, standIn bool) (opts *server.Options, where string, err error) {
	c, file, ok := natsContainer(w)
	if !ok {
		return nil, "", fmt.Errorf("%s: no nats container run with --config", w.Object)
	}
	text, cm, ok := r.mountedFile(w.Object, &w.Template.Spec, c, file)
	if !ok {
		return nil, "", fmt.Errorf("%s: %s (--config) is not a key of a mounted ConfigMap", w.Object, file)
	}
	base := path.Base(file)
	where = fmt.Sprintf("ConfigMap %s, key %s", cm, base)
	env := r.env(w.Object, c, standIn)
	secretVar := map[string]bool{}
	for _, e := range c.Env {
		secretVar[e.Name] = e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil
	}
	// The variables are defined on lines of their own above the file, where
	// nats-server finds them before the environment; it reads them exactly
	// as it reads environment variables (as "pk=<value>").
	var defs strings.Builder
	n := 0
	for _, name := range variables(text) {
		v, ok := env[name]
		if !ok {
			continue // nats-server reports it
		}
		m, err := conf.Parse("pk=" + v)
		if err != nil {
			return nil, where, fmt.Errorf("$%s: nats-server cannot read the value of %s (use letters and digits)", name, name)
		}
		if s, isString := m["pk"].(string); secretVar[name] && !isString {
			return nil, where, fmt.Errorf("$%s: nats-server reads the value of %s as a %T, not as the string the Secret holds; use letters and digits, starting with a letter", name, name, m["pk"])
		} else if secretVar[name] && s != v {
			return nil, where, fmt.Errorf("$%s: nats-server reads the value of %s as another string than the Secret holds (cut at a brace, a comma or a newline, or unquoted); use letters and digits, starting with a letter", name, name)
		}
		fmt.Fprintf(&defs, "%s: %s\n", name, v)
		n++
	}
	opts = &server.Options{}
	if err := opts.ProcessConfigString(defs.String() + text); err != nil {
		return nil, where, errors.New(renumber(strings.TrimSpace(err.Error()), base, n))
	}
	return opts, where, nil
}

// variables returns the names of the $VARIABLES a nats-server
// configuration refers to, outside comments and quoted strings, sorted.
func variables(text string) []string {
	seen := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		var quote byte
		for i := 0; i < len(line); i++ {
			ch := line[i]
			switch {
			case quote != 0:
				if ch == '\\' && quote == '"' {
					i++
				} else if ch == quote {
					quote = 0
				}
			case ch == '"' || ch == '\'':
				quote = ch
			case (ch == '#' || strings.HasPrefix(line[i:], "//")) && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
				i = len(line) // a comment; "ab#c" and nats://host are values
			case ch == '$' && strings.HasPrefix(line[i+1:], "2a$"):
				// A bcrypt hash, which nats-server takes as a string.
				for i < len(line) && line[i] != ' ' && line[i] != '\t' {
					i++
				}
			case ch == '$':
				if m := varName.FindString(line[i+1:]); m != "" {
					seen[m] = true
					i += len(m)
				}
			}
		}
	}
	names := make([]string, 0, len(seen))
	for name := range seen {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

var varName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*`)

// renumber takes the n lines of variables out of the positions in
// nats-server's messages (":12:3: ..." and "on line 12") and names file.
func renumber(msg, file string, n int) string {
	line := func(s string) string {
		l, _ := strconv.Atoi(s)
		if l <= n {
			return "(the variables)"
		}
		return strconv.Itoa(l - n)
	}
	msg = positionRE.ReplaceAllStringFunc(msg, func(m string) string {
		g := positionRE.FindStringSubmatch(m)
		return file + ":" + line(g[1]) + ":" + g[2] + ":"
	})
	return onLineRE.ReplaceAllStringFunc(msg, func(m string) string {
		return "on line " + line(onLineRE.FindStringSubmatch(m)[1])
	})
}

var (
	positionRE = regexp.MustCompile(`(?m)^:(\d+):(\d+):`)
	onLineRE   = regexp.MustCompile(`on line (\d+)`)
)

// checkNATSAuth checks that NATS hands every client connection to the auth
// service: where allot services run beside a NATS workload, the NATS
// configuration must parse with nats-server's own parser and carry the
// blocks auth.ServerConfig.Render writes for the auth service's users,
// passwords and issuer: the callout, with the issuer whose seed the auth
// service signs with, and the service's two users exempt from it.
func (r *Rendered) checkNATSAuth(p *problems, ws []Workload) {
	var svc *Workload
	services := 0
	for i, w := range ws {
		if w.IsService() {
			services++
			if w.Template.Labels["app.kubernetes.io/name"] == authName {
				svc = &ws[i]
			}
		}
	}
	if services == 0 {
		return
	}
	for _, w := range ws {
		if _, _, ok := natsContainer(w); !ok {
			continue
		}
		o := w.Object
		if svc == nil {
			p.add(o, "spec.template", "NATS runs beside the allot services, but no allot service is named %q (app.kubernetes.io/name): nothing answers its auth callout", authName)
			continue
		}
		opts, where, err := r.NATSOptions(w, true)
		if err != nil {
			if where == "" {
				*p = append(*p, err)
			} else {
				p.add(o, where, "nats-server refuses it: %v", err)
			}
			continue
		}
		cb := opts.AuthCallout
		if cb == nil {
			p.add(o, where+": authorization.auth_callout", "missing: nats-server would not hand connections to the auth service, so no API key would be checked")
			continue
		}
		if !r.authSecretsOK(*svc) {
			continue // reported by checkService
		}
		a, err := r.authSide(*svc)
		if err != nil {
			continue // reported by checkService
		}
		before := len(*p)
		if cb.Issuer != a.Issuer {
			p.add(o, where+": authorization.auth_callout.issuer", "%s is not the public key of the auth service's issuer seed (ALLOT_AUTH_ISSUER_SEED), %s: nats-server would refuse every user it signs; put both from `allot keys issuer` in Secret allot-auth", cb.Issuer, a.Issuer)
		}
		for _, u := range []struct{ name, what string }{{a.User, "its own, nats.user"}, {a.SysUser, "its system user, auth.sys_user"}} {
			if !slices.Contains(cb.AuthUsers, u.name) {
				p.add(o, where+": authorization.auth_callout.auth_users", "%q lacks %q, the auth service's user (%s): nats-server would hand that connection to the callout the service answers", cb.AuthUsers, u.name, u.what)
			}
		}
		if len(*p) > before {
			continue
		}
		blocks, err := auth.ServerConfig{Issuer: a.Issuer, AuthUser: a.User, AuthPassword: a.Password, SysUser: a.SysUser, SysPassword: a.SysPassword}.Render()
		if err != nil {
			p.add(svc.Object, "spec.template.spec.containers[0].env", "%v", err)
			continue
		}
		want := &server.Options{}
		if err := want.ProcessConfigString(blocks); err != nil {
			p.add(svc.Object, "spec.template.spec.containers[0].env", "nats-server refuses what auth.ServerConfig.Render writes for it: %v", err)
			continue
		}
		if diff := cmp.Diff(accessOf(want, a), accessOf(opts, a)); diff != "" {
			p.add(o, where, "the access control is not what auth.ServerConfig.Render writes for the auth service's users and issuer (-want +got):\n%s", diff)
		}
	}
}

// authSecretsOK reports whether the auth service takes all its secrets
// from Secrets; if not, checkService says which does not.
func (r *Rendered) authSecretsOK(w Workload) bool {
	c := &w.Template.Spec.Containers[0]
	for _, env := range secretEnv[authName] {
		if fromSecret(c, env) != "" {
			return false
		}
	}
	return true
}

// access is the access control of a nats-server configuration, passwords
// named by whose they are (never printed).
type access struct {
	Users         []string
	Accounts      []string
	SystemAccount string
	Callout       *server.AuthCallout
	Other         []string
}

func accessOf(o *server.Options, a authSide) access {
	password := func(pw string) string {
		switch pw {
		case a.Password:
			return "the auth service's nats.password"
		case a.SysPassword:
			return "the auth service's auth.sys_password"
		}
		return "another password"
	}
	var v access
	for _, u := range o.Users {
		acc := "$G"
		if u.Account != nil {
			acc = u.Account.Name
		}
		s := fmt.Sprintf("%s in account %s, password: %s", u.Username, acc, password(u.Password))
		if u.Permissions != nil {
			s += ", with permissions"
		}
		v.Users = append(v.Users, s)
	}
	sort.Strings(v.Users)
	for _, acc := range o.Accounts {
		v.Accounts = append(v.Accounts, acc.Name)
	}
	sort.Strings(v.Accounts)
	v.SystemAccount = o.SystemAccount
	if o.AuthCallout != nil {
		cb := *o.AuthCallout
		cb.AuthUsers = slices.Sorted(slices.Values(cb.AuthUsers))
		v.Callout = &cb
	}
	for what, set := range map[string]bool{
		"a single user (authorization.user)": o.Username != "",
		"a token (authorization.token)":      o.Authorization != "",
		"nkey users":                         len(o.Nkeys) > 0,
		"no_auth_user " + o.NoAuthUser:       o.NoAuthUser != "",
		"operator mode (trusted operators)":  len(o.TrustedOperators) > 0 || len(o.TrustedKeys) > 0,
	} {
		if set {
			v.Other = append(v.Other, what)
		}
	}
	sort.Strings(v.Other)
	return v
}
