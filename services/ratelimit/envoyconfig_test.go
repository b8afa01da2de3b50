package ratelimit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckEnvoyNotes(t *testing.T) {
	d, err := ReadEnvoyDomain([]byte(`
domain: d
allot_deny_unmatched: true
descriptors:
  - key: a
    rate_limit: {unit: month, requests_per_unit: 1}
  - key: b
    quota_mode: true
    value_to_metric: true
    metadata: {team: x}
    rate_limit: {unit: fortnight, requests_per_unit: 1}
  - key: c
    rate_limit: {unlimited: true, unit: second}
  - key: c
  - key: u
    allot_uid: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: e
    rate_limit: {name: x, replaces: [{name: x}, {name: ""}], unit: second, requests_per_unit: 1}
  - key: ""
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range CheckEnvoy(d) {
		got = append(got, n.String())
	}
	for _, want := range []string{
		"note: allot_deny_unmatched: a descriptor that matches no limit is OVER_LIMIT",
		"error: descriptors[0].rate_limit.unit: month is not supported",
		"error: descriptors[1].quota_mode: quota mode is not supported",
		"note: descriptors[1].value_to_metric: ignored",
		"note: descriptors[1].metadata: ignored",
		`error: descriptors[1].rate_limit.unit: must be second, minute, hour, day or week, got "fortnight"`,
		"error: descriptors[2].rate_limit.unit: an unlimited limit takes no unit",
		`error: descriptors[3]: duplicate descriptor key "c"`,
		"error: descriptors[4].rate_limit: a uid descriptor (allot_uid) takes its limit from the uid's grants",
		"error: descriptors[5].rate_limit.replaces[0]: a limit cannot replace itself",
		"error: descriptors[5].rate_limit.replaces[1]: name is required",
		"error: descriptors[6].key: is required",
	} {
		if !containsPrefix(got, want) {
			t.Errorf("missing %q in\n%s", want, strings.Join(got, "\n"))
		}
	}
	if len(got) != 12 {
		t.Errorf("%d notes, want 12:\n%s", len(got), strings.Join(got, "\n"))
	}
}

func containsPrefix(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

func TestReadEnvoyDomainRefuses(t *testing.T) {
	for _, bad := range []string{"", "domain: d\nfoo: 1\n", "domain: d\n---\ndomain: e\n", "domain: [", "descriptors: {}", "domain: d\nallot_deny_unmatched: maybe\n"} {
		if _, err := ReadEnvoyDomain([]byte(bad)); err == nil {
			t.Errorf("ReadEnvoyDomain(%q) = nil error", bad)
		}
	}
}

func TestGRPCSettingsValidate(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "edge.yaml")
	if err := os.WriteFile(file, []byte(edgeConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.RateLimit.GRPC.Files = []string{file}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("an envoyproxy/ratelimit file should load unchanged: %v", err)
	}
	cfg.RateLimit.GRPC = GRPCSettings{Listen: "nope", MaxRecvBytes: 1, MaxDescriptors: 0, MaxHitsAddend: 1 << 32,
		Files: []string{filepath.Join(dir, "missing.yaml")}}
	err := cfg.Validate()
	for _, want := range []string{"ratelimit.grpc.listen", "ratelimit.grpc.max_recv_bytes", "ratelimit.grpc.max_descriptors", "ratelimit.grpc.max_hits_addend", "missing.yaml"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to name %s", err, want)
		}
	}
	cfg = testConfig()
	cfg.RateLimit.GRPC.Domains = []EnvoyDomain{{Domain: "x", Descriptors: []EnvoyDescriptor{{Key: "uid", AllotUID: true, AllotService: "nope"}}}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `unknown service "nope"`) {
		t.Errorf("Validate() = %v, want the unknown service", err)
	}
}

func TestEnvoyMatch(t *testing.T) {
	d, err := ReadEnvoyDomain([]byte(edgeConfig))
	if err != nil {
		t.Fatal(err)
	}
	root := compileEnvoy([]EnvoyDomain{d}, false)["edge"].root
	tests := []struct {
		entries []envoyEntry
		want    string // the rule's path, "" for none
	}{
		{[]envoyEntry{{"remote_address", "1.2.3.4"}}, "remote_address"},
		{[]envoyEntry{{"generic_key", "api"}}, "generic_key=api"},
		{[]envoyEntry{{"generic_key", "other"}}, ""},
		{[]envoyEntry{{"generic_key", "api"}, {"header_match", "admin"}}, "generic_key=api.header_match=admin"},
		{[]envoyEntry{{"generic_key", "api"}, {"header_match", "user"}}, ""},
		{[]envoyEntry{{"path", "/static/x"}}, "path=/static/*"},
		{[]envoyEntry{{"path", "/static"}}, ""},
		{[]envoyEntry{{"remote_address", "1.2.3.4"}, {"extra", "x"}}, ""},
	}
	for _, tt := range tests {
		r := root.match(tt.entries)
		got := ""
		if r != nil {
			got = r.path
		}
		if got != tt.want {
			t.Errorf("match(%v) = %q, want %q", tt.entries, got, tt.want)
		}
	}
	for _, c := range []struct {
		pattern, value string
		want           bool
	}{{"a*", "abc", true}, {"*c", "abc", true}, {"a*b*c", "abc", true}, {"a*b*c", "ac", false}, {"ab*ba", "aba", false}, {"*", "", true}} {
		if got := wildcardMatches(strings.Split(c.pattern, "*"), c.value); got != c.want {
			t.Errorf("wildcardMatches(%q, %q) = %v", c.pattern, c.value, got)
		}
	}
}

// FuzzReadEnvoyDomain checks that no config file makes the reader, the
// checker or the compiler panic, and that what checks clean compiles
// into a tree that answers.
func FuzzReadEnvoyDomain(f *testing.F) {
	f.Add([]byte(edgeConfig))
	f.Add([]byte("domain: allot\ndescriptors:\n  - key: uid\n    allot_uid: true\n"))
	f.Add([]byte("domain: strict\nallot_deny_unmatched: true\ndescriptors:\n  - key: k\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ReadEnvoyDomain(data)
		if err != nil {
			return
		}
		if envoyErrors("f", d) != nil {
			return
		}
		root := compileEnvoy([]EnvoyDomain{d}, false)[d.Domain].root
		root.match([]envoyEntry{{"k", "v"}, {"uid", "u"}})
	})
}
