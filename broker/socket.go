package broker

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
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
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("open socket %s to local users: %w", path, err)
	}
	return l, nil
}
