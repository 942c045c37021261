package broker

import (
	"fmt"
	"runtime"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/jobserver"
)

// budgetSources are everyone who may want a budget, and what each wants.
// An operator's pin wins over the configuration, which wins over what
// tokend's memory controller steers, which wins over the CPU count.
type budgetSources struct {
	operator    int // non-zero while an operator has pinned the budget
	configured  int // non-zero while the configuration fixes the budget
	steered     int // what tokend decides (Steer); 0 until it does
	steerReason string
}

// decide is the budget the sources give, and why.
func (s budgetSources) decide() (int, string) {
	switch {
	case s.operator > 0:
		return s.operator, "operator"
	case s.configured > 0:
		return s.configured, "config"
	case s.steered > 0:
		return s.steered, s.steerReason
	}
	return runtime.NumCPU(), "cpu count"
}

// SetBudget pins the budget to n for an operator; n = 0 unpins it.
func (b *Broker) SetBudget(n int) error {
	if n < 0 || n > jobserver.MaxTokens {
		return fmt.Errorf("budget %d is outside 0..%d (0 hands the budget back to tokend)", n, jobserver.MaxTokens)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sources.operator = n
	b.applyBudget()
	b.dirty = true
	b.pass()
	return nil
}

// Configure changes the configured budget (0: steered, else the CPU
// count), as a reload of the configuration does. An operator's pinned
// budget still wins.
func (b *Broker) Configure(budget int) error {
	if budget < 0 || budget > jobserver.MaxTokens {
		return fmt.Errorf("budget %d is outside 0..%d", budget, jobserver.MaxTokens)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sources.configured = budget
	b.applyBudget()
	b.pass()
	return nil
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
	b.sources.steered, b.sources.steerReason = n, reason
	b.applyBudget()
	b.pass()
	if b.sources.operator > 0 || b.sources.configured > 0 {
		pinnedBy = b.budgetReason
	}
	return b.budget, pinnedBy, nil
}

// applyBudget makes the budget what the sources decide, logging a change.
func (b *Broker) applyBudget() {
	n, reason := b.sources.decide()
	if n != b.budget || reason != b.budgetReason {
		b.log.Info("budget changed", "from", b.budget, "to", n, "reason", reason)
		b.Record(api.Event{Kind: api.EventBudget, From: b.budget, Budget: n, Reason: reason})
	}
	b.budget, b.budgetReason = n, reason
}

// ServeFirst makes the share of lease id be served before the others', or
// no lease's for id "": the memory controller's way of making one build
// finish first where memory runs the builds' links only one after the
// other. The others keep their implicit slots, so each still makes
// progress. why says why, for the log; a change runs a pass.
func (b *Broker) ServeFirst(id, why string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if id == b.first {
		return
	}
	b.first = id
	switch l, ok := b.leases[id]; {
	case id == "":
		b.log.Info("no lease served first any more")
	case ok:
		b.log.Info("lease served first", "lease", id, "name", l.Name, "why", why)
	default:
		b.log.Info("lease served first", "lease", id, "why", why)
	}
	b.pass()
}
