package memory

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The controller reads its kernel files (/proc/PID/status and stat, the
// cgroup's memory files, meminfo, PSI) through kernelFiles, not os.ReadFile
// or procfs, because of what they cost measured here (Go 1.26, a 2-core VM
// whose system calls trap to the hypervisor):
//   - os.ReadFile opens these files for the poller: strace showed fcntl
//     F_GETFL, F_SETFL O_NONBLOCK, EPOLL_CTL_ADD and EPOLL_CTL_DEL around
//     every read, four system calls more than open, read and close;
//   - procfs's Proc.NewStatus took 36 µs and 118 allocations a call, a
//     read of the same file into a reused buffer 16 µs and 4;
//   - open, read and close of /proc/self/status took 15 µs, a pread at
//     offset 0 of the file kept open 6.5 µs; of a v1 memory.stat 15 and
//     6.6 µs, of memory.usage_in_bytes 6.7 and 1.0 µs, of
//     /proc/pressure/memory 6.7 and 2.0 µs. A pread at offset 0 of these
//     files makes the kernel generate them anew (fs/seq_file.c).
//
// tokend reads /proc/PID/status of every process of every lease four times
// a second, so in the burst benchmark these reads were a third of its CPU.

// kernelBufs are the buffers kernel files are read into: status is about
// 1.5 KiB, stat about 300 bytes, a v1 memory.stat about 1 KiB.
var kernelBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// keptIdle is how long kernelFiles keeps a file open that nobody reads:
// longer than a few controller ticks, short enough that the status files
// of jobs that have exited do not pile up as open descriptors.
const keptIdle = 5 * time.Second

// kernelFiles keeps the kernel files it reads open, to read them again
// with one pread instead of open, read and close. A kept descriptor that
// fails (its process exited, its cgroup was removed) is closed and the path
// opened afresh once, so a new process under a reused PID, or a cgroup made
// again under the same name, is read as a path read would read it. A nil
// *kernelFiles, or one closed, opens and closes the file at every read.
type kernelFiles struct {
	mu    sync.Mutex
	kept  map[string]*keptFile // nil once closed
	swept time.Time
}

type keptFile struct {
	fd   int
	used time.Time
}

// uncached reads for callers that read a file too seldom to keep it open.
var uncached *kernelFiles

func newKernelFiles() *kernelFiles {
	return &kernelFiles{kept: map[string]*keptFile{}}
}

// read hands the whole file at path to parse, which must not keep it.
func (k *kernelFiles) read(path string, parse func([]byte) error) error {
	if k == nil {
		return readKernelFile(path, parse)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.kept == nil {
		return readKernelFile(path, parse)
	}
	now := time.Now()
	k.sweep(now)
	if f, ok := k.kept[path]; ok {
		f.used = now
		err := readFD(f.fd, path, parse)
		if !failedFD(err) {
			return err
		}
		unix.Close(f.fd)
		delete(k.kept, path)
	}
	fd, err := openKernelFile(path)
	if err != nil {
		return err
	}
	err = readFD(fd, path, parse)
	if failedFD(err) {
		unix.Close(fd)
		return err
	}
	k.kept[path] = &keptFile{fd: fd, used: now}
	return err
}

// failedFD tells a read that failed in the kernel, after which the
// descriptor is of no more use, from a file that did not parse.
func failedFD(err error) bool {
	var errno unix.Errno
	return errors.As(err, &errno)
}

// sweep closes, at most once a second, the files unread for keptIdle.
func (k *kernelFiles) sweep(now time.Time) {
	if now.Sub(k.swept) < time.Second {
		return
	}
	k.swept = now
	for path, f := range k.kept {
		if now.Sub(f.used) > keptIdle {
			unix.Close(f.fd)
			delete(k.kept, path)
		}
	}
}

// close closes every kept file; later reads open and close their file.
func (k *kernelFiles) close() error {
	if k == nil {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var err error
	for path, f := range k.kept {
		if cerr := unix.Close(f.fd); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close %s: %w", path, cerr))
		}
	}
	k.kept = nil
	return err
}

// readKernelFile reads the whole file at path once and hands it to parse,
// which must not keep it. Errors wrap the system call's errno, so isGone
// sees a process or cgroup that went away.
func readKernelFile(path string, parse func([]byte) error) error {
	fd, err := openKernelFile(path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return readFD(fd, path, parse)
}

func openKernelFile(path string) (int, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", path, err)
		}
		return fd, nil
	}
}

// readFD reads fd from offset 0 into a pooled buffer. A read that leaves
// the buffer unfilled has reached the end: these are all seq_files, whose
// read fills the buffer unless the file ends first (seq_read_iter), so the
// usual read that returns 0 is saved.
func readFD(fd int, path string, parse func([]byte) error) error {
	bp := kernelBufs.Get().(*[]byte)
	defer kernelBufs.Put(bp)
	b := (*bp)[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := unix.Pread(fd, b[len(b):cap(b)], int64(len(b)))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		b = b[:len(b)+n]
		if n == 0 || len(b) < cap(b) {
			break
		}
	}
	*bp = b
	return parse(b)
}

// statusFields are the lines of /proc/PID/status a Proc needs.
type statusFields struct {
	name     string
	rss, hwm uint64 // bytes; the lines are absent for kernel threads and zombies
}

// parseStatus picks Name, VmRSS and VmHWM out of a /proc/PID/status file.
func parseStatus(b []byte) (statusFields, error) {
	var s statusFields
	haveName := false
	for len(b) > 0 {
		line, rest, _ := bytes.Cut(b, []byte{'\n'})
		b = rest
		key, value, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		var err error
		switch string(key) {
		case "Name":
			s.name, haveName = string(bytes.TrimSpace(value)), true
		case "VmRSS":
			s.rss, err = parseKB(value)
		case "VmHWM":
			s.hwm, err = parseKB(value)
		}
		if err != nil {
			return statusFields{}, fmt.Errorf("status line %q: %w", line, err)
		}
	}
	if !haveName {
		return statusFields{}, errors.New("status has no Name line")
	}
	return s, nil
}

// parseKB parses a status value such as "\t  307852 kB" into bytes.
func parseKB(v []byte) (uint64, error) {
	num, unit, _ := bytes.Cut(bytes.TrimSpace(v), []byte{' '})
	if string(unit) != "kB" {
		return 0, errors.New("want a number of kB")
	}
	n, err := strconv.ParseUint(string(num), 10, 64)
	if err != nil {
		return 0, err
	}
	return n * 1024, nil
}

// statFields are the fields of /proc/PID/stat the sampler needs.
type statFields struct {
	ppid  int
	flags uint64 // the kernel's PF_* task flags
}

// parseStat reads the parent and flags from a /proc/PID/stat line. The
// command name in parentheses may hold spaces and parentheses itself, so
// the fields are counted from the last ')'.
func parseStat(b []byte) (statFields, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return statFields{}, errors.New("stat has no ')' after the command name")
	}
	// state ppid pgrp session tty_nr tpgid flags ...
	var f [7][]byte
	n := 0
	for field := range bytes.FieldsSeq(b[i+1:]) {
		f[n] = field
		if n++; n == len(f) {
			break
		}
	}
	if n < len(f) {
		return statFields{}, fmt.Errorf("stat has %d fields after the command name, want at least %d", n, len(f))
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return statFields{}, fmt.Errorf("stat ppid: %w", err)
	}
	flags, err := strconv.ParseUint(string(f[6]), 10, 64)
	if err != nil {
		return statFields{}, fmt.Errorf("stat flags: %w", err)
	}
	return statFields{ppid: ppid, flags: flags}, nil
}
