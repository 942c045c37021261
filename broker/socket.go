package broker

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// peerKey is where a connection's peer is in its requests' contexts.
type peerKey struct{}

// peer is who is on the other end of a connection.
type peer struct {
	uid, gid, pid int
}

// peerOf reads the credentials of the process on the other end; a
// connection whose credentials cannot be read is treated as nobody.
func peerOf(c net.Conn) peer {
	nobody := peer{uid: -1, gid: -1, pid: -1}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nobody
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nobody
	}
	var cred *unix.Ucred
	cerr := rc.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if cerr != nil || err != nil {
		return nobody
	}
	return peer{uid: int(cred.Uid), gid: int(cred.Gid), pid: int(cred.Pid)}
}

// Listen creates the socket at path, replacing a stale one, and makes it
// reachable by every local user: permission is checked per request.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("listen on %s: another tokend answers there; stop it first", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := chmodSocket(path, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("open socket %s to local users: %w", path, err)
	}
	return l, nil
}

// chmodSocket sets the mode of the socket at path without following a
// symlink: chmod(2) follows one, fchmodat(2) cannot refuse to, so the
// socket is opened as a path (O_PATH|O_NOFOLLOW), checked to be a socket,
// and changed through its /proc/self/fd link, which names the file itself.
func chmodSocket(path string, mode uint32) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s is no longer a socket (mode %o): something replaced it", path, st.Mode)
	}
	return unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), mode)
}
