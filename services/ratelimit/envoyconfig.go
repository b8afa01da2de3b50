package ratelimit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/allot/allot/pkg/events"
	"go.yaml.in/yaml/v3"
)

// EnvoyDomain is one domain of the gRPC front's limits, written as an
// envoyproxy/ratelimit config file is: its domain and a tree of
// descriptors. Differences from envoyproxy/ratelimit are the allot_*
// fields and those CheckEnvoy reports.
type EnvoyDomain struct {
	Domain      string            `yaml:"domain"`
	Descriptors []EnvoyDescriptor `yaml:"descriptors"`
	// AllotDenyUnmatched (allot only) overrides
	// ratelimit.grpc.deny_unmatched for this domain: true answers a
	// descriptor that matches no limit OVER_LIMIT, false OK (as
	// envoyproxy/ratelimit does); unset follows the setting.
	AllotDenyUnmatched *bool `yaml:"allot_deny_unmatched,omitempty"`
}

// EnvoyDescriptor is one node of a domain's tree: a request descriptor's
// entry matches it by key and value (no value: any value, each value its
// own window; a value with '*': a wildcard).
type EnvoyDescriptor struct {
	Key            string            `yaml:"key"`
	Value          string            `yaml:"value,omitempty"`
	RateLimit      *EnvoyRateLimit   `yaml:"rate_limit,omitempty"`
	Descriptors    []EnvoyDescriptor `yaml:"descriptors,omitempty"`
	ShadowMode     bool              `yaml:"shadow_mode,omitempty"`
	DetailedMetric bool              `yaml:"detailed_metric,omitempty"`
	// Accepted for envoyproxy/ratelimit files, and refused (QuotaMode,
	// ShareThreshold) or ignored (ValueToMetric, Metadata): see
	// CheckEnvoy.
	QuotaMode      bool           `yaml:"quota_mode,omitempty"`
	ValueToMetric  bool           `yaml:"value_to_metric,omitempty"`
	ShareThreshold bool           `yaml:"share_threshold,omitempty"`
	Metadata       map[string]any `yaml:"metadata,omitempty"`

	// AllotUID (allot only) makes the entry's value a uid and its limit
	// that uid's allot limit: the uid's own ("ratelimit" grant, the window
	// ratelimit.check.<uid> spends) or, with AllotService, that service's,
	// the window of ratelimit.check.<uid> naming it. It takes no rate_limit.
	AllotUID     bool   `yaml:"allot_uid,omitempty"`
	AllotService string `yaml:"allot_service,omitempty"`
}

// EnvoyRateLimit is a descriptor's limit.
type EnvoyRateLimit struct {
	// Unit is second, minute, hour, day or week (any case); month and
	// year are refused (allot's windows end at 31 days).
	Unit            string         `yaml:"unit,omitempty"`
	RequestsPerUnit uint32         `yaml:"requests_per_unit"`
	Unlimited       bool           `yaml:"unlimited,omitempty"`
	Name            string         `yaml:"name,omitempty"`
	Replaces        []EnvoyReplace `yaml:"replaces,omitempty"`
}

// EnvoyReplace names a limit a matching limit replaces.
type EnvoyReplace struct {
	Name string `yaml:"name"`
}

// envoyUnits are the units allot can keep, by their lower-case name.
var envoyUnits = map[string]time.Duration{
	"second": time.Second,
	"minute": time.Minute,
	"hour":   time.Hour,
	"day":    24 * time.Hour,
	"week":   7 * 24 * time.Hour,
}

// Envoy limits on what one entry may hold, so a descriptor's key stays a
// reasonable Redis key.
const (
	maxEntryKey   = 256
	maxEntryValue = 1024
)

// DefaultEnvoyDomain is the domain the gRPC front always serves unless a
// configured domain of the same name replaces it: "allot", whose
// descriptor uid applies the uid's own limit, the window
// ratelimit.check.<uid> spends.
func DefaultEnvoyDomain() EnvoyDomain {
	return EnvoyDomain{Domain: "allot", Descriptors: []EnvoyDescriptor{{Key: "uid", AllotUID: true}}}
}

// ReadEnvoyDomain reads an envoyproxy/ratelimit config file's content:
// unknown fields and trailing documents are errors.
func ReadEnvoyDomain(data []byte) (EnvoyDomain, error) {
	var d EnvoyDomain
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&d); err != nil {
		if errors.Is(err, io.EOF) {
			return d, errors.New("empty file")
		}
		return d, err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return d, errors.New("more than one YAML document")
	}
	return d, nil
}

// LoadEnvoyFile reads one envoyproxy/ratelimit config file.
func LoadEnvoyFile(path string) (EnvoyDomain, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return EnvoyDomain{}, err
	}
	d, err := ReadEnvoyDomain(data)
	if err != nil {
		return d, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// EnvoyNote is one finding of CheckEnvoy: an error (the file does not
// load) or a note (it loads, and behaves differently from
// envoyproxy/ratelimit in the way Text says).
type EnvoyNote struct {
	Path  string // the descriptor path, such as descriptors[0].descriptors[1]
	Error bool
	Text  string
}

func (n EnvoyNote) String() string {
	kind := "note"
	if n.Error {
		kind = "error"
	}
	return fmt.Sprintf("%s: %s: %s", kind, n.Path, n.Text)
}

// CheckEnvoy checks d as allot would load it, returning every error and
// every difference from envoyproxy/ratelimit's behaviour it meets.
func CheckEnvoy(d EnvoyDomain) []EnvoyNote {
	var notes []EnvoyNote
	add := func(path string, isErr bool, format string, args ...any) {
		notes = append(notes, EnvoyNote{Path: path, Error: isErr, Text: fmt.Sprintf(format, args...)})
	}
	if d.Domain == "" {
		add("domain", true, "is required")
	}
	if d.AllotDenyUnmatched != nil && *d.AllotDenyUnmatched {
		add("allot_deny_unmatched", false, "a descriptor that matches no limit is OVER_LIMIT, where envoyproxy/ratelimit answers OK (and refuses this field)")
	}
	var walk func(path string, ds []EnvoyDescriptor)
	walk = func(path string, ds []EnvoyDescriptor) {
		seen := map[string]bool{}
		for i, desc := range ds {
			p := fmt.Sprintf("%s[%d]", path, i)
			switch {
			case desc.Key == "":
				add(p+".key", true, "is required")
			case len(desc.Key) > maxEntryKey || len(desc.Value) > maxEntryValue:
				add(p, true, "key and value must be at most %d and %d bytes", maxEntryKey, maxEntryValue)
			}
			id := desc.Key + "\x00" + desc.Value
			if seen[id] {
				add(p, true, "duplicate descriptor key %q value %q", desc.Key, desc.Value)
			}
			seen[id] = true
			checkEnvoyDescriptor(p, desc, add)
			walk(p+".descriptors", desc.Descriptors)
		}
	}
	walk("descriptors", d.Descriptors)
	return notes
}

func checkEnvoyDescriptor(p string, d EnvoyDescriptor, add func(string, bool, string, ...any)) {
	if d.QuotaMode {
		add(p+".quota_mode", true, "quota mode is not supported")
	}
	if d.ShareThreshold {
		add(p+".share_threshold", true, "share_threshold is not supported: each value of a wildcard has its own window")
	}
	if d.ValueToMetric {
		add(p+".value_to_metric", false, "ignored: metrics never carry request values")
	}
	if len(d.Metadata) > 0 {
		add(p+".metadata", false, "ignored: responses carry no descriptor metadata")
	}
	if d.DetailedMetric {
		add(p+".detailed_metric", false, "metrics are labelled with the configured descriptor path, never with request values")
	}
	if d.AllotUID {
		if d.RateLimit != nil {
			add(p+".rate_limit", true, "a uid descriptor (allot_uid) takes its limit from the uid's grants: no rate_limit")
		}
		if d.Value != "" {
			add(p+".value", true, "a uid descriptor (allot_uid) matches every uid: no value")
		}
		if d.AllotService != "" && (!events.IsToken(d.AllotService) || len(d.AllotService) > MaxServiceName) {
			add(p+".allot_service", true, "must be a service name")
		}
		return
	}
	if d.AllotService != "" {
		add(p+".allot_service", true, "only a uid descriptor (allot_uid: true) names a service")
	}
	rl := d.RateLimit
	if rl == nil {
		if d.ShadowMode {
			add(p+".shadow_mode", false, "no rate_limit here: shadow_mode has no effect")
		}
		return
	}
	unit := strings.ToLower(rl.Unit)
	_, known := envoyUnits[unit]
	switch {
	case rl.Unlimited && rl.Unit != "":
		add(p+".rate_limit.unit", true, "an unlimited limit takes no unit")
	case rl.Unlimited:
	case unit == "month" || unit == "year":
		add(p+".rate_limit.unit", true, "%s is not supported: allot's windows are fixed spans of at most 31 days (use day or week)", rl.Unit)
	case !known:
		add(p+".rate_limit.unit", true, "must be second, minute, hour, day or week, got %q", rl.Unit)
	case int64(rl.RequestsPerUnit) > MaxLimit:
		add(p+".rate_limit.requests_per_unit", true, "must be at most %d, got %d", MaxLimit, rl.RequestsPerUnit)
	}
	for j, r := range rl.Replaces {
		switch {
		case r.Name == "":
			add(fmt.Sprintf("%s.rate_limit.replaces[%d]", p, j), true, "name is required")
		case r.Name == rl.Name:
			add(fmt.Sprintf("%s.rate_limit.replaces[%d]", p, j), true, "a limit cannot replace itself")
		}
	}
}

// envoyErrors joins the errors of CheckEnvoy(d), naming the domain.
func envoyErrors(field string, d EnvoyDomain) error {
	var errs []error
	for _, n := range CheckEnvoy(d) {
		if n.Error {
			errs = append(errs, fmt.Errorf("ratelimit: %s (domain %q): %s: %s", field, d.Domain, n.Path, n.Text))
		}
	}
	return errors.Join(errs...)
}
