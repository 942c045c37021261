package control

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/broker"
	"github.com/tokend/tokend/broker/memory"
)

// Cgroups makes, freezes, thaws and removes the cgroup v2 groups of
// tokenctl leases, one per lease under one parent directory. It implements
// broker.LeaseCgroups. It never kills: a group that still holds processes
// when its lease ends is removed once they have left.
type Cgroups struct {
	parent string
	owned  bool // tokend's own parent, removed when empty at Close
	log    hclog.Logger

	mu      sync.Mutex
	pending map[string]bool // groups to remove once empty
}

// DefaultLeaseCgroups is where lease groups go when not configured: inside
// the memory domain when it is a cgroup v2 group, so the builds stay in
// the domain they are measured in, else under tokend/ at the top of the
// cgroup2 mount (on a hybrid host, the v2 hierarchy beside v1's memory
// controller).
func DefaultLeaseCgroups(memoryCgroup string) (string, error) {
	if memoryCgroup != "" && isCgroup2(memoryCgroup) {
		return filepath.Join(memoryCgroup, "tokend"), nil
	}
	mount, err := cgroup2Mount()
	if err != nil {
		return "", err
	}
	return filepath.Join(mount, "tokend"), nil
}

// NewCgroups makes the parent directory, which must be on cgroup2. owned
// says that tokend owns the parent (DefaultLeaseCgroups), so that Close
// removes it when no lease group is left; a parent an operator configured
// is left alone.
func NewCgroups(parent string, owned bool, log hclog.Logger) (*Cgroups, error) {
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("lease cgroups: make %s: %w (needs root and a writable cgroup2 mount)", parent, err)
	}
	if !isCgroup2(parent) {
		return nil, fmt.Errorf("lease cgroups: %s is not on a cgroup2 mount", parent)
	}
	return &Cgroups{parent: parent, owned: owned, log: log, pending: map[string]bool{}}, nil
}

// Parent is the directory lease groups are made in.
func (c *Cgroups) Parent() string { return c.parent }

// Make creates the group of lease id.
func (c *Cgroups) Make(id string) (string, error) {
	dir := filepath.Join(c.parent, id)
	err := os.Mkdir(dir, 0o755)
	if errors.Is(err, fs.ErrNotExist) {
		// Another tokend sharing the parent removed it on stopping.
		if err = os.MkdirAll(c.parent, 0o755); err == nil {
			err = os.Mkdir(dir, 0o755)
		}
	}
	if err != nil {
		return "", fmt.Errorf("make lease cgroup: %w", err)
	}
	return dir, nil
}

// leaseID matches the names Make gives groups: lease IDs.
var leaseID = regexp.MustCompile(`^[0-9a-f]{12}$`)

// Sweep removes lease groups left empty by a tokend that stopped without
// removing them (killed, or its builds ended while it was down), except
// those of the leases in keep.
func (c *Cgroups) Sweep(keep map[string]bool) {
	entries, err := os.ReadDir(c.parent)
	if err != nil {
		c.log.Warn("cannot list lease cgroups", "parent", c.parent, "error", err)
		return
	}
	for _, e := range entries {
		dir := filepath.Join(c.parent, e.Name())
		if !e.IsDir() || !leaseID.MatchString(e.Name()) || keep[dir] {
			continue
		}
		if err := unix.Rmdir(dir); err == nil {
			c.log.Info("removed a stale lease cgroup", "cgroup", dir)
		}
	}
}

// Close removes the groups whose processes have left and, if tokend owns
// the parent and no group is left in it, the parent.
func (c *Cgroups) Close() {
	c.Retry()
	if !c.owned {
		return
	}
	if err := unix.Rmdir(c.parent); err == nil {
		c.log.Debug("removed the lease cgroups' parent", "parent", c.parent)
	}
}

// Owns tells whether dir is a group Make made.
func (c *Cgroups) Owns(dir string) bool { return filepath.Dir(dir) == c.parent }

// Remove thaws the group and removes it, or, while processes remain in
// it, marks it to be removed by a later Retry.
func (c *Cgroups) Remove(dir string) error {
	if err := setFrozen(dir, false); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	err := unix.Rmdir(dir)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.EBUSY):
		c.mu.Lock()
		c.pending[dir] = true
		c.mu.Unlock()
		c.log.Info("lease cgroup still holds processes; removing it once they exit", "cgroup", dir)
		return nil
	}
	return fmt.Errorf("remove lease cgroup %s: %w", dir, err)
}

// Retry removes the groups whose processes have left since Remove.
func (c *Cgroups) Retry() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for dir := range c.pending {
		err := unix.Rmdir(dir)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
			delete(c.pending, dir)
			c.log.Debug("removed lease cgroup", "cgroup", dir)
		case !errors.Is(err, unix.EBUSY):
			delete(c.pending, dir)
			c.log.Warn("cannot remove lease cgroup", "cgroup", dir, "error", err)
		}
	}
}

// setFrozen freezes or thaws a cgroup v2 group and everything below it.
func setFrozen(dir string, on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte(v), 0); err != nil {
		return fmt.Errorf("set %s/cgroup.freeze to %s: %w", dir, v, err)
	}
	return nil
}

// freeze freezes a group only if every process in it and below it is one
// a lease of uid may reach (broker.Reachable): the group of a user's lease
// must not stop a process of another user, a set-uid program, or tokend.
// A process that turns unreachable while the group freezes (an exec of a
// set-uid program) is seen by the check after, which thaws the group.
func freeze(dir string, uid int) error {
	if err := reachableGroup(dir, uid); err != nil {
		return err
	}
	if err := setFrozen(dir, true); err != nil {
		return err
	}
	if err := reachableGroup(dir, uid); err != nil {
		return errors.Join(err, setFrozen(dir, false))
	}
	return nil
}

// reachableGroup says why a lease of uid must not freeze the group dir.
func reachableGroup(dir string, uid int) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		in, err := members(path)
		if err != nil {
			return err
		}
		for pid := range in {
			// A process that exited meanwhile needs no freezing.
			if err := broker.Reachable(uid, pid); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("not freezing %s: %w", dir, err)
			}
		}
		return nil
	})
}

// isFrozen reads whether a group was asked to be frozen.
func isFrozen(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.freeze"))
	if err != nil {
		return false, err
	}
	return string(bytes.TrimSpace(b)) == "1", nil
}

// members lists the processes directly in a group.
func members(dir string) (map[int]bool, error) {
	pids, err := memory.CgroupProcs(dir)
	if err != nil {
		return nil, err
	}
	out := make(map[int]bool, len(pids))
	for _, pid := range pids {
		out[pid] = true
	}
	return out, nil
}

// move puts a process into a group. A process that exited meanwhile is
// not an error.
func move(dir string, pid int) error {
	err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("move process %d into %s: %w", pid, dir, err)
	}
	return nil
}

func isCgroup2(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// cgroup2Mount finds the cgroup2 mount in this process's mount table.
func cgroup2Mount() (string, error) {
	self, err := procfs.Self()
	if err != nil {
		return "", fmt.Errorf("find the cgroup2 mount: %w", err)
	}
	mounts, err := self.MountInfo()
	if err != nil {
		return "", fmt.Errorf("find the cgroup2 mount: %w", err)
	}
	for _, m := range mounts {
		if m.FSType == "cgroup2" {
			return m.MountPoint, nil
		}
	}
	return "", errors.New("no cgroup2 mount: lease cgroups need one (set lease_cgroups = \"off\" to run without)")
}
