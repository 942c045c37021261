package broker

import (
	"fmt"
	"maps"

	"github.com/tokend/tokend/api"
)

// Status reports the budget and every lease.
func (b *Broker) Status() api.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := api.Status{
		Budget: b.budget, BudgetReason: b.budgetReason, ReclaimedTotal: b.totals.reclaimed,
		InflatedTotal: b.totals.inflated, ReissuedTotal: b.totals.reissued, InvariantViolations: b.totals.violations, LastViolation: b.totals.lastViolation,
		Leases: []api.LeaseStatus{},
	}
	if b.memory != nil {
		m := *b.memory
		s.Memory = &m
	}
	for _, l := range b.sorted() {
		ls := b.leaseStatus(l)
		s.Leases = append(s.Leases, ls)
		s.Granted += ls.Granted
		if l.counted() {
			s.ActiveLeases++
		}
	}
	s.Allowance = max(s.Budget-s.ActiveLeases, 0)
	s.Debt = max(s.Granted-s.Allowance, 0)
	return s
}

func (b *Broker) leaseStatus(l *Lease) api.LeaseStatus {
	free, err := l.fifo.Free()
	if err != nil {
		free = l.lastFree
	}
	g := l.fifo.Granted()
	ls := api.LeaseStatus{
		Registration: l.Registration, FIFO: l.fifo.Path(),
		Granted: g, Free: min(free, g), Held: max(g-free, 0), Reissued: l.fifo.Reissued(), Owed: l.owed,
		Reclaimed: l.reclaimed, Inflated: l.inflated, Admitted: l.admitted, Hungry: l.hungry,
		Ending: l.ending, EndReason: l.endReason, State: l.state(), Asked: l.asked, Share: l.share,
		CountedJobs: l.jobs, First: l.ID == b.first,
	}
	if l.overReported {
		ls.OverShareSince = l.overSince
	}
	if m, ok := b.leaseMemory[l.ID]; ok {
		ls.Memory = &m
	}
	return ls
}

// Lease returns the lease with the given ID.
func (b *Broker) Lease(id string) (api.LeaseStatus, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.leases[id]
	if !ok {
		return api.LeaseStatus{}, fmt.Errorf("lease %s: %w", id, ErrNotFound)
	}
	return b.leaseStatus(l), nil
}

// SetMemory publishes the memory controller's view for Status.
func (b *Broker) SetMemory(m api.MemoryStatus, leases map[string]api.LeaseMemory) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.memory = &m
	b.leaseMemory = maps.Clone(leases)
	// New leases the controller has now sized may be admitted.
	b.pass()
}
