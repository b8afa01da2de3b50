package docs

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// root is the repository, seen from this module's directory.
const root = ".."

// skipped reports whether a directory is not part of the code the map
// describes: hidden ones (.git, .ci, .bin) and build or load-test output.
func skipped(name string) bool {
	return strings.HasPrefix(name, ".") || name == "bin" || name == "out"
}

// thing is something ARCHITECTURE.md must name: the words it is named by,
// and where it is on disk, for the failure message.
type thing struct {
	name, path string
	named      *regexp.Regexp
}

// notAfter is what may come before a name: not a letter, digit, '_', '.',
// '-' or '/', so that check.lua is not found in hit_check.lua, nor cmd/ in
// services/meter/cmd/.
const notAfter = `(^|[^A-Za-z0-9_./-])`

// word matches s where it is not part of a longer name or path.
func word(s string) *regexp.Regexp {
	return regexp.MustCompile(notAfter + regexp.QuoteMeta(s) + `($|[^A-Za-z0-9_-])`)
}

// folder matches the path of a folder or of anything in it: name/...
func folder(name string) *regexp.Regexp {
	return regexp.MustCompile(notAfter + regexp.QuoteMeta(name) + `/`)
}

// scripts lists every Lua script of the repository by base name.
func scripts(t *testing.T) []thing {
	t.Helper()
	var out []thing
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && p != root && skipped(d.Name()):
			return filepath.SkipDir
		case !d.IsDir() && strings.HasSuffix(d.Name(), ".lua"):
			rel, _ := filepath.Rel(root, p)
			out = append(out, thing{d.Name(), filepath.ToSlash(rel), word(d.Name())})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// dirs lists the directories in dir (relative to the repository) that
// are not skipped; named makes the pattern each must be named by.
func dirs(t *testing.T, dir string, named func(string) *regexp.Regexp) []thing {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, dir))
	if err != nil {
		t.Fatal(err)
	}
	var out []thing
	for _, e := range entries {
		if e.IsDir() && !skipped(e.Name()) {
			p := filepath.ToSlash(filepath.Join(dir, e.Name())) + "/"
			out = append(out, thing{e.Name(), p, named(e.Name())})
		}
	}
	return out
}

// TestArchitectureNamesEverything reads the repository and fails, naming
// what is missing, when ARCHITECTURE.md does not name one of its Lua
// scripts (by file name, such as apply_chunk.lua), services (as
// services/<name>) or top-level folders (as <name>/, such as deploy/k8s):
// a new script, service or folder needs its line in the map.
func TestArchitectureNamesEverything(t *testing.T) {
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		t.Fatalf("%s is not the repository root: %v", root, err)
	}
	text, err := os.ReadFile("ARCHITECTURE.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []struct {
		name   string
		things []thing
		least  int // so that a wrong root cannot pass with nothing found
	}{
		{"script", scripts(t), 10},
		{"service", dirs(t, "services", func(n string) *regexp.Regexp { return word("services/" + n) }), 4},
		{"top-level folder", dirs(t, ".", folder), 6},
	} {
		t.Run(kind.name, func(t *testing.T) {
			if len(kind.things) < kind.least {
				t.Fatalf("found %d %ss in %s, expected at least %d: %v", len(kind.things), kind.name, root, kind.least, kind.things)
			}
			var missing []string
			for _, th := range kind.things {
				if !th.named.Match(text) {
					missing = append(missing, th.path)
				}
			}
			slices.Sort(missing)
			missing = slices.Compact(missing)
			for _, m := range missing {
				t.Errorf("docs/ARCHITECTURE.md does not name the %s %s; add it where it belongs", kind.name, m)
			}
		})
	}
}
