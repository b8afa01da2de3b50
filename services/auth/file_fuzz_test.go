package auth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

// FuzzLoadKeysFile: any file is either refused with a keysFileError
// naming it, or read into well-formed keys, unique and sorted by id,
// that read the same once written back.
func FuzzLoadKeysFile(f *testing.F) {
	seeds, err := filepath.Glob("testdata/keys/*.yaml")
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seeds: %v", err)
	}
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			return
		}
		recs, err := parseKeysFile("keys.yaml", data)
		if err != nil {
			if _, ok := errors.AsType[*keysFileError](err); !ok || !strings.HasPrefix(err.Error(), "keys.yaml") {
				t.Fatalf("error %q (%T) does not name the file", err, err)
			}
			return
		}
		for i, r := range recs {
			if err := checkRecord(r); err != nil {
				t.Fatalf("read a bad record: %v", err)
			}
			if i > 0 && recs[i-1].ID >= r.ID {
				t.Fatalf("ids %q then %q: not sorted and unique", recs[i-1].ID, r.ID)
			}
		}
		out, err := yaml.Marshal(map[string][]Record{"keys": recs})
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseKeysFile("again.yaml", out)
		if err != nil {
			t.Fatalf("written back, refused: %v\n%s", err, out)
		}
		if len(recs) == 0 {
			recs = nil
		}
		if len(again) == 0 {
			again = nil
		}
		if diff := cmp.Diff(recs, again); diff != "" {
			t.Fatalf("written back (-first +again):\n%s\n%s", diff, out)
		}
	})
}
