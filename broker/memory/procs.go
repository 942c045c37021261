package memory

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/fileid"
)

// Proc is one process's memory at the moment it was sampled.
type Proc struct {
	PID int `json:"pid"`
	// Name is the command name from /proc/PID/status, which callers match to
	// tell linkers (ld, ld.lld, ld.gold, mold, collect2, lto1, lto-wrapper)
	// from compilers. The kernel cuts it to 15 bytes, so a long name such as
	// x86_64-linux-gnu-ld.bfd arrives as "x86_64-linux-gn".
	Name string `json:"name"`
	// RSS (VmRSS) and Peak (VmHWM, the largest RSS so far) are in bytes;
	// zero for kernel threads and zombies, which have no memory.
	RSS  uint64 `json:"rss"`
	Peak uint64 `json:"peak"`
}

// Sampler reads per-process memory from a procfs mount. Processes exit
// while it reads: those it misses are left out, never reported as errors.
type Sampler struct {
	fs    procfs.FS
	root  string
	files *kernelFiles // shared by copies
}

// NewSampler reads from the procfs mounted at root; "" means /proc.
func NewSampler(root string) (Sampler, error) {
	if root == "" {
		root = procfs.DefaultMountPoint
	}
	fs, err := procfs.NewFS(root)
	if err != nil {
		return Sampler{}, fmt.Errorf("memory: procfs at %s: %w (pass the procfs mount point)", root, err)
	}
	return Sampler{fs: fs, root: root, files: newKernelFiles()}, nil
}

// Close closes the files the sampler and its copies keep open between
// samples. Samples after Close still work, opening and closing each file.
func (s Sampler) Close() error { return s.files.close() }

// PIDs samples the given processes, in the order given, leaving out those
// that no longer exist.
func (s Sampler) PIDs(pids ...int) ([]Proc, error) {
	var out []Proc
	for _, pid := range pids {
		var st statusFields
		err := s.files.read(s.file(pid, "status"), func(b []byte) (err error) {
			st, err = parseStatus(b)
			return err
		})
		switch {
		case err == nil:
			out = append(out, Proc{PID: pid, Name: st.name, RSS: st.rss, Peak: st.hwm})
		case !isGone(err):
			return nil, fmt.Errorf("memory: sample process %d: %w", pid, err)
		}
	}
	return out, nil
}

// Exiting tells whether a process has begun to exit (the kernel's
// PF_EXITING flag): its memory is about to come back, and the job it ran
// is over. A process that is gone, or cannot be read, is not exiting.
func (s Sampler) Exiting(pid int) bool {
	st, err := s.stat(pid)
	return err == nil && st.flags&pfExiting != 0
}

// pfExiting is the kernel's PF_EXITING task flag (include/linux/sched.h).
const pfExiting = 0x4

func (s Sampler) stat(pid int) (st statFields, err error) {
	err = readKernelFile(s.file(pid, "stat"), func(b []byte) (err error) {
		st, err = parseStat(b)
		return err
	})
	return st, err
}

func (s Sampler) file(pid int, name string) string {
	return s.root + "/" + strconv.Itoa(pid) + "/" + name
}

// Forest is every process's parent and root directory at one moment,
// read once so that the processes of many leases cost one scan of /proc,
// not one each.
type Forest struct {
	s        Sampler
	children map[int][]int
	rooted   map[fileid.ID][]int // processes by the identity of their root directory
}

// Forest reads the parent of every process. It finds children by scanning
// every process's parent in /proc/PID/stat: /proc/PID/task/TID/children
// needs CONFIG_PROC_CHILDREN, which not every kernel has (this project's
// Debian test host lacks it).
func (s Sampler) Forest() (Forest, error) {
	all, err := s.fs.AllProcs()
	if err != nil {
		return Forest{}, fmt.Errorf("memory: list processes: %w", err)
	}
	children := map[int][]int{}
	rooted := map[fileid.ID][]int{}
	for _, p := range all {
		st, err := s.stat(p.PID)
		if err != nil {
			if isGone(err) {
				continue
			}
			return Forest{}, fmt.Errorf("memory: read parent of process %d: %w", p.PID, err)
		}
		children[st.ppid] = append(children[st.ppid], p.PID)
		// Following /proc/PID/root reaches the directory itself: a
		// process in a nix sandbox reads its root as "/" in its own mount
		// namespace, but stat sees the sandbox directory on the host.
		if root, err := fileid.Of(filepath.Join(s.root, strconv.Itoa(p.PID), "root")); err == nil {
			rooted[root] = append(rooted[root], p.PID)
		}
	}
	return Forest{s: s, children: children, rooted: rooted}, nil
}

// Rooted samples the processes whose root directory is dir: the processes
// of a build confined there, as a nix build is to its sandbox. Reading
// another user's root needs root; processes it cannot read are left out.
func (f Forest) Rooted(dir string) ([]Proc, error) {
	id, err := fileid.Of(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("memory: sandbox directory %s: %w", dir, err)
	}
	pids := slices.Clone(f.rooted[id])
	slices.Sort(pids)
	return f.s.PIDs(pids...)
}

// Tree samples root and all its descendants as the forest saw them, root
// first, then breadth first. A process whose parent exits is reparented
// and drops out of the tree.
func (f Forest) Tree(root int) ([]Proc, error) {
	tree := []int{root}
	for i := 0; i < len(tree); i++ {
		kids := f.children[tree[i]]
		slices.Sort(kids)
		tree = append(tree, kids...)
	}
	return f.s.PIDs(tree...)
}

// Cgroup samples every process in the cgroup directory dir and in the
// groups below it, which its memory accounting includes. Groups removed
// while it walks are left out; dir itself must exist.
func (s Sampler) Cgroup(dir string) ([]Proc, error) {
	pids, err := s.cgroupPIDs(dir, nil)
	if err != nil {
		return nil, fmt.Errorf("memory: processes of cgroup %s: %w (pass a cgroup directory)", dir, err)
	}
	slices.Sort(pids)
	// A process moved between groups mid-walk is listed twice.
	return s.PIDs(slices.Compact(pids)...)
}

// CgroupProcs lists the processes directly in the cgroup directory dir, as
// its cgroup.procs file does (v1 or v2), in the kernel's order.
func CgroupProcs(dir string) ([]int, error) {
	// Never kept open: a v1 cgroup.procs keeps the list it made at open
	// for rereads, and renews the list's lease at each, so a kept
	// descriptor read four times a second showed a process moved into
	// the group five seconds before as absent (cgroup_pidlist_start).
	var pids []int
	err := readKernelFile(filepath.Join(dir, "cgroup.procs"), func(b []byte) error {
		for f := range bytes.FieldsSeq(b) {
			pid, err := strconv.Atoi(string(f))
			if err != nil {
				return fmt.Errorf("%s/cgroup.procs: %q is not a PID", dir, f)
			}
			pids = append(pids, pid)
		}
		return nil
	})
	return pids, err
}

func (s Sampler) cgroupPIDs(dir string, pids []int) ([]int, error) {
	here, err := CgroupProcs(dir)
	pids = append(pids, here...)
	if err != nil {
		return pids, err
	}
	// cgroupfs, like tmpfs, counts a directory's subdirectories in its
	// link count: at 2 there are none, and one stat saves the open, the
	// reads and the close of listing the directory at every sample.
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err == nil && st.Nlink == 2 {
		return pids, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return pids, err
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if pids, err = s.cgroupPIDs(filepath.Join(dir, e.Name()), pids); err != nil && !isGone(err) {
			return pids, err
		}
	}
	return pids, nil
}
