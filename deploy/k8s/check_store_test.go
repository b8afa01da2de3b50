package k8s

import (
	"os"
	"strings"
	"testing"
)

// The NATS servers must hold the streams' caps: nats-server sets them
// aside against max_file_store when it creates the streams (8G there once
// made USAGE, USAGE_DEAD and NOTIFY, 10 GiB together, impossible to
// create), and max_file_store must fit the volume.
func TestStreamStore(t *testing.T) {
	base, err := os.ReadFile("base/allot.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, patch, allot string
		want               []string
	}{{
		name:  "streams-past-the-store",
		allot: strings.Replace(string(base), "  replicas: 3\n", "  replicas: 3\n  max_bytes: 16106127360\n", 1),
		want:  []string{"StatefulSet/nats: ConfigMap nats-config-", "jetstream.max_file_store: is 14.90 GiB (16000000000 bytes), but the streams of ", "reserve 17.00 GiB (18253611008 bytes)"},
	}, {
		name:  "store-past-the-volume",
		patch: "  - target:\n      kind: StatefulSet\n      name: nats\n    patch: |-\n      - op: replace\n        path: /spec/volumeClaimTemplates/0/spec/resources/requests/storage\n        value: 8Gi\n",
		want:  []string{"StatefulSet/nats: spec.volumeClaimTemplates[data]: requests 8.00 GiB (8589934592 bytes), less than jetstream.max_file_store: 14.90 GiB (16000000000 bytes)"},
	}, {
		name:  "unlimited-streams-reserve-nothing",
		allot: strings.Replace(string(base), "  replicas: 3\n", "  replicas: 3\n  max_bytes: -1\n  dead_max_bytes: -1\n  notify_max_bytes: -1\n", 1),
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fsys := inMemory(t)
			k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: allot\nresources:\n  - ../k8s/base\n"
			if tc.allot != "" {
				if err := writeFile(fsys, "/case/allot.yaml", []byte(tc.allot)); err != nil {
					t.Fatal(err)
				}
				k += "configMapGenerator:\n  - name: allot-config\n    behavior: replace\n    files:\n      - allot.yaml\n"
			}
			if tc.patch != "" {
				k += "patches:\n" + tc.patch
			}
			if err := writeFile(fsys, "/case/kustomization.yaml", []byte(k)); err != nil {
				t.Fatal(err)
			}
			r, err := Render(fsys, "/case")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, err := range r.Check() {
				got = append(got, err.Error())
			}
			if len(tc.want) == 0 {
				if len(got) != 0 {
					t.Errorf("Check: want no errors, got:\n%s", strings.Join(got, "\n"))
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("Check: got %d errors, want 1:\n%s", len(got), strings.Join(got, "\n"))
			}
			for _, w := range tc.want {
				if !strings.Contains(got[0], w) {
					t.Errorf("Check: error\n  %s\ndoes not contain %q", got[0], w)
				}
			}
		})
	}
}
