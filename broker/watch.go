package broker

import (
	"context"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watchEvent is what inotify said of one watched file.
type watchEvent struct {
	wd   int
	mask uint32
}

// leaseWatch reports, through inotify, clients opening and closing lease
// FIFOs and gates, so the broker scans for holders only after a client
// closed a FIFO instead of walking /proc on every tick; and owner
// directories removed, so a nix build's lease ends when its sandbox goes
// rather than at the next look at every owner (ownerCheckInterval).
type leaseWatch struct {
	f      *os.File
	events chan watchEvent
}

// The events a lease's files are watched for.
const (
	watchOpens   = unix.IN_OPEN | unix.IN_CLOSE
	watchRemoval = unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_DONT_FOLLOW
	// removed is what says an owner directory may be gone: deleted,
	// renamed, or its watch dropped by the kernel (its file system was
	// unmounted).
	removed = unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_IGNORED
)

func newLeaseWatch() (*leaseWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w (raise fs.inotify.max_user_instances)", err)
	}
	return &leaseWatch{f: os.NewFile(uintptr(fd), "inotify"), events: make(chan watchEvent, 256)}, nil
}

// add watches path for the events in mask.
func (w *leaseWatch) add(path string, mask uint32) (int, error) {
	var wd int
	var err error
	cerr := w.rawControl(func(fd int) { wd, err = unix.InotifyAddWatch(fd, path, mask) })
	if err == nil {
		err = cerr
	}
	if err != nil {
		return -1, fmt.Errorf("watch %s: %w (raise fs.inotify.max_user_watches)", path, err)
	}
	return wd, nil
}

func (w *leaseWatch) remove(wd int) {
	w.rawControl(func(fd int) { unix.InotifyRmWatch(fd, uint32(wd)) })
}

func (w *leaseWatch) rawControl(fn func(fd int)) error {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}

// run delivers events until ctx ends or the watch is closed.
func (w *leaseWatch) run(ctx context.Context) {
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
			if ev.Mask&(watchOpens|removed|unix.IN_Q_OVERFLOW) == 0 {
				continue
			}
			select {
			case w.events <- watchEvent{wd: int(ev.Wd), mask: ev.Mask}:
			case <-ctx.Done():
				return
			}
		}
	}
}

func (w *leaseWatch) close() error { return w.f.Close() }

// watched is what an inotify watch is on: one of a lease's files.
type watched struct {
	lease *Lease
	file  leaseFile
}

// leaseFile is which of a lease's files a watch is on.
type leaseFile int

const (
	fifoFile  leaseFile = iota
	gateFile            // the nix build's gate
	ownerFile           // the owner directory
)

// watchFiles watches l's FIFO, its gate and its owner directory.
func (b *Broker) watchFiles(l *Lease) error {
	wd, err := b.watch.add(l.fifo.Path(), watchOpens)
	if err != nil {
		return err
	}
	b.byWatch[wd] = watched{lease: l, file: fifoFile}
	if l.gate != nil {
		gwd, err := b.watch.add(l.gate.path, watchOpens)
		if err != nil {
			b.unwatchFiles(l)
			return err
		}
		b.byWatch[gwd] = watched{lease: l, file: gateFile}
	}
	if l.Owner.Dir != "" {
		// The owner check every ownerCheckInterval stays the fallback.
		owd, err := b.watch.add(l.Owner.Dir, watchRemoval)
		if err != nil {
			b.log.Warn("cannot watch the lease's owner directory; the lease ends up to a second after it goes", "lease", l.ID, "dir", l.Owner.Dir, "error", err)
		} else {
			b.byWatch[owd] = watched{lease: l, file: ownerFile}
		}
	}
	return nil
}

// unwatchFiles stops watching l's files.
func (b *Broker) unwatchFiles(l *Lease) {
	for wd, w := range b.byWatch {
		if w.lease == l {
			b.watch.remove(wd)
			delete(b.byWatch, wd)
		}
	}
}

// onWatchEvent notes a client opening or closing a lease's FIFO, a build
// reading its gate, or a lease's owner directory going. A close makes the
// lease due for a look at its holders after the grace period (see
// settleDue); the first read of a gate makes the build ask for admission;
// an owner gone ends the lease.
func (b *Broker) onWatchEvent(ev watchEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ev.mask&unix.IN_Q_OVERFLOW != 0 {
		b.log.Warn("inotify dropped events; leases are searched for holders of their fifos from now on")
		for _, l := range b.leases {
			l.seenSinceMade = false
		}
		return
	}
	w, ok := b.byWatch[ev.wd]
	if !ok {
		return
	}
	l := w.lease
	switch {
	case w.file == ownerFile:
		// Watched for its removal only.
		if ev.mask&unix.IN_IGNORED != 0 {
			delete(b.byWatch, ev.wd)
		}
		if why := ownerGone(l.Owner); why != "" && !l.ending {
			b.end(l, why)
			b.pass()
		}
	case ev.mask&watchOpens == 0:
	case w.file == gateFile:
		// The build read its gate: it asks for its slot from now on.
		if ev.mask&unix.IN_OPEN != 0 && l.asked.IsZero() && !l.ending {
			l.asked = time.Now()
			b.dirty = true
			b.log.Info("lease asks for admission", "lease", l.ID, "name", l.Name)
			b.poke()
		}
	case ev.mask&unix.IN_CLOSE != 0:
		l.closeSeen = time.Now()
	default:
		l.opens++
		if !l.joined {
			l.joined = true
			b.dirty = true
		}
	}
}
