// Package fileid tells files apart by identity, their device and inode,
// which stay the same whatever path, mount or namespace reaches a file: a
// FIFO mapped into a nix sandbox, or a sandbox directory seen as some
// process's root.
package fileid

import "golang.org/x/sys/unix"

// ID is a file's identity.
type ID struct{ Dev, Ino uint64 }

// Of is the identity of the file at path, following symbolic links, as
// /proc/PID/fd and /proc/PID/root entries must be followed.
func Of(path string) (ID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ID{}, err
	}
	return ID{Dev: st.Dev, Ino: st.Ino}, nil
}
