package broker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/fileid"
)

// countHolders counts, for each file in want, the descriptors other
// processes have open on it. A process inside a nix sandbox sees the FIFO
// under another path, but it is the same inode, so files are matched by
// identity, not name. Processes that exit during the scan are skipped.
func countHolders(procDir string, want map[fileid.ID]bool) (map[fileid.ID]int, error) {
	pids, err := os.ReadDir(procDir)
	if err != nil {
		return nil, fmt.Errorf("scan %s for jobserver holders: %w", procDir, err)
	}
	self := os.Getpid()
	counts := make(map[fileid.ID]int, len(want))
	for _, p := range pids {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		fdDir := filepath.Join(procDir, p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			id, err := fileid.Of(filepath.Join(fdDir, fd.Name()))
			if err == nil && want[id] {
				counts[id]++
			}
		}
	}
	return counts, nil
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
