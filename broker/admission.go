package broker

import (
	"context"
	"time"

	"github.com/tokend/tokend/api"
)

// admit lets waiting leases start, oldest first, while the implicit slots
// of the admitted leases and the tokens handed out leave room for one more.
// Allowance already counts waiting leases, so their room is kept free for
// them as tokens come back.
func (b *Broker) admit(leases []*Lease, granted int) {
	room := b.budget - granted
	for _, l := range leases {
		if l.admitted && !l.ending {
			room--
		}
	}
	now := time.Now()
	for _, l := range leases {
		if l.admitted || l.ending || !l.asking() || room < 1 || b.unsized(l, now) {
			continue
		}
		l.admitted = true
		room--
		b.dirty = true
		b.announce()
		since := l.Created
		if l.gate != nil {
			since = l.asked
			if err := l.gate.write(true, b.opts.OOMScoreAdj, time.Now()); err != nil {
				b.log.Error("cannot open the gate of an admitted lease; its build goes on once it sees the stamp stop", "lease", l.ID, "error", err)
			}
		}
		waited := time.Since(since)
		b.log.Info("lease admitted", "lease", l.ID, "name", l.Name, "waited", waited.Round(time.Millisecond))
		b.Record(api.Event{Kind: api.EventAdmit, Lease: l.ID, Name: l.Name, Wait: waited})
	}
}

// beat rewrites the gate of every build that waits in its sandbox, so it
// can tell a tokend that is alive and has no room from one that is gone.
func (b *Broker) beat() {
	now := time.Now()
	for _, l := range b.leases {
		if l.gate == nil || l.admitted || l.ending {
			continue
		}
		if err := l.gate.write(false, b.opts.OOMScoreAdj, now); err != nil {
			b.log.Error("cannot write a waiting build's gate; it will go on without tokend", "lease", l.ID, "error", err)
		}
	}
}

// announce wakes everyone waiting in AwaitAdmission to look again.
func (b *Broker) announce() {
	close(b.admissions)
	b.admissions = make(chan struct{})
}

// AwaitAdmission waits until the lease with the given ID is admitted, or
// ctx ends, and returns the lease as it then is.
func (b *Broker) AwaitAdmission(ctx context.Context, id string) (api.LeaseStatus, error) {
	for {
		b.mu.Lock()
		l, ok := b.leases[id]
		admitted, changed := ok && l.admitted, b.admissions
		b.mu.Unlock()
		if !ok || admitted {
			return b.Lease(id)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return b.Lease(id)
		}
	}
}

// sizeWait bounds how long a new lease waits for the memory controller
// to size its jobs before it is admitted: the controller looks within
// milliseconds of a lease's start (the start wakes it), and one that
// cannot read memory must not hold builds back.
const sizeWait = time.Second

// unsized tells whether l still waits for the memory controller's first
// look at it. Admitted before, its first tokens (in its FIFO as it
// starts, for ninja) would come from a budget decided before it existed,
// for jobs of the default size, while its history may say they take
// 500 MiB each: a lease started on an idle host got the CPU cap's tokens,
// its make took them, and the jobs were OOM-killed before the
// controller's next tick lowered the budget (TestRetryOOMCompletesTheBuild
// failed so, in 1 CI run of 3).
func (b *Broker) unsized(l *Lease, now time.Time) bool {
	if b.memory == nil || now.Sub(l.Created) >= sizeWait {
		return false
	}
	_, seen := b.leaseMemory[l.ID]
	return !seen
}
