package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestImportEnvoy(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", "domain: edge\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: second, requests_per_unit: 10}\n")
	noted := write("noted.yaml", "domain: db\ndescriptors:\n  - key: database\n    value_to_metric: true\n    rate_limit: {unit: minute, requests_per_unit: 10}\n")
	bad := write("bad.yaml", "domain: q\ndescriptors:\n  - key: k\n    quota_mode: true\n    rate_limit: {unit: month, requests_per_unit: 10}\n")
	unknown := write("unknown.yaml", "domain: q\nfrob: 1\n")
	deny := write("deny.yaml", "domain: strict\nallot_deny_unmatched: true\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: second, requests_per_unit: 10}\n")
	allow := write("allow.yaml", "domain: lax\nallot_deny_unmatched: false\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: second, requests_per_unit: 10}\n")
	notBool := write("notbool.yaml", "domain: q\nallot_deny_unmatched: maybe\n")

	r := runCLI(t, nil, "", "ratelimit", "import-envoy", good, noted)
	if r.code != 0 || !strings.Contains(r.stdout, `domain "edge" loads unchanged`) ||
		!strings.Contains(r.stdout, "note: descriptors[0].value_to_metric: ignored") || !strings.Contains(r.stdout, `domain "db" loads, with the differences above`) {
		t.Errorf("good files: %+v", r)
	}
	r = runCLI(t, nil, "", "ratelimit", "import-envoy", bad, unknown, filepath.Join(dir, "missing.yaml"))
	if r.code != 1 || !strings.Contains(r.stdout, "error: descriptors[0].quota_mode") || !strings.Contains(r.stdout, "month is not supported") ||
		!strings.Contains(r.stdout, "field frob not found") || !strings.Contains(r.stderr, "3 files do not load") {
		t.Errorf("bad files: %+v", r)
	}
	r = runCLI(t, nil, "", "ratelimit", "import-envoy", deny, allow)
	if r.code != 0 || !strings.Contains(r.stdout, "deny.yaml: note: allot_deny_unmatched: a descriptor that matches no limit is OVER_LIMIT, where envoyproxy/ratelimit answers OK") ||
		!strings.Contains(r.stdout, `domain "strict" loads, with the differences above`) || !strings.Contains(r.stdout, `domain "lax" loads unchanged`) {
		t.Errorf("allot_deny_unmatched: %+v", r)
	}
	r = runCLI(t, nil, "", "ratelimit", "import-envoy", notBool)
	if r.code != 1 || !strings.Contains(r.stdout, "notbool.yaml: error: ") || !strings.Contains(r.stdout, "cannot unmarshal !!str `maybe` into bool") {
		t.Errorf("allot_deny_unmatched not a bool: %+v", r)
	}
	if r := runCLI(t, nil, "", "ratelimit", "import-envoy"); r.code != 2 {
		t.Errorf("no file: %+v", r)
	}
}
