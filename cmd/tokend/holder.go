package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The FIFO holder is tokend's second process, `tokend hold-fifos DIR`: it
// holds every lease FIFO of the runtime directory open read-write and
// does nothing else, so that the tokens in a FIFO outlive a tokend killed
// with SIGKILL (the kernel drops a pipe's bytes with its last descriptor)
// and a make 4.4 opening the FIFO meanwhile finds a writer. It runs in a
// session of its own, so a signal to tokend's process group does not end
// it, and a restarted tokend talks to the one that is running. tokend
// tells it, on a unix socket of the runtime directory, which FIFO to hold
// and which to let go, one line each, and waits for its "ok" before it
// puts tokens in. It exits once no tokend is connected and it holds none.
//
// Under systemd the unit's cgroup is killed with tokend; there the
// service's file descriptor store would be the holder. It is not done.

// holderCommand is the hidden subcommand that runs the holder.
const holderCommand = "hold-fifos"

// holderSocket is the holder's socket in the runtime directory.
func holderSocket(dir string) string { return filepath.Join(dir, "holder.sock") }

var holderID = regexp.MustCompile(`^[0-9a-f]{12}$`)

// runHolder is the holder process.
func runHolder(dir string) error {
	syscall.Umask(0o077) // its socket is tokend's alone
	leases := filepath.Join(dir, "leases")
	held := map[string]*os.File{}
	hold := func(id string) error {
		if !holderID.MatchString(id) {
			return fmt.Errorf("%q is not a lease id", id)
		}
		if _, ok := held[id]; ok {
			return nil
		}
		path := filepath.Join(leases, id+".fifo")
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", path, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			unix.Close(fd)
			return fmt.Errorf("%s is not a fifo", path)
		}
		held[id] = os.NewFile(uintptr(fd), path)
		return nil
	}
	// What a previous holder held died with it; hold what is there now.
	if entries, err := os.ReadDir(leases); err == nil {
		for _, e := range entries {
			if id, ok := strings.CutSuffix(e.Name(), ".fifo"); ok {
				hold(id)
			}
		}
	}
	socket := holderSocket(dir)
	os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("fifo holder: %w", err)
	}
	defer ln.Close()
	// While no tokend is connected, FIFOs removed by others (the runtime
	// directory wiped) are let go, and the holder ends with the last.
	prune := func() {
		for id, f := range held {
			var at, open unix.Stat_t
			if unix.Lstat(f.Name(), &at) != nil || unix.Fstat(int(f.Fd()), &open) != nil || at.Ino != open.Ino || at.Dev != open.Dev {
				f.Close()
				delete(held, id)
			}
		}
	}
	for {
		ln.(*net.UnixListener).SetDeadline(time.Now().Add(time.Second))
		c, err := ln.Accept()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if prune(); len(held) == 0 {
				return nil
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("fifo holder: %w", err)
		}
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			verb, id, _ := strings.Cut(sc.Text(), " ")
			var err error
			switch verb {
			case "hold":
				err = hold(id)
			case "release":
				if f, ok := held[id]; ok {
					f.Close()
					delete(held, id)
				}
			default:
				err = fmt.Errorf("unknown request %q", verb)
			}
			answer := "ok\n"
			if err != nil {
				answer = "error " + strings.ReplaceAll(err.Error(), "\n", " ") + "\n"
			}
			if _, err := c.Write([]byte(answer)); err != nil {
				break
			}
		}
		c.Close()
		if prune(); len(held) == 0 {
			return nil
		}
	}
}

// holderClient is tokend's side: a broker.FIFOHolder.
type holderClient struct {
	mu   sync.Mutex
	conn net.Conn
	r    *bufio.Reader
	pid  int
}

// newHolderClient talks to the holder on c, whose pid the socket tells.
func newHolderClient(c net.Conn) (*holderClient, error) {
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("fifo holder: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || cerr != nil {
		c.Close()
		return nil, fmt.Errorf("fifo holder: peer credentials: %w", errors.Join(err, cerr))
	}
	if int(cred.Uid) != os.Geteuid() {
		c.Close()
		return nil, fmt.Errorf("fifo holder: %s is served by uid %d, not tokend's", c.RemoteAddr(), cred.Uid)
	}
	return &holderClient{conn: c, r: bufio.NewReader(c), pid: int(cred.Pid)}, nil
}

func (h *holderClient) PID() int { return h.pid }

// startHolder connects to the holder of dir, starting one if none runs.
func startHolder(dir string) (*holderClient, error) {
	socket := holderSocket(dir)
	if c, err := net.Dial("unix", socket); err == nil {
		return newHolderClient(c)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("fifo holder: %w", err)
	}
	// No stdout or stderr: the holder outlives tokend, and holding its
	// output pipe would keep whoever reads tokend's output waiting. It
	// answers every request, so its errors reach tokend's log.
	cmd := exec.Command(self, holderCommand, dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("fifo holder: %w", err)
	}
	go cmd.Wait() // reaped if it ends while tokend runs
	deadline := time.Now().Add(3 * time.Second)
	for {
		c, err := net.Dial("unix", socket)
		if err == nil {
			return newHolderClient(c)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("fifo holder did not answer on %s: %w", socket, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *holderClient) Hold(id string) error    { return h.ask("hold " + id) }
func (h *holderClient) Release(id string) error { return h.ask("release " + id) }

func (h *holderClient) ask(line string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := h.conn.Write([]byte(line + "\n")); err != nil {
		return fmt.Errorf("fifo holder: %w", err)
	}
	answer, err := h.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("fifo holder: %w", err)
	}
	if answer = strings.TrimSpace(answer); answer != "ok" {
		return errors.New("fifo holder: " + strings.TrimPrefix(answer, "error "))
	}
	return nil
}
