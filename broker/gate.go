package broker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// A gate is how a build that is already running (a nix build: its hook
// cannot wait) waits for admission on the build side, inside its sandbox,
// where no control socket reaches. It is a small file the hook maps into
// the sandbox next to the FIFO; the setup hook reads it before it starts a
// parallel make, ninja or cargo, and tokend sees every read through
// inotify, which tells it the build now asks for its implicit slot.
//
// The file holds one line of fixed width, rewritten in place (the sandbox
// sees the mapped inode, so a rename would go unseen):
//
//	wait 1764650000123   500
//	go   1764650000123   500
//
// the state, tokend's clock in milliseconds when it last wrote the line,
// and the oom_score_adj the build's processes should take. While a build
// waits, tokend rewrites the line every tick: a stamp that stops moving
// means tokend is gone, and the build goes on without it (fail open)
// instead of waiting forever.
type gate struct {
	path string
	f    *os.File
}

// gateLine is the fixed width every line is padded to, so a rewrite in
// place never leaves the tail of a longer one behind.
const gateLine = len("wait 0000000000000 -1000\n")

// gatePath is where lease id's gate lives in the runtime directory.
func gatePath(dir, id string) string { return filepath.Join(dir, "leases", id+".gate") }

// createGate makes the gate file of a new lease, readable by the build's
// group only.
func createGate(path string, gid int) (*gate, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create gate %s: %w", path, err)
	}
	g := &gate{path: path, f: os.NewFile(uintptr(fd), path)}
	if err := g.f.Chmod(0o640); err != nil {
		g.remove()
		return nil, fmt.Errorf("set mode of gate %s: %w", path, err)
	}
	if err := g.f.Chown(-1, gid); err != nil {
		g.remove()
		return nil, fmt.Errorf("set group %d on gate %s (needs root or membership of that group): %w", gid, path, err)
	}
	return g, nil
}

// openGate adopts the gate of a lease a previous tokend created.
func openGate(path string) (*gate, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open gate %s: %w", path, err)
	}
	return &gate{path: path, f: os.NewFile(uintptr(fd), path)}, nil
}

// write replaces the line: open says whether the build may start, adj is
// the oom_score_adj its processes should take.
func (g *gate) write(open bool, adj int, now time.Time) error {
	state := "wait"
	if open {
		state = "go"
	}
	line := fmt.Sprintf("%-4s %13d %5d\n", state, now.UnixMilli(), adj)
	if len(line) != gateLine {
		return fmt.Errorf("gate %s: line %q is not %d bytes", g.path, line, gateLine)
	}
	// One pwrite of a few bytes at offset 0: a reader sees the old line
	// or the new one, and a torn read only looks like a missed beat.
	if _, err := g.f.WriteAt([]byte(line), 0); err != nil {
		return fmt.Errorf("write gate %s: %w", g.path, err)
	}
	return nil
}

func (g *gate) close() error { return g.f.Close() }

// remove closes the gate and deletes its file.
func (g *gate) remove() error {
	err := g.f.Close()
	if rerr := os.Remove(g.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}
