package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// cgroupRoot is where the kernel's control groups are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// cfsPeriod is the scheduling period of a CPU quota, in µs: 20 ms, a
// fifth of the kernel's default, so a process capped at a tenth of a core
// runs 2 ms in every 20 rather than 10 in every 100 (a pause of 90 ms
// would stall its pulls and replies more than the cap itself does).
const cfsPeriod = 20000

// cpuCap is a control group of one process whose CPU time is capped, as
// a Kubernetes CPU limit caps a pod: cores of CPU time per period, so on
// a machine whose shared servers would otherwise take what a replica
// leaves, each stack process is what binds, and adding one adds what a
// replica gives (-stack-cpu).
type cpuCap struct {
	dir string
}

// capCPU moves process pid, all its threads, into a new control group
// named name under root, capped at cores. It works on cgroup v2 (the cpu
// controller enabled for root's children, which it tries to enable) and
// on v1 (the cpu hierarchy mounted at root/cpu); it needs the right to
// write there (root, or a delegated subtree).
func capCPU(root string, pid int, cores float64, name string) (*cpuCap, error) {
	quota := int(cores * cfsPeriod)
	if quota < 1000 {
		return nil, fmt.Errorf("a cap of %g cores is below the kernel's least quota, 1 ms of each %d ms", cores, cfsPeriod/1000)
	}
	var dir string
	var limits map[string]string
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		// v2: the parent must hand the cpu controller to its children.
		dir = filepath.Join(root, name)
		ctl, err := os.ReadFile(filepath.Join(root, "cgroup.subtree_control"))
		if err != nil {
			return nil, fmt.Errorf("cgroup v2 at %s: %w", root, err)
		}
		if !slices.Contains(strings.Fields(string(ctl)), "cpu") {
			if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("+cpu"), 0); err != nil {
				return nil, fmt.Errorf("cgroup v2 at %s: enabling the cpu controller: %w", root, err)
			}
		}
		limits = map[string]string{"cpu.max": fmt.Sprintf("%d %d", quota, cfsPeriod)}
	} else if _, err := os.Stat(filepath.Join(root, "cpu", "cpu.cfs_quota_us")); err == nil {
		dir = filepath.Join(root, "cpu", name)
		limits = map[string]string{"cpu.cfs_period_us": strconv.Itoa(cfsPeriod), "cpu.cfs_quota_us": strconv.Itoa(quota)}
	} else {
		return nil, fmt.Errorf("no cgroup cpu controller at %s (neither v2 nor v1's cpu hierarchy)", root)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the cgroup: %w", err)
	}
	c := &cpuCap{dir: dir}
	// The period first: v1 refuses a quota checked against another one.
	for _, f := range []string{"cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.max"} {
		v, ok := limits[f]
		if !ok {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0); err != nil {
			return nil, errors.Join(fmt.Errorf("setting %s: %w", f, err), c.remove())
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return nil, errors.Join(fmt.Errorf("moving process %d into %s: %w", pid, dir, err), c.remove())
	}
	return c, nil
}

// remove deletes the control group; the kernel refuses while a process
// is still in it, so call it once the process has exited.
func (c *cpuCap) remove() error {
	if c == nil {
		return nil
	}
	if err := os.Remove(c.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the cgroup %s: %w", c.dir, err)
	}
	return nil
}
