// Package scratch makes throwaway cgroups, v1 memory groups and cgroup2
// groups, for package memory's tests and its fixture recorder, and removes
// them again with everything running inside.
package scratch

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
)

// Mounts are where this host mounts the cgroup hierarchies; a field is ""
// when the host lacks that hierarchy.
type Mounts struct {
	// V1Memory is the cgroup v1 memory controller's mount.
	V1Memory string
	// V2 is the cgroup2 mount, with or without the memory controller.
	V2 string
}

// FindMounts reads the calling process's mount table.
func FindMounts() (Mounts, error) {
	self, err := procfs.Self()
	if err != nil {
		return Mounts{}, fmt.Errorf("scratch: /proc/self: %w", err)
	}
	mis, err := self.MountInfo()
	if err != nil {
		return Mounts{}, fmt.Errorf("scratch: /proc/self/mountinfo: %w", err)
	}
	var m Mounts
	for _, mi := range mis {
		switch mi.FSType {
		case "cgroup":
			if _, ok := mi.SuperOptions["memory"]; ok {
				m.V1Memory = mi.MountPoint
			}
		case "cgroup2":
			m.V2 = mi.MountPoint
		}
	}
	return m, nil
}

var seq atomic.Int64

// Name is a cgroup name unique on the host: prefix, this process's PID and
// a counter, such as tokend-test-4242-3.
func Name(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), seq.Add(1))
}

// Group is a cgroup directory this package made.
type Group string

// Make creates the cgroup dir; on a v1 memory hierarchy a non-zero limit is
// written to memory.limit_in_bytes.
func Make(dir string, limit uint64) (Group, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("scratch: make cgroup: %w (needs root and a writable cgroup mount)", err)
	}
	g := Group(dir)
	if limit > 0 {
		f := filepath.Join(dir, "memory.limit_in_bytes")
		if err := os.WriteFile(f, []byte(strconv.FormatUint(limit, 10)), 0); err != nil {
			return "", errors.Join(fmt.Errorf("scratch: set limit: %w", err), g.Remove())
		}
	}
	return g, nil
}

// File is the path of a file in the group.
func (g Group) File(name string) string { return filepath.Join(string(g), name) }

// Remove kills every process in the group and removes it, if it still
// exists. A killed process
// leaves the group only once the kernel has torn it down, so Remove waits
// for the group to empty, for up to 10 s.
func (g Group) Remove() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(g.File("cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			return nil // removed already
		}
		if err != nil {
			return fmt.Errorf("scratch: remove cgroup: %w", err)
		}
		pids := strings.Fields(string(b))
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("scratch: cgroup %s still holds processes %v after SIGKILL", g, pids)
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		err := os.Remove(string(g))
		// An emptied group can stay busy for a moment while the kernel
		// finishes tearing down its last process.
		if errors.Is(err, syscall.EBUSY) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("scratch: remove cgroup: %w", err)
		}
		return nil
	}
}

// Command runs name with args inside groups: a shell moves itself into
// each group, so that every page the command touches from its first
// instruction on is charged there, then execs the command.
func Command(groups []Group, name string, args ...string) *exec.Cmd {
	var script strings.Builder
	for _, g := range groups {
		fmt.Fprintf(&script, "echo 0 > '%s' && ", g.File("cgroup.procs"))
	}
	script.WriteString(`exec "$@"`)
	return exec.Command("/bin/sh", append([]string{"-c", script.String(), "sh", name}, args...)...)
}
