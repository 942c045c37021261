package memory

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// The controller reads its kernel files (/proc/PID/status and stat, the
// cgroup's memory files, meminfo, PSI) with readKernelFile, not os.ReadFile
// or procfs, because of what they cost measured here (Go 1.26, a 2-core VM
// whose system calls trap to the hypervisor):
//   - os.ReadFile opens these files for the poller: strace showed fcntl
//     F_GETFL, F_SETFL O_NONBLOCK, EPOLL_CTL_ADD and EPOLL_CTL_DEL around
//     every read, four system calls more than open, read and close;
//   - procfs's Proc.NewStatus took 36 µs and 118 allocations a call, a
//     read of the same file into a reused buffer 16 µs and 4.
//
// tokend reads /proc/PID/status of every process of every lease four times
// a second, so in the burst benchmark these were a third of its CPU.

// kernelBufs are the buffers kernel files are read into: status is about
// 1.5 KiB, stat about 300 bytes, a v1 memory.stat about 1 KiB.
var kernelBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// readKernelFile reads the whole file at path and hands it to parse, which
// must not keep it. Errors wrap the system call's errno, so isGone sees a
// process or cgroup that went away.
func readKernelFile(path string, parse func([]byte) error) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	bp := kernelBufs.Get().(*[]byte)
	defer kernelBufs.Put(bp)
	b := (*bp)[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := unix.Read(fd, b[len(b):cap(b)])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if n == 0 {
			break
		}
		b = b[:len(b)+n]
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
