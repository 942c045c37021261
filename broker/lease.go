package broker

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/procfs"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/fileid"
	"github.com/tokend/tokend/jobserver"
)

// Lease is one build's share of the budget: its own FIFO, fed from the
// budget, and what the broker has observed of it.
type Lease struct {
	// Registration is fixed when the lease is made; the state file keeps
	// it whole.
	api.Registration

	// Accounting, saved with the registration.
	fifo      *jobserver.FIFO
	reclaimed int // tokens leaked by its clients and written off
	inflated  int // bytes its clients wrote beyond what it was granted
	// admitted is set once the lease's implicit slot fits in the budget.
	// A lease whose command has not started yet (tokenctl run) waits for
	// it; one whose build already runs (a nix build) is admitted at once.
	admitted  bool
	ending    bool
	endReason string
	joined    bool      // a client opened the FIFO: the build uses the jobserver
	asked     time.Time // when the build first read its gate; zero until it does

	gate *gate // nil unless the build waits on its own side (a nix build)

	// What the passes saw.
	prevFree int  // free tokens seen by the pass before, to tell idle from between jobs
	lastFree int  // free tokens seen by the last pass
	hungry   bool // every token granted was held at the last pass
	owed     int  // tokens to take back as clients return them
	share    int  // the tokens it should have
	// overSince is when the lease came to hold more than its share while
	// another waited; zero while it does not. overReported is set once
	// that lasted Options.ShareGrace and was said.
	overSince    time.Time
	overReported bool
	// idleSince is since when every job count found the lease's clients
	// holding tokens beyond their jobs while it was above its share
	// (reissue.go); idleLeast is the fewest such tokens a count found.
	idleSince time.Time
	idleLeast int
	jobs      int // jobs its clients ran at the last count

	// The search for leaked tokens (reclaim.go).
	inode     fileid.ID
	opens     int       // clients' opens seen, so a scan racing an open is discarded
	closeSeen time.Time // a client closed the FIFO; nobody may hold it any more
	// seenSinceMade is set while inotify has reported every open of the
	// FIFO since tokend made it: not for an adopted lease, nor after
	// inotify dropped events. Opens cannot be counted to tell how many
	// clients hold it, because inotify merges an event into the one before
	// it while neither is read (two opens in a row are one), but no open
	// at all is certain.
	seenSinceMade bool
	removing      bool // ended and nobody holds it: removed at the end of the tick
}

// neverOpened reports whether the watch knows that no client ever opened
// l's FIFO, so that nobody can hold it.
func (l *Lease) neverOpened() bool { return l.seenSinceMade && l.opens == 0 }

// fifoPath is where lease id's FIFO lives in the runtime directory.
func fifoPath(dir, id string) string { return filepath.Join(dir, "leases", id+".fifo") }

// asking reports whether l wants its implicit slot: a nix build from the
// moment it reads its gate, any other lease from the start.
func (l *Lease) asking() bool { return l.gate == nil || !l.asked.IsZero() }

// counted reports whether l's implicit slot counts against the budget: it
// runs, or it waits for admission and room is kept for it. A nix build
// that has not asked yet (still configuring, or built without the setup
// hook) runs no job of the jobserver's and holds nothing.
func (l *Lease) counted() bool { return !l.ending && (l.admitted || l.asking()) }

func (l *Lease) state() string {
	switch {
	case l.ending:
		return api.StateEnding
	case l.admitted:
		return api.StateRunning
	case l.asking():
		return api.StateWaiting
	case l.joined:
		return api.StateStarting
	}
	return api.StateNotJoined
}

// processStart reads the start time of pid from /proc.
func processStart(pid int) (uint64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, fmt.Errorf("process %d: %w", pid, err)
	}
	st, err := p.Stat()
	if err != nil {
		return 0, fmt.Errorf("process %d: %w", pid, err)
	}
	return st.Starttime, nil
}

// ownerGone reports why the owner no longer exists, or "" while it does.
func ownerGone(o api.Owner) string {
	if o.PID > 0 {
		if start, err := processStart(o.PID); err != nil || start != o.Start {
			return fmt.Sprintf("owner process %d exited", o.PID)
		}
	}
	if o.Dir != "" {
		if _, err := os.Lstat(o.Dir); errors.Is(err, fs.ErrNotExist) {
			return fmt.Sprintf("owner directory %s removed", o.Dir)
		}
	}
	return ""
}
