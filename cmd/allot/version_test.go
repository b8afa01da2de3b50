package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/allot/allot/pkg/service"
)

func TestVersion(t *testing.T) {
	r := runCLI(t, nil, "", "version")
	if want := "allot " + service.Build().String() + "\n"; r.code != 0 || r.stdout != want {
		t.Errorf("allot version: %+v, want stdout %q", r, want)
	}
	if r := runCLI(t, nil, "", "version", "extra"); r.code != 2 {
		t.Errorf("allot version extra: %+v", r)
	}
}

// The version and revision the Makefile and the Dockerfile link in reach
// `allot version`: the -X names are the ones pkg/service reads.
func TestVersionLinked(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the allot command")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	bin := filepath.Join(t.TempDir(), "allot")
	const pkg = "github.com/allot/allot/pkg/service"
	build := exec.Command(goTool, "build", "-o", bin, "-ldflags",
		"-X "+pkg+".version=v1.2.3-rc.1 -X "+pkg+".revision=0123456789abcdef0123 -X "+pkg+".modified=true", ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "allot 1.2.3-rc.1 (0123456789ab, modified) "; !strings.HasPrefix(string(out), want) {
		t.Errorf("allot version: %q, want it to start with %q", out, want)
	}
}
