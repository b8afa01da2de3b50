package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeCgroup lays out the files of a cgroup hierarchy under a temporary
// root: v2 (cgroup.controllers, subtree_control as given) or v1 (a cpu
// hierarchy). Writes to it are plain files, so the test reads back what
// capCPU wrote where.
func fakeCgroup(t *testing.T, v2 bool, subtree string) string {
	t.Helper()
	root := t.TempDir()
	write := func(p, v string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if v2 {
		write(filepath.Join(root, "cgroup.controllers"), "cpuset cpu io memory pids\n")
		write(filepath.Join(root, "cgroup.subtree_control"), subtree)
	} else {
		write(filepath.Join(root, "cpu", "cpu.cfs_quota_us"), "-1\n")
	}
	return root
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCapCPUV1(t *testing.T) {
	root := fakeCgroup(t, false, "")
	c, err := capCPU(root, 4242, 0.25, "allot-lt-1")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "cpu", "allot-lt-1")
	for f, want := range map[string]string{"cpu.cfs_period_us": "20000", "cpu.cfs_quota_us": "5000", "cgroup.procs": "4242"} {
		if got := readFile(t, filepath.Join(dir, f)); got != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
	// The kernel refuses to remove a cgroup with files of its own; the
	// fake one has them, so empty it as the kernel would be once the
	// process exited.
	for _, f := range []string{"cpu.cfs_period_us", "cpu.cfs_quota_us", "cgroup.procs"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the cgroup is still there: %v", err)
	}
	if err := c.remove(); err != nil {
		t.Errorf("removing it twice: %v", err)
	}
}

func TestCapCPUV2(t *testing.T) {
	for _, subtree := range []string{"", "cpuset io\n", "cpu memory\n"} {
		root := fakeCgroup(t, true, subtree)
		if _, err := capCPU(root, 7, 1.5, "allot-lt-2"); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(root, "allot-lt-2", "cpu.max")); got != "30000 20000" {
			t.Errorf("cpu.max = %q, want %q", got, "30000 20000")
		}
		if got := readFile(t, filepath.Join(root, "allot-lt-2", "cgroup.procs")); got != "7" {
			t.Errorf("cgroup.procs = %q", got)
		}
		// Enabled for the children only when it was not.
		want := subtree
		if !strings.Contains(subtree, "cpu ") {
			want = "+cpu"
		}
		if got := readFile(t, filepath.Join(root, "cgroup.subtree_control")); got != want {
			t.Errorf("subtree_control %q became %q, want %q", subtree, got, want)
		}
	}
}

func TestCapCPURefuses(t *testing.T) {
	if _, err := capCPU(t.TempDir(), 1, 0.5, "x"); err == nil || !strings.Contains(err.Error(), "no cgroup cpu controller") {
		t.Errorf("no hierarchy: got %v", err)
	}
	if _, err := capCPU(fakeCgroup(t, false, ""), 1, 0.04, "x"); err == nil || !strings.Contains(err.Error(), "below") {
		t.Errorf("a cap too small: got %v", err)
	}
	root := fakeCgroup(t, false, "")
	if _, err := capCPU(root, 1, 0.5, "same"); err != nil {
		t.Fatal(err)
	}
	if _, err := capCPU(root, 2, 0.5, "same"); err == nil || !strings.Contains(err.Error(), "creating the cgroup") {
		t.Errorf("a name taken: got %v", err)
	}
}
