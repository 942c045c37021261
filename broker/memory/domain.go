// Package memory owns tokend's view of one memory domain: the host, or a
// memory cgroup (v1 or v2) inside it. It reads the kernel's own files —
// /proc/meminfo, the cgroup's memory files and a PSI pressure file — into a
// Reading, derives the headroom the broker may still hand out and the
// stall rates between two readings, watches PSI triggers, and samples the
// memory of the processes a build runs. It decides nothing: sizing the token
// budget from these signals belongs to package broker/control.
package memory

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// Config names where a domain's signals live. The zero Config is the host
// read from /proc.
type Config struct {
	// Proc is the procfs mount point; "" means /proc.
	Proc string
	// Cgroup is a memory cgroup directory, v1 (a directory under the memory
	// controller's mount, such as /sys/fs/cgroup/memory/foo) or v2 (such as
	// /sys/fs/cgroup/foo); "" makes the domain the host alone.
	Cgroup string
	// Pressure is a PSI memory file to read stall totals from. "" means the
	// cgroup's own memory.pressure for a v2 Cgroup, and <Proc>/pressure/memory
	// otherwise. On hybrid hosts a v1 group has no pressure file of its own:
	// pass the memory.pressure of the cgroup2 group holding the same
	// processes, where the kernel counts the stalls its v1 limit causes.
	Pressure string
}

// Domain reads the signals of one memory domain. Build one with NewDomain.
type Domain struct {
	procRoot string
	cgroup   *memcg // nil for the host alone
	pressure string
	files    *kernelFiles
}

// NewDomain checks that the files c names exist and tells a v1 from a v2
// cgroup by the files present, so that a misconfiguration fails here rather
// than at the first Read.
func NewDomain(c Config) (*Domain, error) {
	procRoot := c.Proc
	if procRoot == "" {
		procRoot = procfs.DefaultMountPoint
	}
	if _, err := os.Stat(filepath.Join(procRoot, "meminfo")); err != nil {
		return nil, fmt.Errorf("memory: procfs at %s: %w (pass the procfs mount point as Config.Proc)", procRoot, err)
	}
	d := &Domain{procRoot: procRoot, files: newKernelFiles()}
	if c.Cgroup != "" {
		var err error
		if d.cgroup, err = openMemcg(c.Cgroup, d.files); err != nil {
			return nil, err
		}
	}
	switch {
	case c.Pressure != "":
		d.pressure = c.Pressure
	case d.cgroup != nil && d.cgroup.version == 2:
		d.pressure = filepath.Join(c.Cgroup, "memory.pressure")
	default:
		d.pressure = filepath.Join(procRoot, "pressure", "memory")
	}
	if _, err := os.Stat(d.pressure); err != nil {
		return nil, fmt.Errorf("memory: pressure file: %w (PSI needs a kernel built with CONFIG_PSI and not booted with psi=0; on cgroup v2 it needs a group's memory.pressure)", err)
	}
	return d, nil
}

// Close closes the files the domain keeps open between reads. A Read
// after Close still works, opening and closing each file.
func (d *Domain) Close() error { return d.files.close() }

// PressureFile is the PSI file the domain reads and watches.
func (d *Domain) PressureFile() string { return d.pressure }

// Reading is a memory domain at one instant.
type Reading struct {
	// At is when Pressure was read. From Read it carries Go's monotonic
	// clock, so intervals between readings survive wall-clock steps.
	At time.Time `json:"at"`
	// MemTotal and MemAvailable are the host's, in bytes, from /proc/meminfo.
	MemTotal     uint64 `json:"mem_total"`
	MemAvailable uint64 `json:"mem_available"`
	// Cgroup is nil for the host alone.
	Cgroup   *Memcg   `json:"cgroup,omitempty"`
	Pressure Pressure `json:"pressure"`
}

// Memcg is a memory cgroup's accounting, in bytes unless said otherwise.
type Memcg struct {
	Version int `json:"version"`
	// Max is the hard limit (v2 memory.max, v1 memory.limit_in_bytes);
	// Unlimited for v2 "max". v1 reports no limit as the page-rounded
	// LONG_MAX, 9223372036854771712, which is kept as is: it still exceeds
	// any host's memory.
	Max uint64 `json:"max"`
	// High is v2 memory.high, the point past which the kernel throttles and
	// reclaims the group hard; Unlimited on v1, which has no such point.
	High uint64 `json:"high"`
	// Usage is v2 memory.current or v1 memory.usage_in_bytes.
	Usage uint64 `json:"usage"`
	// From memory.stat: v2 inactive_file, active_file, anon, file; v1 the
	// hierarchical total_inactive_file, total_active_file, total_rss,
	// total_cache, which count the same pages (anon without shmem, file
	// with it).
	InactiveFile uint64 `json:"inactive_file"`
	ActiveFile   uint64 `json:"active_file"`
	Anon         uint64 `json:"anon"`
	File         uint64 `json:"file"`
	// LimitHits counts charges that ran into the limit: v1 memory.failcnt,
	// v2 memory.events "max".
	LimitHits uint64 `json:"limit_hits"`
	// OOMKills counts processes the OOM killer killed in the group: v1
	// memory.oom_control oom_kill, v2 memory.events oom_kill.
	OOMKills uint64 `json:"oom_kills"`
}

// Unlimited stands for a v2 limit file reading "max".
const Unlimited = ^uint64(0)

// WorkingSet is usage less inactive file pages: the memory the group would
// still hold after the kernel dropped the cache it can drop cheaply. It is
// zero, not negative, when usage (read first) lags memory.stat.
func (m Memcg) WorkingSet() uint64 {
	return m.Usage - min(m.InactiveFile, m.Usage)
}

// Limit is the lower of Max and High: past High a v2 group is throttled
// and thrashes, so for admission it is as much a ceiling as Max.
func (m Memcg) Limit() uint64 { return min(m.Max, m.High) }

// Headroom is how many more bytes the domain can take before it reclaims
// memory somebody still uses: the host's MemAvailable, and for a cgroup no
// more than its limit less its working set.
func (r Reading) Headroom() uint64 {
	if r.Cgroup == nil {
		return r.MemAvailable
	}
	limit, ws := r.Cgroup.Limit(), r.Cgroup.WorkingSet()
	return min(r.MemAvailable, limit-min(ws, limit))
}

// Read takes a Reading. Files are read one after another, so values may be
// a few microseconds apart; the kernel offers no atomic snapshot.
func (d *Domain) Read() (Reading, error) {
	var r Reading
	var err error
	if r.MemTotal, r.MemAvailable, err = d.files.readMeminfo(filepath.Join(d.procRoot, "meminfo")); err != nil {
		return Reading{}, err
	}
	if d.cgroup != nil {
		m, err := d.cgroup.read()
		if err != nil {
			return Reading{}, err
		}
		r.Cgroup = &m
	}
	if r.Pressure, err = d.files.readPressure(d.pressure); err != nil {
		return Reading{}, err
	}
	r.At = time.Now()
	return r, nil
}

// readMeminfo reads MemTotal and MemAvailable, in bytes, from a meminfo
// file.
func (k *kernelFiles) readMeminfo(path string) (total, available uint64, err error) {
	var haveTotal, haveAvailable bool
	err = k.read(path, func(b []byte) error {
		for line := range bytes.Lines(b) {
			key, value, _ := bytes.Cut(line, []byte{':'})
			var dst *uint64
			switch string(key) {
			case "MemTotal":
				dst, haveTotal = &total, true
			case "MemAvailable":
				dst, haveAvailable = &available, true
			default:
				continue
			}
			v, err := parseKB(value)
			if err != nil {
				return fmt.Errorf("line %q: %w", bytes.TrimSpace(line), err)
			}
			*dst = v
		}
		return nil
	})
	switch {
	case err != nil:
		return 0, 0, fmt.Errorf("memory: meminfo under the procfs mount: %w", err)
	case !haveTotal || !haveAvailable:
		return 0, 0, fmt.Errorf("memory: %s has no MemTotal or MemAvailable (MemAvailable needs Linux 3.14 or later)", path)
	}
	return total, available, nil
}

// isGone reports errors that mean a process or cgroup went away while we
// read it: ENOENT for a directory already removed, ESRCH for a process that
// died after open, ENODEV for a cgroup removed after open.
func isGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV)
}
