// Package cgtest holds what tests and trace recorders that need real
// cgroups share: throwaway cgroups (a v1 memory group with a limit,
// cgroup2 groups), each uniquely named and removed again with everything
// running inside, and building the test programs.
package cgtest

import (
	"errors"
	"fmt"
	"github.com/tokend/tokend/internal/buildtest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

// Mounts are where this host mounts the cgroup hierarchies; "" when absent.
type Mounts struct {
	V1Memory string // the cgroup v1 memory controller
	V2       string // cgroup2
}

// FindMounts reads this process's mount table.
func FindMounts() (Mounts, error) {
	self, err := procfs.Self()
	if err != nil {
		return Mounts{}, fmt.Errorf("cgtest: /proc/self: %w", err)
	}
	mis, err := self.MountInfo()
	if err != nil {
		return Mounts{}, fmt.Errorf("cgtest: mountinfo: %w", err)
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

// Need returns the mounts for a test that makes cgroups: it needs root, a
// v1 memory controller and cgroup2 (a hybrid host like tokend's Debian
// test host). It skips without them, except under CI=true, where a missing
// capability fails the test.
func Need(t testing.TB) Mounts {
	t.Helper()
	m, err := FindMounts()
	if err != nil {
		t.Fatal(err)
	}
	var missing string
	switch {
	case os.Geteuid() != 0:
		missing = "root"
	case m.V1Memory == "":
		missing = "a cgroup v1 memory controller mount"
	case m.V2 == "":
		missing = "a cgroup2 mount"
	}
	buildtest.Require(t, missing == "", missing)
	return m
}

var seq atomic.Int64

// Name is a cgroup name unique on the host, such as tokend-test-4242-3.
func Name(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), seq.Add(1))
}

// Group is a cgroup directory this package made.
type Group string

// Make creates the cgroup dir; a non-zero limit is written to a v1 group's
// memory.limit_in_bytes.
func Make(dir string, limit uint64) (Group, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("cgtest: make cgroup: %w (needs root and a writable cgroup mount)", err)
	}
	g := Group(dir)
	if limit > 0 {
		if err := os.WriteFile(g.File("memory.limit_in_bytes"), []byte(strconv.FormatUint(limit, 10)), 0); err != nil {
			return "", errors.Join(fmt.Errorf("cgtest: set limit: %w", err), g.Remove())
		}
	}
	return g, nil
}

// MakeT makes a uniquely named group under mount and removes it, with
// everything inside, when t ends.
func MakeT(t testing.TB, mount string, limit uint64) Group {
	t.Helper()
	g, err := Make(filepath.Join(mount, Name("tokend-test")), limit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Remove(); err != nil {
			t.Error(err)
		}
	})
	return g
}

// File is the path of a file in the group.
func (g Group) File(name string) string { return filepath.Join(string(g), name) }

// Remove thaws the group, kills every process in it and in the groups
// below it, and removes them all, children first. It waits up to 10 s for
// killed processes to leave.
func (g Group) Remove() error {
	entries, err := os.ReadDir(string(g))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cgtest: remove cgroup: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := Group(filepath.Join(string(g), e.Name())).Remove(); err != nil {
				return err
			}
		}
	}
	// A frozen process cannot die; cgroup.freeze exists on cgroup2 only.
	_ = os.WriteFile(g.File("cgroup.freeze"), []byte("0"), 0)
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(g.File("cgroup.procs"))
		if err != nil {
			return fmt.Errorf("cgtest: remove cgroup: %w", err)
		}
		pids := strings.Fields(string(b))
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgtest: cgroup %s still holds processes %v after SIGKILL", g, pids)
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
		if errors.Is(err, syscall.EBUSY) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("cgtest: remove cgroup: %w", err)
		}
		return nil
	}
}

// Command runs name with args inside groups: a shell moves itself into
// each group, so that everything the command does from its first
// instruction on is charged there, then execs the command.
func Command(groups []Group, name string, args ...string) *exec.Cmd {
	var script strings.Builder
	for _, g := range groups {
		fmt.Fprintf(&script, "echo 0 > '%s' && ", g.File("cgroup.procs"))
	}
	script.WriteString(`exec "$@"`)
	return exec.Command("/bin/sh", append([]string{"-c", script.String(), "sh", name}, args...)...)
}

// OOMKills reads how many processes the OOM killer killed in a v1 memory
// group (memory.oom_control's oom_kill).
func (g Group) OOMKills() (int, error) {
	b, err := os.ReadFile(g.File("memory.oom_control"))
	if err != nil {
		return 0, fmt.Errorf("cgtest: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("cgtest: %s has no oom_kill line (Linux 4.13 or later has it)", g.File("memory.oom_control"))
}

// BuildGo builds the Go package pkg (such as ./internal/fakecc, relative
// to the module root) into dir and returns the binary's path.
func BuildGo(moduleRoot, pkg, dir string) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	// go test puts the go command it runs with first on the test's $PATH.
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = moduleRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("cgtest: go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}
