package main

import (
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

	"github.com/tokend/tokend/jobserver"
	"golang.org/x/sys/unix"
)

// The FIFO holder is tokend's second process, `tokend hold-fifos DIR`: it
// holds every lease FIFO of the runtime directory open and does nothing
// else, so that the tokens in a FIFO outlive a tokend killed with SIGKILL
// (the kernel drops a pipe's bytes with its last descriptor) and a make 4.4
// opening the FIFO meanwhile finds a writer. It runs in a session of its
// own, so a signal to tokend's process group does not end it, and a
// restarted tokend talks to the one that is running. tokend sends it, on a
// unix packet socket of the runtime directory, "hold ID" with the FIFO's
// descriptor attached and "release ID", and does not wait for an answer:
// a descriptor in flight keeps its pipe open as the holder's does, so the
// tokens are safe the moment the send returns, and registering a lease
// costs no round trip to a second process (it was the slowest step of the
// hook's registration here, 0.3 ms at the median and 3 to 5 ms at the
// 99th percentile on a loaded host). It exits once no tokend is connected
// and it holds none.
//
// Under systemd, KillMode=process (the NixOS module's) leaves it running
// when the unit stops or tokend dies.

// holderCommand is the hidden subcommand that runs the holder.
const holderCommand = "hold-fifos"

// holderSocket is the holder's socket in the runtime directory. Its name
// changed with its protocol, so a tokend never talks to a holder of
// another version; the older holder ends once its FIFOs are gone.
func holderSocket(dir string) string { return filepath.Join(dir, "fifo-holder.sock") }

var holderID = regexp.MustCompile(`^[0-9a-f]{12}$`)

// heldFIFOs is what the holder keeps open, by lease ID.
type heldFIFOs map[string]*os.File

// keep holds f as lease id's FIFO, or closes it if the ID is bad, f is no
// FIFO or the lease's FIFO is held already.
func (h heldFIFOs) keep(id string, f *os.File) {
	var st unix.Stat_t
	_, dup := h[id]
	if dup || !holderID.MatchString(id) || unix.Fstat(int(f.Fd()), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		f.Close()
		return
	}
	h[id] = f
}

// release closes lease id's FIFO.
func (h heldFIFOs) release(id string) {
	if f, ok := h[id]; ok {
		f.Close()
		delete(h, id)
	}
}

// prune lets go of FIFOs removed by others (the runtime directory wiped).
func (h heldFIFOs) prune(leases string) {
	for id, f := range h {
		var at, open unix.Stat_t
		if unix.Lstat(filepath.Join(leases, id+".fifo"), &at) != nil || unix.Fstat(int(f.Fd()), &open) != nil || at.Ino != open.Ino || at.Dev != open.Dev {
			h.release(id)
		}
	}
}

// runHolder is the holder process.
func runHolder(dir string) error {
	syscall.Umask(0o077) // its socket is tokend's alone
	leases := filepath.Join(dir, "leases")
	held := heldFIFOs{}
	// What a previous holder held died with it; hold what is there now.
	if entries, err := os.ReadDir(leases); err == nil {
		for _, e := range entries {
			id, ok := strings.CutSuffix(e.Name(), ".fifo")
			if !ok {
				continue
			}
			path := filepath.Join(leases, e.Name())
			if fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
				held.keep(id, os.NewFile(uintptr(fd), path))
			}
		}
	}
	socket := holderSocket(dir)
	os.Remove(socket)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("fifo holder: %w", err)
	}
	defer ln.Close()
	for {
		ln.SetDeadline(time.Now().Add(time.Second))
		c, err := ln.AcceptUnix()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// While no tokend is connected, the holder ends with its last FIFO.
			if held.prune(leases); len(held) == 0 {
				return nil
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("fifo holder: %w", err)
		}
		serveHolder(c, held)
		c.Close()
		if held.prune(leases); len(held) == 0 {
			return nil
		}
	}
}

// serveHolder takes one tokend's requests until it goes.
func serveHolder(c *net.UnixConn, held heldFIFOs) {
	msg, oob := make([]byte, 64), make([]byte, unix.CmsgSpace(4))
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(msg, oob)
		if err != nil || n == 0 {
			return
		}
		files := receivedFiles(oob[:oobn])
		verb, id, _ := strings.Cut(string(msg[:n]), " ")
		if verb == "hold" && len(files) == 1 {
			held.keep(id, files[0])
			continue
		}
		if verb == "release" {
			held.release(id)
		}
		for _, f := range files {
			f.Close()
		}
	}
}

// receivedFiles are the descriptors a message carried.
func receivedFiles(oob []byte) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "received fifo"))
		}
	}
	return files
}

// holderClient is tokend's side: a broker.FIFOHolder.
type holderClient struct {
	mu   sync.Mutex
	conn *net.UnixConn
	pid  int
}

// newHolderClient talks to the holder on c, whose pid the socket tells.
func newHolderClient(c *net.UnixConn) (*holderClient, error) {
	rc, err := c.SyscallConn()
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
	return &holderClient{conn: c, pid: int(cred.Pid)}, nil
}

func (h *holderClient) PID() int { return h.pid }

// dialHolder connects to the holder's socket.
func dialHolder(socket string) (*holderClient, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	return newHolderClient(c)
}

// startHolder connects to the holder of dir, starting one if none runs.
func startHolder(dir string) (*holderClient, error) {
	socket := holderSocket(dir)
	if h, err := dialHolder(socket); err == nil {
		return h, nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("fifo holder: %w", err)
	}
	// No stdout or stderr: the holder outlives tokend, and holding its
	// output pipe would keep whoever reads tokend's output waiting.
	cmd := exec.Command(self, holderCommand, dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("fifo holder: %w", err)
	}
	go cmd.Wait() // reaped if it ends while tokend runs
	deadline := time.Now().Add(3 * time.Second)
	for {
		h, err := dialHolder(socket)
		if err == nil {
			return h, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("fifo holder did not answer on %s: %w", socket, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Hold sends the holder a descriptor of fifo.
func (h *holderClient) Hold(id string, fifo *jobserver.FIFO) error {
	f, err := fifo.Dup()
	if err != nil {
		return fmt.Errorf("fifo holder: %w", err)
	}
	defer f.Close()
	return h.send("hold "+id, unix.UnixRights(int(f.Fd())))
}

func (h *holderClient) Release(id string) error { return h.send("release "+id, nil) }

func (h *holderClient) send(msg string, oob []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if _, _, err := h.conn.WriteMsgUnix([]byte(msg), oob, nil); err != nil {
		return fmt.Errorf("fifo holder: %w", err)
	}
	return nil
}
