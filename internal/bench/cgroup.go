package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Mounts are the cgroup hierarchies a run uses: a memory controller (cgroup
// v1's, or cgroup2 with the memory controller) for the limit, and cgroup2
// for pressure and CPU accounting. On a pure cgroup2 host both are the
// same mount.
type Mounts struct {
	V1Memory string // "" on a pure cgroup2 host
	V2       string
}

// FindMounts reads /proc/self/mountinfo.
func FindMounts() (Mounts, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return Mounts{}, fmt.Errorf("read mount table: %w", err)
	}
	var m Mounts
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, pf := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(pf) < 3 {
			continue
		}
		switch pf[0] {
		case "cgroup":
			if strings.Contains(","+pf[2]+",", ",memory,") {
				m.V1Memory = f[4]
			}
		case "cgroup2":
			m.V2 = f[4]
		}
	}
	if m.V2 == "" {
		return m, errors.New("no cgroup2 mount: the benchmark needs one for memory pressure")
	}
	if m.V1Memory == "" {
		if _, err := os.Stat(filepath.Join(m.V2, "cgroup.controllers")); err != nil {
			return m, fmt.Errorf("cgroup2 at %s: %w", m.V2, err)
		}
		c, _ := os.ReadFile(filepath.Join(m.V2, "cgroup.controllers"))
		if !strings.Contains(" "+string(c)+" ", " memory ") {
			return m, errors.New("no memory controller: neither a cgroup v1 memory mount nor cgroup2's memory controller")
		}
	}
	return m, nil
}

// Limit is one run's cgroups: Mem holds the memory limit, PSI the pressure
// and CPU counters; on a pure cgroup2 host they are one group.
type Limit struct {
	v1  bool
	Mem string
	PSI string
}

// MakeLimit creates the run's cgroups, named name, with a memory limit.
func MakeLimit(m Mounts, name string, limit uint64) (*Limit, error) {
	l := &Limit{v1: m.V1Memory != "", PSI: filepath.Join(m.V2, name)}
	if err := os.Mkdir(l.PSI, 0o755); err != nil {
		return nil, fmt.Errorf("make cgroup (needs root): %w", err)
	}
	limitFile := "memory.max"
	l.Mem = l.PSI
	if l.v1 {
		l.Mem = filepath.Join(m.V1Memory, name)
		limitFile = "memory.limit_in_bytes"
		if err := os.Mkdir(l.Mem, 0o755); err != nil {
			return nil, errors.Join(fmt.Errorf("make memory cgroup: %w", err), l.Remove())
		}
	}
	if err := os.WriteFile(filepath.Join(l.Mem, limitFile), []byte(strconv.FormatUint(limit, 10)), 0); err != nil {
		return nil, errors.Join(fmt.Errorf("set memory limit: %w", err), l.Remove())
	}
	return l, nil
}

// Enter is a shell prefix that moves the shell into the run's cgroups,
// so that what it execs is charged there from its first page.
func (l *Limit) Enter() string {
	s := fmt.Sprintf("echo 0 > '%s'", filepath.Join(l.PSI, "cgroup.procs"))
	if l.v1 {
		s += fmt.Sprintf(" && echo 0 > '%s'", filepath.Join(l.Mem, "cgroup.procs"))
	}
	return s
}

// Procs lists the PIDs in the memory group.
func (l *Limit) Procs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(l.Mem, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("list cgroup: %w", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids, nil
}

// Usage is the memory charged to the group now, in bytes.
func (l *Limit) Usage() (uint64, error) {
	f := "memory.current"
	if l.v1 {
		f = "memory.usage_in_bytes"
	}
	return readUint(filepath.Join(l.Mem, f))
}

// Peak is the most memory ever charged to the group, or 0 if the kernel
// does not say (cgroup2 before Linux 5.19).
func (l *Limit) Peak() (uint64, error) {
	f := "memory.peak"
	if l.v1 {
		f = "memory.max_usage_in_bytes"
	}
	v, err := readUint(filepath.Join(l.Mem, f))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	return v, err
}

// OOMKills is how many processes the OOM killer killed in the group.
func (l *Limit) OOMKills() (int, error) {
	f := "memory.events"
	if l.v1 {
		f = "memory.oom_control"
	}
	v, err := readKey(filepath.Join(l.Mem, f), "oom_kill")
	return int(v), err
}

// Stall is the group's memory pressure totals: time at least one task
// stalled (some) and all stalled (full).
func (l *Limit) Stall() (some, full time.Duration, err error) {
	b, err := os.ReadFile(filepath.Join(l.PSI, "memory.pressure"))
	if err != nil {
		return 0, 0, fmt.Errorf("read memory pressure: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		for _, kv := range f[1:] {
			if v, ok := strings.CutPrefix(kv, "total="); ok {
				us, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return 0, 0, fmt.Errorf("memory.pressure: %w", err)
				}
				switch f[0] {
				case "some":
					some = time.Duration(us) * time.Microsecond
				case "full":
					full = time.Duration(us) * time.Microsecond
				}
			}
		}
	}
	return some, full, nil
}

// CPU is the CPU time used in the group.
func (l *Limit) CPU() (time.Duration, error) {
	us, err := readKey(filepath.Join(l.PSI, "cpu.stat"), "usage_usec")
	return time.Duration(us) * time.Microsecond, err
}

// Remove kills everything in the groups and removes them, child groups
// included; it waits up to 10 s a group for killed processes to leave.
func (l *Limit) Remove() error {
	if l.Mem == l.PSI {
		return removeGroup(l.PSI)
	}
	return errors.Join(removeGroup(l.Mem), removeGroup(l.PSI))
}

func removeGroup(dir string) error {
	// Child groups first: tokend may make a group per lease inside.
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeGroup(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		pids := strings.Fields(string(b))
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: processes %v outlived SIGKILL", dir, pids)
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		err := os.Remove(dir)
		if errors.Is(err, syscall.EBUSY) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		return nil
	}
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	v, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}

// readKey reads the number after key in a file of "key value" lines,
// such as a flat-keyed cgroup file or /proc/PID/status.
func readKey(path, key string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == key {
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse %s in %s: %w", key, path, err)
			}
			return n, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return 0, fmt.Errorf("%s: no %s", path, key)
}
