package broker

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/fileid"
)

// countHolders counts, for each file in want, the descriptors other
// processes have open on it. A process inside a nix sandbox sees the FIFO
// under another path, but it is the same inode, so files are matched by
// identity, not name. Processes that exit during the scan are skipped.
//
// It never stats what a descriptor leads to: a stat of a file on a hung
// FUSE or NFS mount never returns. Everything it reads is procfs's own:
// the link of /proc/PID/fd/N (the path, or "pipe:[N]" and the like for
// files that have none), the inode and mount ID in /proc/PID/fdinfo/N,
// and the mount's device in /proc/PID/mountinfo.
// ignore is the FIFO holder's pid (0 for none): it holds every FIFO, and
// is no client.
func countHolders(procDir string, want map[fileid.ID]bool, ignore int) (map[fileid.ID]int, error) {
	counts := make(map[fileid.ID]int, len(want))
	match := newFileMatch(want)
	err := eachProcess(procDir, ignore, func(_ int, dir string) {
		match.held(dir, func(id fileid.ID) { counts[id]++ })
	})
	return counts, err
}

// eachProcess calls fn with the pid and /proc directory of every process
// but tokend and ignore.
func eachProcess(procDir string, ignore int, fn func(pid int, dir string)) error {
	pids, err := os.ReadDir(procDir)
	if err != nil {
		return fmt.Errorf("scan %s for jobserver holders: %w", procDir, err)
	}
	self := os.Getpid()
	for _, p := range pids {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self || pid == ignore {
			continue
		}
		fn(pid, filepath.Join(procDir, p.Name()))
	}
	return nil
}

// fileMatch tells which of a set of files a process has open.
type fileMatch struct {
	want   map[fileid.ID]bool
	inodes map[uint64]bool
}

func newFileMatch(want map[fileid.ID]bool) fileMatch {
	inodes := make(map[uint64]bool, len(want))
	for id := range want {
		inodes[id.Ino] = true
	}
	return fileMatch{want: want, inodes: inodes}
}

// held calls fn for every descriptor of the process at dir open on a
// wanted file.
func (m fileMatch) held(dir string, fn func(fileid.ID)) {
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return
	}
	var devs map[int]uint64 // mount ID to device, read once a candidate shows
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
		if err != nil || !strings.HasPrefix(link, "/") {
			continue // gone, or a pipe, socket or other file without a path
		}
		ino, mnt, err := fdInode(filepath.Join(dir, "fdinfo", fd.Name()))
		if err != nil || !m.inodes[ino] {
			continue
		}
		if devs == nil {
			if devs, err = mountDevices(filepath.Join(dir, "mountinfo")); err != nil {
				return
			}
		}
		if id := (fileid.ID{Dev: devs[mnt], Ino: ino}); m.want[id] {
			fn(id)
		}
	}
}

// fdInode reads the inode and mount ID of a descriptor from its fdinfo.
func fdInode(path string) (ino uint64, mnt int, err error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	var haveIno, haveMnt bool
	for line := range strings.Lines(string(raw)) {
		key, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch key {
		case "ino":
			ino, err = strconv.ParseUint(strings.TrimSpace(value), 10, 64)
			haveIno = err == nil
		case "mnt_id":
			mnt, err = strconv.Atoi(strings.TrimSpace(value))
			haveMnt = err == nil
		}
	}
	if !haveIno || !haveMnt {
		return 0, 0, fmt.Errorf("%s: no ino or mnt_id (Linux 5.14 or later has both)", path)
	}
	return ino, mnt, nil
}

// mountDevices maps the mount IDs of a mountinfo file to their devices.
func mountDevices(path string) (map[int]uint64, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	devs := map[int]uint64{}
	for line := range strings.Lines(string(raw)) {
		// 36 25 0:32 / /run rw,nosuid - tmpfs tmpfs rw
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		id, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		major, minor, ok := strings.Cut(f[2], ":")
		maj, err1 := strconv.ParseUint(major, 10, 32)
		mnr, err2 := strconv.ParseUint(minor, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		devs[id] = unix.Mkdev(uint32(maj), uint32(mnr))
	}
	return devs, nil
}

// scanResult is what one holder scan found for the leases it was asked
// about.
type scanResult struct {
	due    []scanRequest
	counts map[fileid.ID]int
	err    error
}

// scanStuck is how long a holder scan may take before the log says so.
// /proc is read only through procfs, so a scan should never hang; if one
// does anyway, the broker's loop goes on (tokens move, leases come and go)
// and only reclaiming waits.
const scanStuck = 10 * time.Second

// startScan looks for holders of the due leases in a goroutine of its
// own, off the broker's lock and loop, unless a scan is still under way;
// Run hands its answer to reclaim. Called with b.mu held.
func (b *Broker) startScan(due []scanRequest) {
	if !b.scanSince.IsZero() {
		if time.Since(b.scanSince) > scanStuck && !b.scanReported {
			b.scanReported = true
			b.log.Error("the scan for jobserver holders has not returned; leaked tokens are not reclaimed until it does", "since", b.scanSince)
		}
		return
	}
	if len(due) == 0 {
		return
	}
	b.scanSince, b.scanReported = time.Now(), false
	want := make(map[fileid.ID]bool, len(due))
	for _, s := range due {
		want[s.lease.inode] = true
	}
	holder := b.holderPID()
	go func() {
		counts, err := countHolders(b.opts.ProcDir, want, holder)
		b.scans <- scanResult{due: due, counts: counts, err: err}
	}()
}

// holderPID is the FIFO holder's pid, 0 without one: it holds every FIFO,
// and is no client.
func (b *Broker) holderPID() int {
	if b.opts.Holder == nil {
		return 0
	}
	return b.opts.Holder.PID()
}
