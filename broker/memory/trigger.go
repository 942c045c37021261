package memory

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Trigger asks the kernel to wake a watcher when tasks stall on memory for
// more than Stall within any Window.
type Trigger struct {
	// Full watches "full" stalls (all non-idle tasks waiting) instead of
	// "some" (at least one waiting).
	Full   bool
	Stall  time.Duration
	Window time.Duration
}

// String is the line the kernel takes, such as "some 150000 2000000".
func (t Trigger) String() string {
	kind := "some"
	if t.Full {
		kind = "full"
	}
	return fmt.Sprintf("%s %d %d", kind, t.Stall.Microseconds(), t.Window.Microseconds())
}

// ErrGone is reported by a Watcher whose cgroup was removed.
var ErrGone = errors.New("the pressure file's cgroup was removed")

// Watcher delivers the wake-ups of one PSI trigger.
type Watcher struct {
	// C receives the time of each trigger event. It holds one event: while
	// the receiver is busy, further events collapse into the one waiting,
	// since each means only "pressure is high, read again". C is closed when
	// the watcher stops.
	C    <-chan time.Time
	done chan struct{}
	err  error
}

// Wait blocks until the watcher stops and says why: nil after ctx was
// cancelled, an error wrapping ErrGone when the cgroup was removed.
func (w *Watcher) Wait() error {
	<-w.done
	return w.err
}

// Watch registers t on the domain's pressure file and watches it until ctx
// is done. The kernel removes the trigger when the file is closed, which
// the watcher does on stopping.
//
// Without CAP_SYS_RESOURCE the kernel takes only windows that are a
// multiple of 2 s, and reports the first event some 3 s after pressure
// begins. The watcher holds an OS thread blocked in poll(2): Go's netpoller
// does not deliver the POLLPRI these files signal with.
func (d *Domain) Watch(ctx context.Context, t Trigger) (*Watcher, error) {
	path := d.pressure
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		hint := ""
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			hint = " (kernels before 6.5 need CAP_SYS_RESOURCE to open a PSI file for writing)"
		}
		return nil, fmt.Errorf("memory: open %s for a PSI trigger: %w%s", path, err, hint)
	}
	// /proc/pressure files want the line NUL-terminated; cgroup files accept it.
	if _, err := unix.Write(fd, append([]byte(t.String()), 0)); err != nil {
		unix.Close(fd)
		hint := psiHint(err)
		switch {
		case errors.Is(err, unix.EINVAL):
			hint = " (the kernel wants 0 < stall <= window and a window from 500ms to 10s; " +
				"without CAP_SYS_RESOURCE the window must be a multiple of 2s)"
		case errors.Is(err, unix.EPERM):
			hint = " (this kernel needs CAP_SYS_RESOURCE for PSI triggers)"
		}
		return nil, fmt.Errorf("memory: register PSI trigger %q on %s: %w%s", t, path, err, hint)
	}
	// The eventfd lets cancellation interrupt the blocking poll.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("memory: eventfd for the PSI watcher of %s: %w", path, err)
	}
	events := make(chan time.Time, 1)
	w := &Watcher{C: events, done: make(chan struct{})}
	woken := make(chan struct{})
	stopWaker := context.AfterFunc(ctx, func() {
		_, _ = unix.Write(efd, binary.NativeEndian.AppendUint64(nil, 1))
		close(woken)
	})
	go func() {
		defer close(w.done)
		defer close(events)
		w.err = watch(path, fd, efd, events)
		// efd must outlive a waker already running.
		if !stopWaker() {
			<-woken
		}
		unix.Close(efd)
		unix.Close(fd)
	}()
	return w, nil
}

func watch(path string, fd, efd int, events chan<- time.Time) error {
	fds := []unix.PollFd{
		{Fd: int32(fd), Events: unix.POLLPRI},
		{Fd: int32(efd), Events: unix.POLLIN},
	}
	for {
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("memory: poll PSI trigger on %s: %w", path, err)
		}
		if fds[1].Revents != 0 {
			return nil
		}
		switch ev := fds[0].Revents; {
		case ev&unix.POLLERR != 0:
			return fmt.Errorf("memory: %s: %w", path, ErrGone)
		case ev&unix.POLLPRI != 0:
			select {
			case events <- time.Now():
			default:
			}
		case ev != 0:
			// Anything else would repeat on every poll: stop rather than spin.
			return fmt.Errorf("memory: poll PSI trigger on %s: unexpected events %#x", path, ev)
		}
	}
}
