package broker

import (
	"time"

	"github.com/tokend/tokend/jobserver"
)

// adopt takes over the leases of the state file and cleans stale FIFOs.
func (b *Broker) adopt() error {
	st, err := loadState(b.run)
	if err != nil {
		return err
	}
	b.totals.reclaimed, b.totals.inflated, b.totals.reissued = st.ReclaimedTotal, st.InflatedTotal, st.ReissuedTotal
	b.sources.operator = st.OperatorBudget
	b.applyBudget()
	for _, s := range b.setAsideBad(st.Leases) {
		if err := b.adoptLease(s); err != nil {
			return err
		}
	}
	return b.removeStale()
}

// adoptLease takes over one lease of the state file as it was saved.
func (b *Broker) adoptLease(s savedLease) error {
	// Opened with what its clients hold beyond its grant, which is then
	// reissued again: the FIFO counts both.
	f, err := jobserver.OpenOwnedBy(b.run.fifoPath(s.ID), s.Granted+s.Reissued, fifoOwner(s.UID, s.Owner.Dir))
	if err == nil {
		if err = f.Reissue(s.Reissued); err != nil {
			f.Close()
		}
	}
	if err != nil {
		// Its clients hold whatever they hold; the tokens are lost to
		// the budget either way, so count them and go on.
		b.log.Warn("lease lost its fifo; writing off its tokens", "lease", s.ID, "name", s.Name, "granted", s.Granted, "error", err)
		b.totals.reclaimed += s.Granted
		b.dirty = true
		return nil
	}
	l := &Lease{
		Registration: s.Registration, fifo: f, reclaimed: s.Reclaimed, inflated: s.Inflated,
		admitted: s.Admitted, ending: s.Ending, endReason: s.EndReason, joined: s.Joined, asked: s.Asked,
	}
	if s.Gate {
		if l.gate, err = openGate(gatePath(b.run.path, s.ID)); err != nil {
			// The build reads a stamp that no longer moves and goes on
			// without waiting; admit it so it is counted as it runs.
			b.log.Warn("lease lost its gate; admitting it", "lease", s.ID, "name", s.Name, "error", err)
			l.admitted = true
		}
	}
	// Held again: a holder started since has it from its own open, one
	// that ran on already holds it and lets the copy go.
	b.hold(l)
	if err := b.track(l); err != nil {
		f.Close()
		return err
	}
	// A holder may have closed while nobody watched.
	l.closeSeen = time.Now()
	free, _ := f.Free()
	b.log.Info("lease adopted", "lease", l.ID, "name", l.Name, "granted", s.Granted, "free", free)
	return nil
}
