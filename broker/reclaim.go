package broker

import (
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/jobserver"
)

// ownerCheckInterval is how often the broker looks for leases whose owner
// is gone. It is the fallback for an owner that died without ending its
// lease (a killed tokenctl, a nix build whose hook cannot end it), so a
// second is soon enough, and reading every owner's /proc entry on every
// tick was most of tokend's own CPU.
const ownerCheckInterval = time.Second

// endOrphans ends the leases whose owner is gone, at most once per
// ownerCheckInterval.
func (b *Broker) endOrphans(now time.Time) {
	if now.Sub(b.ownersChecked) < ownerCheckInterval {
		return
	}
	b.ownersChecked = now
	for _, l := range b.leases {
		if l.ending {
			continue
		}
		if why := ownerGone(l.Owner); why != "" {
			b.end(l, why)
		}
	}
}

// scanRequest is a lease to look for holders of, with the open count seen
// before looking, so an open during the scan voids the answer.
type scanRequest struct {
	lease *Lease
	opens int
}

func (b *Broker) dueScans() []scanRequest {
	var due []scanRequest
	now := time.Now()
	for _, l := range b.leases {
		if l.removing || l.closeSeen.IsZero() || now.Sub(l.closeSeen) < b.opts.Grace {
			continue
		}
		due = append(due, scanRequest{lease: l, opens: l.opens})
	}
	return due
}

// reclaim writes off the tokens of leases that nobody holds open any more,
// from the answer of a holder scan (startScan): whatever they were granted
// and is not in the FIFO will never come back.
func (b *Broker) reclaim(r scanResult) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.scanSince = time.Time{}
	if r.err != nil {
		b.log.Error("cannot look for jobserver holders", "error", r.err)
		return
	}
	for _, s := range r.due {
		if s.lease.opens != s.opens {
			continue // a client came while we looked; look again after it closes
		}
		b.settle(s.lease, r.counts[s.lease.inode] > 0)
	}
	// Saved at once, not at the end of the next tick: a tokend killed
	// before then restarted with the tokens release took out of the FIFO
	// still counted as granted, and wrote them off as leaked.
	b.checkpoint()
}

// settleDue settles the leases due for a look at their holders whose FIFO
// no client ever opened (a nix build without the setup hook, as most
// small derivations are), and returns the others, for a scan of /proc.
// That scan reads every process's descriptors; nix starting and ending
// 125 short builds a second (BenchmarkHookLatency) kept one running all
// the time, 15% of tokend's time. A due lease waited out Options.Grace
// since it ended, so an open just before it ended has been seen.
func (b *Broker) settleDue(due []scanRequest) []scanRequest {
	var scan []scanRequest
	for _, s := range due {
		if !s.lease.neverOpened() {
			scan = append(scan, s)
			continue
		}
		b.settle(s.lease, false)
	}
	if len(scan) < len(due) {
		b.checkpoint()
	}
	return scan
}

// settle acts on what was found of l's holders: while it is held, an
// ended lease is looked at again later; once nobody holds it, an ended
// lease is released and whatever l's clients did not give back is
// written off.
func (b *Broker) settle(l *Lease, held bool) {
	l.closeSeen = time.Time{}
	if held {
		if l.ending {
			l.closeSeen = time.Now() // keep looking until the last one is gone
		}
		return
	}
	if l.ending {
		b.release(l)
	}
	b.writeOffLeaked(l)
}

// release empties an ended lease nobody holds any more and marks it for
// removal: nothing it owes can come back but what is in its FIFO.
func (b *Broker) release(l *Lease) {
	l.owed = 0
	b.collector.Stop(l.fifo)
	b.recover(l)
	if _, err := l.fifo.Take(jobserver.MaxTokens); err != nil {
		b.log.Error("cannot take tokens back", "lease", l.ID, "error", err)
	}
	l.removing = true
}

// writeOffLeaked forgets the tokens granted to l that are not in its FIFO,
// once nobody holds it: its clients died holding them.
func (b *Broker) writeOffLeaked(l *Lease) {
	b.recover(l)
	if n := l.fifo.DropReissued(); n > 0 {
		b.dirty = true
		b.log.Info("the clients that held reissued tokens are gone; forgetting them", "lease", l.ID, "name", l.Name, "tokens", n)
	}
	free, err := l.fifo.Free()
	if err != nil {
		b.log.Error("cannot count tokens", "lease", l.ID, "error", err)
		return
	}
	if free > l.fifo.Granted() {
		return // inflated: the pass takes the excess out first
	}
	leaked := l.fifo.Granted() - free
	if leaked == 0 {
		return
	}
	if err := l.fifo.Forget(leaked); err != nil {
		b.log.Error("cannot write off leaked tokens", "lease", l.ID, "error", err)
		return
	}
	l.reclaimed += leaked
	b.totals.reclaimed += leaked
	b.dirty = true
	b.log.Info("reclaimed leaked tokens", "lease", l.ID, "name", l.Name, "tokens", leaked)
	b.Record(api.Event{Kind: api.EventReclaim, Lease: l.ID, Name: l.Name, Tokens: leaked})
}

// removeEnded deletes ended leases once nothing holds them.
//
// The state file forgets them before their files go. Removing them takes
// a while (the holder's answer, the cgroup), and a tokend killed in
// between used to restart with leases whose FIFO was gone ("lease lost
// its fifo"), and wrote off as leaked their last saved grant, tokens
// taken back since included. Now it finds FIFOs that no lease owns,
// which it removes at its start.
func (b *Broker) removeEnded() {
	var gone []*Lease
	for id, l := range b.leases {
		if !l.removing {
			continue
		}
		if n := l.fifo.Granted(); n != 0 {
			b.log.Error("ended lease still counts tokens; writing them off", "lease", id, "tokens", n)
			l.fifo.Forget(n)
			b.totals.reclaimed += n
		}
		b.untrack(l)
		gone = append(gone, l)
		b.log.Info("lease ended", "lease", id, "name", l.Name, "reason", l.endReason, "reclaimed", l.reclaimed)
	}
	if len(gone) == 0 {
		return
	}
	b.dirty = true
	b.checkpoint()
	for _, l := range gone {
		b.removeFiles(l)
		b.removeCgroup(l)
	}
	b.announce()
}
