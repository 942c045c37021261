package control

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker/memory"
)

// sampler reads the processes of leases and classifies them.
type sampler struct {
	mem  memory.Sampler
	proc string // the procfs mount, for command lines
}

func newSampler(procRoot string) (sampler, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	mem, err := memory.NewSampler(procRoot)
	if err != nil {
		return sampler{}, err
	}
	return sampler{mem: mem, proc: procRoot}, nil
}

// lease samples the processes of l: those in its cgroup, or, while the
// cgroup holds none (not made yet, or the command started outside it),
// the descendants of its owner process, or for a lease owned by a
// directory (a nix build's sandbox) the processes confined to it. grouped tells whether they came
// from the cgroup, which can then be frozen.
func (s sampler) lease(l api.LeaseStatus, forest func() (memory.Forest, error)) (procs []proc, grouped bool, err error) {
	var ps []memory.Proc
	if l.Cgroup != "" {
		ps, err = s.mem.Cgroup(l.Cgroup)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, false, err
		}
		grouped = len(ps) > 0
	}
	if !grouped && l.Owner.PID > 0 {
		f, err := forest()
		if err != nil {
			return nil, false, err
		}
		if ps, err = f.Tree(l.Owner.PID); err != nil {
			return nil, false, err
		}
		// The owner (tokenctl, or a nix hook's process) is not a job.
		if len(ps) > 0 && ps[0].PID == l.Owner.PID {
			ps = ps[1:]
		}
	}
	if !grouped && l.Owner.PID <= 0 && l.Owner.Dir != "" {
		// A nix build without use-cgroups: its processes are those
		// confined to its sandbox, whatever build user runs them.
		f, err := forest()
		if err != nil {
			return nil, false, err
		}
		if ps, err = f.Rooted(l.Owner.Dir); err != nil {
			return nil, false, err
		}
	}
	return s.classify(ps), grouped, nil
}

// forestMaxAge is how stale the process tree may be. A tree costs a read
// of every /proc/PID/stat on the host, and a job started since the last
// read is not missed: until its process shows, the controller counts its
// whole estimate as growth to come.
const forestMaxAge = time.Second

// forestCache reads every process's parent at most once per forestMaxAge,
// and not at all while every lease is sampled from its cgroup.
type forestCache struct {
	mem  memory.Sampler
	f    memory.Forest
	err  error
	read time.Time
}

// at returns a function that gives a forest no older than forestMaxAge at
// now, reading a new one the first time it is called if need be.
func (c *forestCache) at(now time.Time) func() (memory.Forest, error) {
	return func() (memory.Forest, error) {
		if c.read.IsZero() || now.Sub(c.read) >= forestMaxAge {
			c.f, c.err = c.mem.Forest()
			c.read = now
		}
		return c.f, c.err
	}
}

func (s sampler) classify(ps []memory.Proc) []proc {
	out := make([]proc, len(ps))
	for i, p := range ps {
		argv0 := ""
		if len(p.Name) >= commLen {
			argv0 = s.argv0(p.PID)
		}
		out[i] = proc{Proc: p, class: classify(p.Name, argv0)}
		// Only a process below its peak, or one whose memory reads zero,
		// can be tearing its memory down.
		if p.RSS < p.Peak || p.RSS == 0 {
			out[i].exiting = s.mem.Exiting(p.PID)
		}
	}
	return out
}

// argv0 is a process's first argument, "" if it cannot be read.
func (s sampler) argv0(pid int) string {
	b, err := os.ReadFile(filepath.Join(s.proc, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return ""
	}
	first, _, _ := bytes.Cut(b, []byte{0})
	return string(first)
}
