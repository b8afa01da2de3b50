package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"time"

	rlv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
)

// GRPCSettings is ratelimit.grpc: the Envoy rate limit service front
// (envoy.service.ratelimit.v3.RateLimitService), off unless Listen is set.
type GRPCSettings struct {
	// Listen is the address of the gRPC listener, such as 127.0.0.1:8081;
	// empty (the default) starts none.
	Listen string `yaml:"listen"`
	// MaxRecvBytes bounds one request; a larger one is refused with
	// ResourceExhausted. Default 1 MiB.
	MaxRecvBytes int `yaml:"max_recv_bytes"`
	// MaxDescriptors bounds the descriptors of one request; more are
	// refused with ResourceExhausted. Default 64.
	MaxDescriptors int `yaml:"max_descriptors"`
	// MaxHitsAddend bounds a request's or a descriptor's hits_addend; more
	// is refused with InvalidArgument. Default and largest 2^31-1.
	MaxHitsAddend int64 `yaml:"max_hits_addend"`
	// ResponseHeaders adds x-ratelimit-limit, -remaining and -reset of the
	// descriptor closest to its limit to every answer, for Envoy to
	// forward (envoyproxy/ratelimit's LIMIT_RESPONSE_HEADERS_ENABLED).
	// Default true.
	ResponseHeaders bool `yaml:"response_headers"`
	// DenyUnmatched answers a descriptor that matches no configured limit
	// OVER_LIMIT (its status without current_limit) instead of OK without
	// a status limit, as envoyproxy/ratelimit answers; under
	// ratelimit.shadow it is counted and answered OK. A domain's
	// allot_deny_unmatched overrides it. Default false.
	DenyUnmatched bool `yaml:"deny_unmatched"`
	// Files are envoyproxy/ratelimit config files, one domain each.
	Files []string `yaml:"files"`
	// Domains are domains written inline, in the same format.
	Domains []EnvoyDomain `yaml:"domains"`
}

// DefaultGRPCSettings returns ratelimit.grpc's defaults: no listener.
func DefaultGRPCSettings() GRPCSettings {
	return GRPCSettings{MaxRecvBytes: 1 << 20, MaxDescriptors: 64, MaxHitsAddend: math.MaxInt32, ResponseHeaders: true}
}

// AllDomains returns the domains the front serves: the default domain
// (DefaultEnvoyDomain), then those of Files and Domains; a later domain
// of the same name replaces an earlier one.
func (g GRPCSettings) AllDomains() ([]EnvoyDomain, error) {
	all := []EnvoyDomain{DefaultEnvoyDomain()}
	for _, f := range g.Files {
		d, err := LoadEnvoyFile(f)
		if err != nil {
			return nil, fmt.Errorf("ratelimit: ratelimit.grpc.files: %w", err)
		}
		all = append(all, d)
	}
	all = append(all, g.Domains...)
	out := make([]EnvoyDomain, 0, len(all))
	index := map[string]int{}
	for _, d := range all {
		if i, ok := index[d.Domain]; ok {
			out[i] = d
			continue
		}
		index[d.Domain] = len(out)
		out = append(out, d)
	}
	return out, nil
}

// Validate checks ratelimit.grpc, reading its files.
func (g GRPCSettings) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("ratelimit: ratelimit.grpc.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if g.Listen != "" {
		if _, _, err := net.SplitHostPort(g.Listen); err != nil {
			add("listen", "must be host:port, got %q", g.Listen)
		}
	}
	if g.MaxRecvBytes < 1024 || g.MaxRecvBytes > 64<<20 {
		add("max_recv_bytes", "must be between 1024 and 67108864, got %d", g.MaxRecvBytes)
	}
	if g.MaxDescriptors < 1 || g.MaxDescriptors > 4096 {
		add("max_descriptors", "must be between 1 and 4096, got %d", g.MaxDescriptors)
	}
	if g.MaxHitsAddend < 1 || g.MaxHitsAddend > math.MaxInt32 {
		add("max_hits_addend", "must be between 1 and %d, got %d", math.MaxInt32, g.MaxHitsAddend)
	}
	domains, err := g.AllDomains()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, d := range domains {
		errs = append(errs, envoyErrors("ratelimit.grpc", d))
	}
	return errors.Join(errs...)
}

// envoyRule is the limit of one configured descriptor node.
type envoyRule struct {
	path      string // the configured path, key[=value] joined by '.', for metrics and names
	label     string // the metrics' service label
	unit      rlv3.RateLimitResponse_RateLimit_Unit
	rpu       uint32
	interval  time.Duration
	unlimited bool
	shadow    bool
	name      string
	replaces  []string
	// uid rules spend the uid's allot limit of service ("" its own).
	uid     bool
	service string
}

// envoyNode is a node of a domain's descriptor tree.
type envoyNode struct {
	exact     map[string]*envoyNode // key "\x00" value
	any       map[string]*envoyNode // key (no value: every value)
	wildcards []envoyWildcard
	rule      *envoyRule
}

type envoyWildcard struct {
	key   string
	parts []string // the value split at '*'
	node  *envoyNode
}

// envoyDomain is a compiled domain: its tree and whether a descriptor
// that matches no limit is denied.
type envoyDomain struct {
	root          *envoyNode
	denyUnmatched bool
}

// envoyDomains are the compiled domains, by name.
type envoyDomains map[string]envoyDomain

// compileEnvoy builds the trees of domains, which Validate has checked;
// denyUnmatched is ratelimit.grpc.deny_unmatched, for the domains that
// do not set their own.
func compileEnvoy(domains []EnvoyDomain, denyUnmatched bool) envoyDomains {
	out := envoyDomains{}
	for _, d := range domains {
		root := newEnvoyNode()
		root.add(d.Domain, "", d.Descriptors)
		deny := denyUnmatched
		if d.AllotDenyUnmatched != nil {
			deny = *d.AllotDenyUnmatched
		}
		out[d.Domain] = envoyDomain{root: root, denyUnmatched: deny}
	}
	return out
}

func newEnvoyNode() *envoyNode {
	return &envoyNode{exact: map[string]*envoyNode{}, any: map[string]*envoyNode{}}
}

func (n *envoyNode) add(domain, parent string, ds []EnvoyDescriptor) {
	for _, d := range ds {
		child := newEnvoyNode()
		path := d.Key
		if d.Value != "" {
			path += "=" + d.Value
		}
		if parent != "" {
			path = parent + "." + path
		}
		switch {
		case d.Value == "":
			n.any[d.Key] = child
		case strings.Contains(d.Value, "*"):
			n.wildcards = append(n.wildcards, envoyWildcard{key: d.Key, parts: strings.Split(d.Value, "*"), node: child})
		default:
			n.exact[d.Key+"\x00"+d.Value] = child
		}
		child.rule = ruleOf(domain, path, d)
		child.add(domain, path, d.Descriptors)
	}
}

func ruleOf(domain, path string, d EnvoyDescriptor) *envoyRule {
	label := "(envoy:" + domain + ")"
	if d.DetailedMetric {
		label = "(envoy:" + domain + ":" + path + ")"
	}
	if d.AllotUID {
		return &envoyRule{path: path, label: label, uid: true, service: d.AllotService, shadow: d.ShadowMode}
	}
	if d.RateLimit == nil {
		return nil
	}
	rl := d.RateLimit
	r := &envoyRule{path: path, label: label, rpu: rl.RequestsPerUnit, unlimited: rl.Unlimited, shadow: d.ShadowMode, name: rl.Name}
	if !rl.Unlimited {
		unit := strings.ToLower(rl.Unit)
		r.interval = envoyUnits[unit]
		r.unit = rlv3.RateLimitResponse_RateLimit_Unit(rlv3.RateLimitResponse_RateLimit_Unit_value[strings.ToUpper(unit)])
	}
	for _, rp := range rl.Replaces {
		r.replaces = append(r.replaces, rp.Name)
	}
	return r
}

// envoyEntry is one entry of a request descriptor.
type envoyEntry struct{ key, value string }

// match returns the rule of a request descriptor's entries, as
// envoyproxy/ratelimit finds it: each entry descends by its key and value,
// else a wildcard of its key that matches the value, else its key alone;
// the node reached by the last entry holds the rule. nil: no limit.
func (n *envoyNode) match(entries []envoyEntry) *envoyRule {
	node := n
	for _, e := range entries {
		next := node.exact[e.key+"\x00"+e.value]
		if next == nil {
			for _, w := range node.wildcards {
				if w.key == e.key && wildcardMatches(w.parts, e.value) {
					next = w.node
					break
				}
			}
		}
		if next == nil {
			next = node.any[e.key]
		}
		if next == nil {
			return nil
		}
		node = next
	}
	return node.rule
}

// wildcardMatches reports whether value matches the pattern whose parts
// were split at '*': the first part a prefix, the last a suffix, the
// middle ones in order between them, none overlapping.
func wildcardMatches(parts []string, value string) bool {
	first, last := parts[0], parts[len(parts)-1]
	if len(value) < len(first)+len(last) || !strings.HasPrefix(value, first) || !strings.HasSuffix(value, last) {
		return false
	}
	rest := value[len(first) : len(value)-len(last)]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(rest, p)
		if i < 0 {
			return false
		}
		rest = rest[i+len(p):]
	}
	return true
}

// validateGRPC checks ratelimit.grpc and that each uid descriptor's
// allot_service is a configured service.
func (s Settings) validateGRPC() error {
	errs := []error{s.GRPC.Validate()}
	domains, err := s.GRPC.AllDomains()
	if err != nil {
		return errors.Join(errs...) // Validate reported it
	}
	var walk func(domain, path string, ds []EnvoyDescriptor)
	walk = func(domain, path string, ds []EnvoyDescriptor) {
		for i, d := range ds {
			p := fmt.Sprintf("%s[%d]", path, i)
			if d.AllotUID && d.AllotService != "" {
				if _, ok := s.Services[d.AllotService]; !ok {
					errs = append(errs, fmt.Errorf("ratelimit: ratelimit.grpc (domain %q): %s.allot_service: unknown service %q: configure it under ratelimit.services", domain, p, d.AllotService))
				}
			}
			walk(domain, p+".descriptors", d.Descriptors)
		}
	}
	for _, d := range domains {
		walk(d.Domain, "descriptors", d.Descriptors)
	}
	return errors.Join(errs...)
}
