// Package atomicfile replaces files whole: a reader, or a process started
// after a crash, sees the old file or the new one, never a torn one.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
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

// Write replaces the file at path with data, mode 0600: it writes a
// temporary file beside it and renames it over path, syncing both the
// file and the directory when d asks for CrashOfHost.
func Write(path string, data []byte, d Durability) error {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+name+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d == CrashOfHost {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return fmt.Errorf("write %s: sync: %w", path, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d == CrashOfWriter {
		return nil
	}
	parent, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: open its directory to sync the rename: %w", path, err)
	}
	defer parent.Close()
	if err := parent.Sync(); err != nil {
		return fmt.Errorf("write %s: sync its directory: %w", path, err)
	}
	return nil
}
