package memory

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// OOMKill is one process the kernel's OOM killer killed, as the kernel's
// report of it in its log tells.
type OOMKill struct {
	PID  int    `json:"pid"`
	Task string `json:"task"` // the command name, at most 15 bytes
	UID  int    `json:"uid"`
	// Memcg is the killed task's memory cgroup, relative to the root of
	// its hierarchy (task_memcg: on a hybrid host the v1 group, on a v2
	// host the group the task ran in); "" when the report does not say.
	Memcg string `json:"memcg,omitempty"`
	// RSS is what the task held when it was killed (anon, file and shmem
	// resident pages); 0 when the report does not say.
	RSS uint64 `json:"rss"`
}

// KernelLog reads the OOM killer's reports from the kernel log
// (/dev/kmsg). Reading needs root, or CAP_SYSLOG where dmesg_restrict is
// set.
type KernelLog struct {
	fd  int
	buf []byte
	// reported are the PIDs of kills reported by their "oom-kill:" line in
	// the last read, whose "Killed process" line may come in the next one.
	reported map[int]bool
}

// kmsgRecordMax is more than the longest record /dev/kmsg returns (a
// message is at most 1 KiB, its dictionary a few hundred bytes); a read
// with a shorter buffer fails with EINVAL.
const kmsgRecordMax = 8 << 10

// OpenKernelLog opens the kernel log at path ("" means /dev/kmsg) for
// reports from now on: what it held before is skipped.
func OpenKernelLog(path string) (*KernelLog, error) {
	if path == "" {
		path = "/dev/kmsg"
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("memory: open kernel log %s: %w", path, err)
	}
	if _, err := unix.Seek(fd, 0, unix.SEEK_END); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("memory: kernel log %s: seek to its end: %w", path, err)
	}
	return &KernelLog{fd: fd, buf: make([]byte, kmsgRecordMax), reported: map[int]bool{}}, nil
}

// Close closes the kernel log.
func (k *KernelLog) Close() error { return unix.Close(k.fd) }

// OOMKills reads every record the kernel logged since the last call,
// without waiting, and returns the OOM kills they report, one per killed
// process. lost counts records the kernel overwrote before they were read:
// kills among them are missed.
func (k *KernelLog) OOMKills() (kills []OOMKill, lost int, err error) {
	var records [][]byte
	for {
		n, err := unix.Read(k.fd, k.buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return k.parse(records), lost, nil
		case errors.Is(err, unix.EPIPE):
			lost++ // the next read returns the oldest record still held
			continue
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return k.parse(records), lost, fmt.Errorf("memory: read kernel log: %w", err)
		}
		records = append(records, bytes.Clone(k.buf[:n]))
	}
}

// parse turns records into kills. A kill is reported by its "oom-kill:"
// line (Linux 4.19 and later: memcg, task, pid, uid) and then by its
// "Killed process" line (pid, task, sizes, uid); both lines of one kill
// give one OOMKill, as does either alone.
func (k *KernelLog) parse(records [][]byte) []OOMKill {
	var kills []OOMKill
	index := map[int]int{}
	reported := map[int]bool{}
	for _, rec := range records {
		msg := kmsgMessage(rec)
		if kill, ok := parseOOMKillLine(msg); ok {
			index[kill.PID] = len(kills)
			reported[kill.PID] = true
			kills = append(kills, kill)
			continue
		}
		kill, ok := parseKilledProcessLine(msg)
		if !ok {
			continue
		}
		if i, ok := index[kill.PID]; ok {
			kills[i].RSS = kill.RSS
			continue
		}
		if k.reported[kill.PID] {
			continue // its oom-kill: line came in the last read
		}
		kills = append(kills, kill)
	}
	k.reported = reported
	return kills
}

// kmsgMessage is a /dev/kmsg record's message: the text between the
// "prio,seq,usec,flags;" prefix and the first newline (continuation
// lines, " KEY=value", follow it).
func kmsgMessage(rec []byte) string {
	_, msg, ok := bytes.Cut(rec, []byte{';'})
	if !ok {
		return ""
	}
	msg, _, _ = bytes.Cut(msg, []byte{'\n'})
	return string(msg)
}

// parseOOMKillLine parses
//
//	oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/g,task_memcg=/g,task=cc1plus,pid=8869,uid=0
//
// from the end, since cpusets and cgroup paths may hold commas.
func parseOOMKillLine(msg string) (OOMKill, bool) {
	rest, ok := strings.CutPrefix(msg, "oom-kill:")
	if !ok {
		return OOMKill{}, false
	}
	var kill OOMKill
	var uid, pid string
	if rest, uid, ok = cutLast(rest, ",uid="); !ok {
		return OOMKill{}, false
	}
	if rest, pid, ok = cutLast(rest, ",pid="); !ok {
		return OOMKill{}, false
	}
	if rest, kill.Task, ok = cutLast(rest, ",task="); !ok {
		return OOMKill{}, false
	}
	_, kill.Memcg, _ = cutLast(rest, ",task_memcg=")
	var err1, err2 error
	kill.PID, err1 = strconv.Atoi(pid)
	kill.UID, err2 = strconv.Atoi(uid)
	return kill, err1 == nil && err2 == nil && kill.PID > 0
}

// parseKilledProcessLine parses the line every kernel prints for a kill,
// after a prefix that says which OOM it was ("Out of memory", "Memory
// cgroup out of memory"):
//
//	Killed process 8869 (perl) total-vm:315092kB, anon-rss:65280kB, file-rss:4560kB, shmem-rss:0kB, UID:0 pgtables:188kB oom_score_adj:0
func parseKilledProcessLine(msg string) (OOMKill, bool) {
	_, rest, ok := strings.Cut(msg, "Killed process ")
	if !ok {
		return OOMKill{}, false
	}
	pid, rest, ok := strings.Cut(rest, " (")
	if !ok {
		return OOMKill{}, false
	}
	task, fields, ok := cutLast(rest, ") total-vm:")
	if !ok {
		return OOMKill{}, false
	}
	kill := OOMKill{Task: task}
	var err error
	if kill.PID, err = strconv.Atoi(pid); err != nil || kill.PID <= 0 {
		return OOMKill{}, false
	}
	for _, f := range strings.FieldsFunc(fields, func(r rune) bool { return r == ',' || r == ' ' }) {
		key, val, ok := strings.Cut(f, ":")
		if !ok {
			continue
		}
		switch key {
		case "anon-rss", "file-rss", "shmem-rss":
			if kb, err := strconv.ParseUint(strings.TrimSuffix(val, "kB"), 10, 64); err == nil {
				kill.RSS += kb << 10
			}
		case "UID":
			kill.UID, _ = strconv.Atoi(val)
		}
	}
	return kill, true
}

// cutLast cuts s around the last sep.
func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// OOMKills is the domain's count of OOM kills so far: the cgroup's (v1
// memory.oom_control, v2 memory.events oom_kill), or the host's
// (/proc/vmstat oom_kill). It says how many kills there were where the
// kernel log, which says who, cannot be read.
func (d *Domain) OOMKills() (uint64, error) {
	if d.cgroup != nil {
		m, err := d.cgroup.read()
		return m.OOMKills, err
	}
	var n uint64
	path := filepath.Join(d.procRoot, "vmstat")
	if err := d.files.readKeyed(path, map[string]*uint64{"oom_kill": &n}); err != nil {
		return 0, fmt.Errorf("%w (vmstat counts oom_kill since Linux 4.13)", err)
	}
	return n, nil
}

// GroupOOMKills is the OOM kill count of a cgroup v2 group from its
// memory.events; ok is false when the group has none (the memory
// controller is not enabled for it).
func GroupOOMKills(dir string) (n uint64, ok bool, err error) {
	path := filepath.Join(dir, "memory.events")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err := uncached.readKeyed(path, map[string]*uint64{"oom_kill": &n}); err != nil {
		return 0, false, err
	}
	return n, true, nil
}
