package jobserver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// MaxTokens is the most tokens one jobserver can hold: a pipe buffers
// 65,536 bytes by default, and the protocol needs the writer never to block.
// A FIFO grows its pipe (see pipeBytes) so that this many tokens fit
// whatever the order of reads and writes.
const MaxTokens = 65535

// pipeBytes is the pipe buffer a FIFO asks the kernel for. The kernel keeps
// a pipe's bytes in pages: a write goes into the last page only if it fits
// whole, else it starts a new page, and a page is freed only once it has
// been read to its end. So a 64 KiB pipe (16 pages, the default) cannot
// take 65,536 bytes in every order of reads and writes: holding 65,535
// tokens, it blocks a client writing back a token it has just read, and
// writes of awkward sizes fill it with half-empty pages at about 32 KiB.
// At 256 KiB MaxTokens fit in any order.
const pipeBytes = 256 << 10

// tokenByte is what the server writes. Clients echo whatever byte they read
// (make writes '+', gcc 'G'), so bytes carry no identity and are only counted.
const tokenByte = '+'

// FIFO is the server side of one jobserver FIFO on disk.
//
// It holds the FIFO open read-write for its whole life: make 4.4 opens the
// path read-only with a blocking open(2), which hangs forever while nobody
// holds a writer. The descriptor is non-blocking, so taking tokens back never
// waits for a client.
//
// Granted counts the tokens this server put in and has not taken back: the
// free ones in the pipe plus the ones clients hold.
type FIFO struct {
	path string

	mu      sync.Mutex
	fd      int // -1 once closed
	granted int
	// collected counts the tokens Collectors took back, which they do
	// beside the server's own accounting (see Snapshot).
	collected int
	// reissued counts tokens clients hold that no longer belong to this
	// FIFO: the server wrote them off (Reissue) to hand them to another.
	// The first ones clients return are swallowed until it is 0.
	reissued int

	// limit is how many tokens the pipe holds in any order of reads and
	// writes: MaxTokens, unless it could not be grown to pipeBytes
	// (growErr says why).
	limit    int
	capacity int
	growErr  error
}

// FIFOOptions says who may use a new FIFO.
type FIFOOptions struct {
	// Mode is the permission bits, applied regardless of the umask.
	// Zero means 0600.
	Mode fs.FileMode
	// GID, when not -1, is the group given to the FIFO, so build users of
	// that group can open it. Zero is a real group (root).
	GID int
	// UID, when positive, is the user given the FIFO (only root may), so
	// that with Mode 0600 only that user's processes reach its tokens;
	// 0 and -1 keep the creator.
	UID int
}

// Create makes a new FIFO at path and opens it. It never follows a symlink
// and refuses a path that already exists: use Open to adopt a FIFO this
// process's user created earlier.
func Create(path string, opts FIFOOptions) (*FIFO, error) {
	mode := opts.Mode.Perm()
	if mode == 0 {
		mode = 0o600
	}
	if err := unix.Mkfifo(path, 0o600); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create jobserver fifo %s: path already exists; remove it, or adopt it with Open if it is a FIFO of ours: %w", path, fs.ErrExist)
		}
		return nil, fmt.Errorf("create jobserver fifo %s: %w", path, err)
	}
	f, err := open(path, 0, uint32(os.Geteuid()))
	if err != nil {
		// Do not leave a FIFO behind that nobody holds open: Create
		// would refuse the path next time.
		os.Remove(path)
		return nil, err
	}
	if err := unix.Fchmod(f.fd, uint32(mode)); err != nil {
		f.Remove()
		return nil, fmt.Errorf("set mode %o on jobserver fifo %s: %w", mode, path, err)
	}
	if opts.GID != -1 {
		if err := unix.Fchown(f.fd, -1, opts.GID); err != nil {
			f.Remove()
			return nil, fmt.Errorf("set group %d on jobserver fifo %s (needs root or membership of that group): %w", opts.GID, path, err)
		}
	}
	if opts.UID > 0 {
		if err := unix.Fchown(f.fd, opts.UID, -1); err != nil {
			f.Remove()
			return nil, fmt.Errorf("give jobserver fifo %s to uid %d (needs root): %w", path, opts.UID, err)
		}
	}
	return f, nil
}

// Open adopts a FIFO that this process's user created earlier, for example
// after a restart of the broker, and takes granted as the number of tokens
// that belong to it. Clients may still hold some; Free tells how many are in
// the pipe. Open refuses anything that is not a FIFO owned by this user.
func Open(path string, granted int) (*FIFO, error) {
	return OpenOwnedBy(path, granted, os.Geteuid())
}

// OpenOwnedBy is Open for a FIFO this process created and gave to uid
// (FIFOOptions.UID); it refuses one owned by anyone else.
func OpenOwnedBy(path string, granted, uid int) (*FIFO, error) {
	if granted < 0 || granted > MaxTokens {
		return nil, fmt.Errorf("adopt jobserver fifo %s: granted %d is outside 0..%d", path, granted, MaxTokens)
	}
	return open(path, granted, uint32(uid))
}

func open(path string, granted int, owner uint32) (*FIFO, error) {
	// Look before opening: opening a device node can have side effects,
	// and a directory or socket would only fail with a less useful error.
	// The checks are repeated on the open descriptor below.
	var lst unix.Stat_t
	if err := unix.Lstat(path, &lst); err == nil {
		if err := checkFIFO(path, &lst, owner); err != nil {
			return nil, err
		}
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("open jobserver fifo %s: path is a symlink; remove it: %w", path, err)
		}
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("open jobserver fifo %s: no such file; the lease was lost, start a new one: %w", path, err)
		}
		return nil, fmt.Errorf("open jobserver fifo %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat jobserver fifo %s: %w", path, err)
	}
	if err := checkFIFO(path, &st, owner); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := &FIFO{path: path, fd: fd, granted: granted}
	if err := f.grow(); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open jobserver fifo %s: %w", path, err)
	}
	return f, nil
}

// grow asks for a pipe of pipeBytes and works out how many tokens the pipe
// holds. An unprivileged user over fs.pipe-user-pages-soft cannot grow a
// pipe: the FIFO then works with a lower limit.
func (f *FIFO) grow() error {
	capacity, err := unix.FcntlInt(uintptr(f.fd), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return fmt.Errorf("pipe size: %w", err)
	}
	if capacity < pipeBytes {
		if c, err := unix.FcntlInt(uintptr(f.fd), unix.F_SETPIPE_SZ, pipeBytes); err == nil {
			capacity = c
		} else {
			f.growErr = err
		}
	}
	// Worst case, every other page is nearly empty, and the first page is
	// nearly all read.
	page := os.Getpagesize()
	f.capacity = capacity
	f.limit = max(0, min(MaxTokens, (capacity/page/2-1)*page))
	return nil
}

// checkFIFO refuses anything but a FIFO owned by uid owner.
func checkFIFO(path string, st *unix.Stat_t, owner uint32) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFIFO:
	case unix.S_IFLNK:
		return fmt.Errorf("open jobserver fifo %s: path is a symlink; remove it: %w", path, unix.ELOOP)
	default:
		return fmt.Errorf("open jobserver fifo %s: not a FIFO (mode %o); remove it or choose another path", path, st.Mode)
	}
	if st.Uid != owner {
		return fmt.Errorf("open jobserver fifo %s: owned by uid %d, not by uid %d; remove it or run as its owner", path, st.Uid, owner)
	}
	return nil
}

// Path is where the FIFO lives.
func (f *FIFO) Path() string { return f.path }

// Dup returns a second descriptor of the server's end, for another process
// to keep the pipe, and with it the tokens in it, alive: a descriptor sent
// over a unix socket keeps the pipe open while it is in flight, so the
// sender need not wait for the receiver to take it.
func (f *FIFO) Dup() (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return nil, fmt.Errorf("jobserver fifo %s: closed", f.path)
	}
	fd, err := unix.FcntlInt(uintptr(f.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate jobserver fifo %s: %w", f.path, err)
	}
	return os.NewFile(uintptr(fd), f.path), nil
}

// Granted is the number of tokens that belong to this FIFO: free in the pipe
// or held by clients.
func (f *FIFO) Granted() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.granted
}

// Snapshot returns Granted and how many tokens Collectors have taken from
// the FIFO so far, read at the same instant: a server that counted
// Granted earlier tells what a Collector took since from what went wrong.
func (f *FIFO) Snapshot() (granted, collected int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.granted, f.collected
}

// Add puts n more tokens into the FIFO.
func (f *FIFO) Add(n int) error {
	if n < 0 {
		return fmt.Errorf("add %d tokens to %s: count is negative", n, f.path)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return fmt.Errorf("add tokens to %s: %w", f.path, os.ErrClosed)
	}
	if f.granted+n > MaxTokens {
		return fmt.Errorf("add %d tokens to %s: would grant %d, over the jobserver ceiling of %d tokens (a pipe holds 65,536 bytes); grant fewer", n, f.path, f.granted+n, MaxTokens)
	}
	if f.granted+n > f.limit {
		return fmt.Errorf("add %d tokens to %s: would grant %d, over the %d its %d-byte pipe holds without blocking clients (growing it to %d bytes failed: %v; raise fs.pipe-user-pages-soft or run with CAP_SYS_RESOURCE); grant fewer", n, f.path, f.granted+n, f.limit, f.capacity, pipeBytes, f.growErr)
	}
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = tokenByte
	}
	for len(buf) > 0 {
		w, err := unix.Write(f.fd, buf)
		if err == unix.EINTR {
			continue
		}
		if w > 0 {
			f.granted += w
			buf = buf[w:]
		}
		if err != nil {
			return fmt.Errorf("add tokens to %s: pipe full after %d of %d (clients wrote back more than they took?): %w", f.path, n-len(buf), n, err)
		}
	}
	return nil
}

// Take removes up to n free tokens from the FIFO without waiting and
// returns how many it removed. Tokens held by clients are not touched.
func (f *FIFO) Take(n int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return 0, fmt.Errorf("take tokens from %s: %w", f.path, os.ErrClosed)
	}
	taken, err := f.drain(n)
	f.granted -= taken
	return taken, err
}

// TakeExcess removes free tokens beyond what this FIFO granted: bytes a
// client wrote without having read them. It returns how many it removed.
func (f *FIFO) TakeExcess() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return 0, fmt.Errorf("take excess tokens from %s: %w", f.path, os.ErrClosed)
	}
	free, err := f.free()
	if err != nil {
		return 0, err
	}
	if free <= f.granted {
		return 0, nil
	}
	return f.drain(free - f.granted)
}

func (f *FIFO) drain(n int) (int, error) {
	buf := make([]byte, min(max(n, 0), MaxTokens+1))
	taken := 0
	for taken < n {
		r, err := unix.Read(f.fd, buf[:min(n-taken, len(buf))])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN || r == 0 {
			break
		}
		if err != nil {
			return taken, fmt.Errorf("take tokens from %s: %w", f.path, err)
		}
		taken += r
	}
	return taken, nil
}

// Forget writes off n tokens that clients took and will never return, such
// as those of a killed make. The caller decides they are lost; the FIFO
// cannot tell a leaked token from one still in use.
func (f *FIFO) Forget(n int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n < 0 || n > f.granted {
		return fmt.Errorf("forget %d tokens of %s: only %d were granted", n, f.path, f.granted)
	}
	f.granted -= n
	return nil
}

// Reissue writes off n tokens that clients hold and are not using, so the
// server can hand them to someone else: they stop counting as granted, and
// the first n tokens clients return are swallowed (Recover, Collector)
// instead of staying in the pipe.
func (f *FIFO) Reissue(n int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n < 0 || n > f.granted {
		return fmt.Errorf("reissue %d tokens of %s: only %d were granted", n, f.path, f.granted)
	}
	f.granted -= n
	f.reissued += n
	return nil
}

// Reissued is how many tokens clients hold that Reissue wrote off and
// that have not come back yet.
func (f *FIFO) Reissued() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reissued
}

// Recover swallows free tokens while clients owe reissued ones, and
// returns how many it swallowed. A free token of the grant swallowed so
// is as good as a returned one: bytes carry no identity, and what clients
// hold is the same.
func (f *FIFO) Recover() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return 0, fmt.Errorf("recover tokens from %s: %w", f.path, os.ErrClosed)
	}
	return f.recover()
}

func (f *FIFO) recover() (int, error) {
	if f.reissued == 0 {
		return 0, nil
	}
	taken, err := f.drain(f.reissued)
	f.reissued -= taken
	return taken, err
}

// DropReissued forgets the reissued tokens, once no client can return
// them any more (nobody holds the FIFO), and returns how many there were.
func (f *FIFO) DropReissued() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.reissued
	f.reissued = 0
	return n
}

// Free counts the tokens in the pipe right now. While clients run the count
// is stale as soon as it is read.
func (f *FIFO) Free() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return 0, fmt.Errorf("count tokens in %s: %w", f.path, os.ErrClosed)
	}
	return f.free()
}

func (f *FIFO) free() (int, error) {
	n, err := unix.IoctlGetInt(f.fd, unix.TIOCINQ) // FIONREAD: bytes in the pipe
	if err != nil {
		return 0, fmt.Errorf("count tokens in %s: %w", f.path, err)
	}
	return n, nil
}

// Close closes the server's descriptor and leaves the FIFO on disk, so that
// a restarted broker can adopt it with Open while clients keep running.
func (f *FIFO) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return nil
	}
	err := unix.Close(f.fd)
	f.fd = -1
	if err != nil {
		return fmt.Errorf("close jobserver fifo %s: %w", f.path, err)
	}
	return nil
}

// Remove closes the FIFO and unlinks it. Clients that have it open keep
// their descriptors; no new client can join.
func (f *FIFO) Remove() error {
	cerr := f.Close()
	if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove jobserver fifo %s: %w", f.path, err)
	}
	return cerr
}
