package broker

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/fileid"
	"github.com/tokend/tokend/jobserver"
)

// LeaseRequest asks for a new lease.
type LeaseRequest struct {
	Name     string
	Owner    api.Owner
	UID, GID int
	Features []string
	// Wait asks for admission before the build starts, so its implicit
	// slot does not push the host over the budget. Without it the lease
	// is admitted at once: for builds that already run.
	Wait bool
	// NewCgroup asks for a cgroup of the lease's own, for a command not
	// started yet (tokenctl run); made only if Options.Cgroups is set.
	NewCgroup bool
	// Cgroup is the existing cgroup v2 directory the build runs in (a nix
	// build with use-cgroups); it may appear only after registration.
	Cgroup string
	// Gate asks for a gate file (see gate): the build is already running
	// and waits for admission on its own side, by reading the gate, before
	// it starts parallel jobs. Until it first reads the gate it holds no
	// slot. A nix build.
	Gate bool
}

// ErrNotFound means no lease has the given ID.
var ErrNotFound = errors.New("no such lease")

// Register creates a lease with its own FIFO. The lease starts with no
// tokens; the next pass gives it its share, so registering never waits.
func (b *Broker) Register(req LeaseRequest) (*Lease, error) {
	owner, err := checkRequest(req)
	if err != nil {
		return nil, err
	}
	reg := api.Registration{
		ID: newLeaseID(), Name: req.Name, Created: time.Now(), Owner: owner,
		UID: req.UID, GID: req.GID, Features: req.Features, Cgroup: req.Cgroup, Gate: req.Gate,
	}
	f, err := jobserver.Create(b.run.fifoPath(reg.ID), fifoAccess(req.UID, req.GID, req.Owner.Dir))
	if err != nil {
		return nil, err
	}
	l := &Lease{Registration: reg, fifo: f, admitted: !req.Wait && !req.Gate, seenSinceMade: true}
	if req.Gate {
		if l.gate, err = createGate(gatePath(b.run.path, reg.ID), req.GID); err == nil {
			err = l.gate.write(false, b.opts.OOMScoreAdj, l.Created)
		}
		if err != nil {
			b.removeFiles(l)
			return nil, err
		}
	}
	// Held elsewhere before any token goes in (after the state is saved
	// below).
	b.hold(l)
	if req.NewCgroup && b.opts.Cgroups != nil {
		// A build without a cgroup still runs; it only cannot be frozen.
		if dir, err := b.opts.Cgroups.Make(reg.ID); err != nil {
			b.log.Warn("cannot make the lease's cgroup; its command runs without one", "lease", l.ID, "name", req.Name, "error", err)
		} else {
			l.Cgroup, l.OwnCgroup = dir, true
		}
	}
	b.mu.Lock()
	err = b.checkQuota(req.UID)
	if err == nil {
		err = b.track(l)
	}
	if err == nil {
		// Saved before the caller hears of the lease, so a broker killed
		// right after still knows the FIFO a build may be using.
		err = saveState(b.run, b.snapshot(nil))
		if err != nil {
			b.untrack(l)
		} else {
			// The whole state is saved: the pass need not save it again
			// unless it moves tokens.
			b.dirty = false
			b.Record(api.Event{Kind: api.EventStart, Lease: l.ID, Name: l.Name}) // before its admission, which the pass may record
			b.pass()
		}
	}
	b.mu.Unlock()
	if err != nil {
		b.removeFiles(l)
		b.removeCgroup(l)
		return nil, err
	}
	b.log.Info("lease started", "lease", l.ID, "name", l.Name, "uid", l.UID, "owner_pid", l.Owner.PID, "owner_dir", l.Owner.Dir, "cgroup", l.Cgroup)
	return l, nil
}

// checkRequest refuses a request that names no usable owner or cgroup,
// and returns its owner with the owner process's start time.
func checkRequest(req LeaseRequest) (api.Owner, error) {
	owner := req.Owner
	if err := checkName(req.Name); err != nil {
		return owner, err
	}
	switch {
	case owner.PID <= 0 && owner.Dir == "":
		return owner, errors.New("lease needs an owner: a process ID or a directory whose end ends the lease")
	case owner.Dir != "" && !filepath.IsAbs(owner.Dir):
		return owner, fmt.Errorf("owner directory %q is not an absolute path", owner.Dir)
	case req.Cgroup != "" && (req.NewCgroup || !filepath.IsAbs(req.Cgroup)):
		return owner, fmt.Errorf("cgroup %q: want an absolute path, and not together with a new cgroup", req.Cgroup)
	}
	if err := checkOwner(req.UID, req); err != nil {
		return owner, err
	}
	if owner.PID > 0 {
		start, err := processStart(owner.PID)
		if err != nil {
			return owner, fmt.Errorf("owner process %d: %w", owner.PID, err)
		}
		owner.Start = start
	}
	if why := ownerGone(owner); why != "" {
		return owner, errors.New(why)
	}
	return owner, nil
}

// newLeaseID is 12 random hex digits.
func newLeaseID() string {
	var raw [6]byte
	rand.Read(raw[:])
	return hex.EncodeToString(raw[:])
}

// End ends a lease: it gets no more tokens, its free tokens go back to the
// budget at once, and the rest when its clients return them or are gone.
// uid is who asks: only the lease's own user or root may end it.
func (b *Broker) End(uid int, id, reason string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.leases[id]
	if !ok {
		return fmt.Errorf("end lease %s: %w", id, ErrNotFound)
	}
	if err := checkEnd(uid, l); err != nil {
		return err
	}
	b.end(l, reason)
	b.pass()
	return nil
}

func (b *Broker) end(l *Lease, reason string) {
	if l.ending {
		return
	}
	l.ending, l.endReason = true, reason
	l.closeSeen = time.Now()
	b.dirty = true
	b.log.Info("lease ending", "lease", l.ID, "name", l.Name, "reason", reason)
	b.Record(api.Event{Kind: api.EventEnd, Lease: l.ID, Name: l.Name, Reason: reason})
}

// track makes l known to the broker and watches its files.
func (b *Broker) track(l *Lease) error {
	id, err := fileid.Of(l.fifo.Path())
	if err != nil {
		return fmt.Errorf("lease %s: %w", l.ID, err)
	}
	if err := b.watchFiles(l); err != nil {
		return err
	}
	l.inode = id
	b.leases[l.ID] = l
	return nil
}

// untrack forgets l and stops watching its files.
func (b *Broker) untrack(l *Lease) {
	b.unwatchFiles(l)
	delete(b.leases, l.ID)
}

// sorted lists leases oldest first, so passes are deterministic.
func (b *Broker) sorted() []*Lease {
	out := make([]*Lease, 0, len(b.leases))
	for _, l := range b.leases {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out
}
