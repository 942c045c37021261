// Package atomicfile replaces files whole: a reader, or a process started
// after a crash, sees the old file or the new one, never a torn one.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Durability is what a replaced file must survive.
type Durability int

const (
	// CrashOfWriter: whoever reads the file, the writer restarted after a
	// crash included, finds the old contents or the new ones whole. A
	// crash of the host may lose the last writes. For a file that does not
	// outlive the host anyway (in /run) and is written many times a
	// second, where a sync would cost milliseconds each time.
	CrashOfWriter Durability = iota
	// CrashOfHost: the new contents are on disk before the name points at
	// them, and the rename is on disk before Write returns.
	CrashOfHost
)

// Write replaces the file at path with data, mode 0600, as WriteAt does
// in path's directory.
func Write(path string, data []byte, d Durability) error {
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer dir.Close()
	return WriteAt(dir, filepath.Base(path), data, d)
}

// WriteAt replaces the file name in the open directory dir with data,
// mode 0600. It writes a new file under a random name beside it and
// renames it over name, both relative to dir and following no symlink, so
// a directory path swapped meanwhile cannot send the write elsewhere. For
// CrashOfHost it syncs the file before the rename and the directory
// after.
func WriteAt(dir *os.File, name string, data []byte, d Durability) error {
	shown := filepath.Join(dir.Name(), name)
	var raw [6]byte
	rand.Read(raw[:])
	tmp := "." + name + "-" + hex.EncodeToString(raw[:])
	dirfd := int(dir.Fd())
	fd, err := unix.Openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", shown, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err = f.Write(data)
	if err == nil && d == CrashOfHost {
		err = f.Sync()
	}
	if err := errors.Join(err, f.Close()); err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
		return fmt.Errorf("write %s: %w", shown, err)
	}
	if err := unix.Renameat(dirfd, tmp, dirfd, name); err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
		return fmt.Errorf("write %s: %w", shown, err)
	}
	if d == CrashOfHost {
		if err := dir.Sync(); err != nil {
			return fmt.Errorf("write %s: sync its directory: %w", shown, err)
		}
	}
	return nil
}
