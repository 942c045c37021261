package broker

import (
	"fmt"
	"maps"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/jobserver"
)

// LeaseCgroups makes a cgroup per lease for commands that ask for one
// (tokenctl run), so that a memory controller can freeze a build without
// touching anything else. The broker makes the group when the lease is
// registered and hands the path to the client, which starts its command
// inside; it removes the group when the lease is gone.
type LeaseCgroups interface {
	// Make creates the cgroup of lease id and returns its directory.
	Make(id string) (string, error)
	// Remove removes a directory Make returned. It never kills: a group
	// still holding processes is removed once they have left.
	Remove(dir string) error
}

// Steer sets the budget tokend decides for itself, with the reason shown
// in status and logs. It takes effect unless an operator or the
// configuration pins the budget; it is kept either way and applies as soon
// as the pin is lifted. It returns the budget in effect and, while a pin
// holds, who pinned it ("operator" or "config"), so that the caller never
// reports a change that did not happen.
func (b *Broker) Steer(n int, reason string) (budget int, pinnedBy string, err error) {
	if n < 1 || n > jobserver.MaxTokens {
		return 0, "", fmt.Errorf("steered budget %d is outside 1..%d", n, jobserver.MaxTokens)
	}
	if reason == "" {
		return 0, "", fmt.Errorf("steered budget %d needs a reason", n)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.steered, b.steerReason = n, reason
	b.applyBudget()
	b.pass()
	if b.operatorBudget > 0 || b.opts.Budget > 0 {
		pinnedBy = b.budgetReason
	}
	return b.budget, pinnedBy, nil
}

// SetMemory publishes the memory controller's view for Status.
func (b *Broker) SetMemory(m api.MemoryStatus, leases map[string]api.LeaseMemory) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.memory = &m
	b.leaseMemory = maps.Clone(leases)
}

// removeCgroup removes the cgroup made for l, if one was.
func (b *Broker) removeCgroup(l *Lease) {
	if !l.ownCgroup || b.opts.Cgroups == nil {
		return
	}
	if err := b.opts.Cgroups.Remove(l.Cgroup); err != nil {
		b.log.Warn("cannot remove the lease's cgroup", "lease", l.ID, "cgroup", l.Cgroup, "error", err)
	}
}
