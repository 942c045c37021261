package broker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

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

// fifoEvent is a client opening or closing a lease's FIFO.
type fifoEvent struct {
	wd    int
	close bool
}

// fifoWatch reports opens and closes of FIFOs through inotify, so the
// broker scans for holders only after a client closed a FIFO instead of
// walking /proc on every tick.
type fifoWatch struct {
	f      *os.File
	events chan fifoEvent
}

func newFIFOWatch() (*fifoWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w (raise fs.inotify.max_user_instances)", err)
	}
	return &fifoWatch{f: os.NewFile(uintptr(fd), "inotify"), events: make(chan fifoEvent, 256)}, nil
}

func (w *fifoWatch) add(path string) (int, error) {
	var wd int
	var err error
	cerr := w.rawControl(func(fd int) { wd, err = unix.InotifyAddWatch(fd, path, unix.IN_OPEN|unix.IN_CLOSE) })
	if err == nil {
		err = cerr
	}
	if err != nil {
		return -1, fmt.Errorf("watch %s: %w (raise fs.inotify.max_user_watches)", path, err)
	}
	return wd, nil
}

func (w *fifoWatch) remove(wd int) {
	w.rawControl(func(fd int) { unix.InotifyRmWatch(fd, uint32(wd)) })
}

func (w *fifoWatch) rawControl(fn func(fd int)) error {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}

// run delivers events until ctx ends or the watch is closed.
func (w *fifoWatch) run(ctx context.Context) {
	defer close(w.events)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&(unix.IN_OPEN|unix.IN_CLOSE) == 0 {
				continue
			}
			select {
			case w.events <- fifoEvent{wd: int(ev.Wd), close: ev.Mask&unix.IN_CLOSE != 0}:
			case <-ctx.Done():
				return
			}
		}
	}
}

func (w *fifoWatch) close() error { return w.f.Close() }

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
