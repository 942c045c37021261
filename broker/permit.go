package broker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/procfs"

	"github.com/tokend/tokend/jobserver"
)

// Who may do what. The caller is the socket peer (SO_PEERCRED), never what
// a request says; README's "Who may do what" table states these rules.
//
//   - Root may own a lease by any process, a directory (a nix build's
//     sandbox) or a cgroup, and end any lease.
//   - Any other member of the lease group owns a lease only by a process of
//     its own uid (its own pid, typically), never by a directory or a
//     cgroup, holds at most LeasesPerUser leases, and ends only its own.
//   - No user but root owns a lease by tokend, tokend's ancestors or PID 1:
//     such a lease would never end.
//   - tokend moves into a lease's cgroup, and freezes, only processes all of
//     whose uids are the lease's, unless the lease is root's (a nix build
//     run by build users), and never tokend, its ancestors or PID 1.

// ErrForbidden means the caller may not do what it asked: API status 403.
var ErrForbidden = errors.New("forbidden")

// ErrQuota means the caller holds as many leases as one user may: API
// status 429.
var ErrQuota = errors.New("lease quota reached")

// DefaultLeasesPerUser is how many leases one user other than root may
// hold at once: a user runs a few builds side by side, not dozens, and the
// quota bounds the state file and the share of the budget one user's idle
// leases can pin.
const DefaultLeasesPerUser = 16

// MaxNameBytes bounds a lease name: pnames and command names are short,
// and the name is shown in status and stored in the state file and the
// history.
const MaxNameBytes = 128

// checkName refuses names that are empty, too long, not UTF-8, or hold
// anything but printable characters (a terminal escape would forge lines
// in tokenctl status).
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("lease needs a name")
	case len(name) > MaxNameBytes:
		return fmt.Errorf("lease name is %d bytes, more than the limit of %d; choose a shorter name", len(name), MaxNameBytes)
	case !utf8.ValidString(name):
		return errors.New("lease name is not valid UTF-8; choose a printable name")
	}
	for i, r := range name {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("lease name has the unprintable character %U at byte %d; lease names are limited to printable characters", r, i)
		}
	}
	return nil
}

// checkOwner decides whether the caller uid may own a lease as req says.
func checkOwner(uid int, req LeaseRequest) error {
	if req.Owner.Dir != "" {
		if uid != 0 {
			return fmt.Errorf("uid %d may not own a lease by a directory (owner_dir): only root may; own it by your process (owner_pid): %w", uid, ErrForbidden)
		}
		if !filepath.IsAbs(req.Owner.Dir) || filepath.Clean(req.Owner.Dir) != req.Owner.Dir || req.Owner.Dir == "/" {
			return fmt.Errorf("owner directory %q: want a clean absolute path other than /", req.Owner.Dir)
		}
	}
	if req.Cgroup != "" && uid != 0 {
		return fmt.Errorf("uid %d may not name the cgroup a lease runs in: only root may: %w", uid, ErrForbidden)
	}
	if req.Owner.PID <= 0 {
		if uid != 0 {
			return fmt.Errorf("uid %d must own a lease by a process of its own (owner_pid): %w", uid, ErrForbidden)
		}
		return nil
	}
	if uid == 0 {
		return nil
	}
	if why := protected(req.Owner.PID); why != "" {
		return fmt.Errorf("owner process %d is %s: a lease it owns would never end: %w", req.Owner.PID, why, ErrForbidden)
	}
	uids, err := processUIDs(req.Owner.PID)
	if err != nil {
		return fmt.Errorf("owner process %d: %w", req.Owner.PID, err)
	}
	if !allAre(uids, uid) {
		return fmt.Errorf("owner process %d does not run as uid %d alone (uids %v): a lease may be owned only by a process of its caller's uid: %w", req.Owner.PID, uid, uids, ErrForbidden)
	}
	return nil
}

// Reachable says why tokend must not move process pid into the cgroup of
// a lease registered by leaseUID, or freeze it there; nil when it may. A
// root lease (a nix build registered by the hook) reaches the build users
// of its sandbox; any other reaches only processes all of whose uids
// (real, effective, saved, file system) are the lease's, so a set-uid
// program a build runs is left alone. tokend itself, its ancestors and
// PID 1 are never reached. A process that cannot be read is not reached.
func Reachable(leaseUID, pid int) error {
	if why := protected(pid); why != "" {
		return fmt.Errorf("process %d is %s", pid, why)
	}
	if leaseUID == 0 {
		return nil
	}
	uids, err := processUIDs(pid)
	if err != nil {
		return err
	}
	if !allAre(uids, leaseUID) {
		return fmt.Errorf("process %d runs as uids %v, not the lease's uid %d alone", pid, uids, leaseUID)
	}
	return nil
}

// protected tells what pid is if tokend must never act on it: "PID 1",
// "tokend itself" or "an ancestor of tokend"; "" otherwise.
func protected(pid int) string {
	switch pid {
	case 1:
		return "PID 1"
	case os.Getpid():
		return "tokend itself"
	}
	// Ancestors change (a parent exits and this process is reparented),
	// so they are looked up each time; the chain is a few reads long.
	for p, seen := os.Getppid(), 0; p > 1 && seen < 64; seen++ {
		if p == pid {
			return "an ancestor of tokend"
		}
		proc, err := procfs.NewProc(p)
		if err != nil {
			break
		}
		st, err := proc.Stat()
		if err != nil {
			break
		}
		p = st.PPID
	}
	return ""
}

// processUIDs reads the real, effective, saved and file system uids of pid.
func processUIDs(pid int) ([4]uint64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return [4]uint64{}, fmt.Errorf("process %d: %w", pid, err)
	}
	st, err := p.NewStatus()
	if err != nil {
		return [4]uint64{}, fmt.Errorf("process %d: %w", pid, err)
	}
	return st.UIDs, nil
}

func allAre(uids [4]uint64, uid int) bool {
	for _, u := range uids {
		if u != uint64(uid) {
			return false
		}
	}
	return true
}

// checkQuota refuses a new lease to a user other than root who already
// holds the most leases one user may. Called with b.mu held.
func (b *Broker) checkQuota(uid int) error {
	if uid == 0 {
		return nil
	}
	// Ending leases count too: they keep their FIFO until nothing holds
	// it, which a user can put off for ever.
	held := 0
	for _, l := range b.leases {
		if l.UID == uid {
			held++
		}
	}
	if held >= b.opts.LeasesPerUser {
		return fmt.Errorf("uid %d holds %d leases, the most one user may hold (%d); end one first: %w", uid, held, b.opts.LeasesPerUser, ErrQuota)
	}
	return nil
}

// checkEnd refuses to let uid end a lease that is neither its own nor
// ended by root. Called with b.mu held.
func checkEnd(uid int, l *Lease) error {
	if uid == 0 || uid == l.UID {
		return nil
	}
	return fmt.Errorf("lease %s belongs to uid %d: only that user or root may end it: %w", l.ID, l.UID, ErrForbidden)
}

// fifoAccess is who may open a lease's FIFO. A nix build's (a root lease
// owned by its sandbox directory) is 0660 root:<the build's group>, the
// group its build users run as; any other is 0600 and owned by the lease's
// user, so that no other member of its group can read its tokens.
func fifoAccess(uid, gid int, ownerDir string) jobserver.FIFOOptions {
	if uid == 0 && ownerDir != "" {
		return jobserver.FIFOOptions{Mode: 0o660, GID: gid}
	}
	return jobserver.FIFOOptions{Mode: 0o600, GID: -1, UID: uid}
}

// fifoOwner is the uid that owns a lease's FIFO, as fifoAccess gives it.
func fifoOwner(uid int, ownerDir string) int {
	if opts := fifoAccess(uid, -1, ownerDir); opts.UID > 0 {
		return opts.UID
	}
	return os.Geteuid()
}
