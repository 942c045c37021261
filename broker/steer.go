package broker

import (
	"fmt"
	"maps"
	"time"

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
	// Owns tells whether dir is a group Make made: a saved lease naming
	// any other as its own is refused.
	Owns(dir string) bool
}

// Steer sets the budget tokend decides for itself, with the reason shown
// in status and logs. It takes effect unless an operator or the
// configuration pins the budget; it is kept either way and applies as soon
// as the pin is lifted.
func (b *Broker) Steer(n int, reason string) error {
	if n < 1 || n > jobserver.MaxTokens {
		return fmt.Errorf("steered budget %d is outside 1..%d", n, jobserver.MaxTokens)
	}
	if reason == "" {
		return fmt.Errorf("steered budget %d needs a reason", n)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.steered, b.steerReason = n, reason
	b.applyBudget()
	b.pass()
	return nil
}

// MemoryStatus is what the memory controller sees and decided, for status.
// Byte counts are bytes; rates are shares of time from 0 to 1.
type MemoryStatus struct {
	// Domain is "host" or the memory cgroup's directory.
	Domain       string `json:"domain"`
	PressureFile string `json:"pressure_file"`
	// Limit is the domain's size: its cgroup limit, else the host's memory.
	Limit      uint64 `json:"limit"`
	WorkingSet uint64 `json:"working_set"`
	// Headroom is what the domain can still take: the smaller of the
	// host's MemAvailable and the cgroup's limit less its working set.
	Headroom uint64 `json:"headroom"`
	Reserve  uint64 `json:"reserve"`
	// Growth is what running jobs are still expected to grow by.
	Growth uint64 `json:"growth"`
	// NextJob is the expected peak of one more job.
	NextJob uint64 `json:"next_job"`
	// SoftCap is the working set at which pressure last appeared, relaxing
	// slowly; 0 when none holds.
	SoftCap      uint64  `json:"soft_cap,omitempty"`
	PressureSome float64 `json:"pressure_some"`
	PressureFull float64 `json:"pressure_full"`
	// PressureWindow is the interval the pressure rates are measured over.
	PressureWindow time.Duration `json:"pressure_window_ns"`
	// Jobs is how many jobs run: implicit slots of admitted leases plus
	// tokens held.
	Jobs int `json:"jobs"`
	// Fit is how many jobs memory allows now, Jobs included.
	Fit    int `json:"fit"`
	CPUCap int `json:"cpu_cap"`
	// Target is the budget the controller wants; it is the budget unless
	// an operator or the configuration pins it.
	Target int    `json:"target"`
	Reason string `json:"reason"`
	// Detail is the arithmetic behind the last decision.
	Detail  string    `json:"detail"`
	Changed time.Time `json:"changed"`
	Updated time.Time `json:"updated"`
}

// LeaseMemory is the memory controller's view of one lease.
type LeaseMemory struct {
	// Procs is how many of the lease's processes were sampled.
	Procs int `json:"procs"`
	// RSS sums the resident memory of the lease's processes; Peak is the
	// largest peak of any one of them so far.
	RSS  uint64 `json:"rss"`
	Peak uint64 `json:"peak"`
	// Jobs is the lease's implicit slot (once admitted) plus tokens held.
	Jobs int `json:"jobs"`
	// Growth is what its running jobs are still expected to grow by.
	Growth uint64 `json:"growth"`
	// Estimates are the expected peaks of one job, per job class
	// ("compile", "link").
	Estimates map[string]uint64 `json:"estimates"`
	// Source tells where the compile estimate comes from: "observed" in
	// this lease, "history" of past leases of the same name, or "default".
	Source string `json:"source"`
	Frozen bool   `json:"frozen,omitempty"`
}

// SetMemory publishes the memory controller's view for Status.
func (b *Broker) SetMemory(m MemoryStatus, leases map[string]LeaseMemory) {
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
