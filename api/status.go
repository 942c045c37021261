package api

import "time"

// Status is the answer to GET /v1/status: the budget and every lease.
type Status struct {
	Budget       int    `json:"budget"`
	BudgetReason string `json:"budget_reason"`
	// ActiveLeases counts the leases whose implicit slot is counted:
	// running, or waiting for admission.
	ActiveLeases int `json:"active_leases"`
	// Allowance is the budget less one implicit slot per active lease:
	// the most tokens that may be handed out.
	Allowance int `json:"allowance"`
	Granted   int `json:"granted"`
	// Debt is how many granted tokens are over the allowance after the
	// budget shrank, to be kept as clients return them.
	Debt           int `json:"debt"`
	ReclaimedTotal int `json:"reclaimed_total"`
	InflatedTotal  int `json:"inflated_total"`
	// ReissuedTotal counts the tokens leases held beyond the jobs they
	// ran, above their share while others waited, that tokend wrote off
	// and handed to the waiting leases.
	ReissuedTotal       int           `json:"reissued_total"`
	InvariantViolations int           `json:"invariant_violations"`
	LastViolation       string        `json:"last_violation,omitempty"`
	Leases              []LeaseStatus `json:"leases"`
	// Memory is the memory controller's view; nil when none runs.
	Memory *MemoryStatus `json:"memory,omitempty"`
}

// LeaseStatus is one lease in Status, and the answer to GET
// /v1/leases/{id}.
type LeaseStatus struct {
	Registration
	// FIFO is the lease's jobserver FIFO as tokend sees it.
	FIFO    string `json:"fifo"`
	Granted int    `json:"granted"`
	Free    int    `json:"free"`
	Held    int    `json:"held"`
	// Reissued is how many tokens the lease's clients hold beyond
	// Granted: held without running jobs while others waited, written off
	// and handed to them. What its clients return is swallowed until it
	// is 0; jobs they run on them count against no budget.
	Reissued  int  `json:"reissued,omitempty"`
	Owed      int  `json:"owed"`
	Reclaimed int  `json:"reclaimed"`
	Inflated  int  `json:"inflated"`
	Admitted  bool `json:"admitted"`
	// State is what the build does, as far as tokend can tell: one of
	// the State constants.
	State string `json:"state"`
	// Asked is when a nix build first read its gate, asking for its
	// implicit slot; a waiting build has waited since then.
	Asked     time.Time `json:"asked,omitzero"`
	Ending    bool      `json:"ending,omitempty"`
	EndReason string    `json:"end_reason,omitempty"`
	// Hungry: every token granted was held at the last pass, so the build
	// may want more.
	Hungry bool `json:"hungry,omitempty"`
	// Share is how many tokens the lease should have now: its fair share
	// of the allowance, or what it uses when that is less.
	Share int `json:"share"`
	// First: the lease's share is served before the others' (the memory
	// controller's choice, where memory runs the builds' links only one
	// after the other and this build's are the smallest).
	First bool `json:"first,omitempty"`
	// OverShareSince is when the lease came to hold more than its share
	// while another lease waited, once that has lasted the share grace;
	// zero otherwise. Its clients hold those tokens: they come back as its
	// jobs end.
	OverShareSince time.Time `json:"over_share_since,omitzero"`
	// CountedJobs is how many jobs its clients ran at the last count:
	// tokend counts them only while the lease is above its share and
	// another waits, to tell tokens that run jobs from tokens kept idle.
	CountedJobs int `json:"counted_jobs,omitempty"`
	// Memory is the memory controller's view of the lease.
	Memory *LeaseMemory `json:"memory,omitempty"`
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
	// Outside is the domain's working set that no lease's process
	// accounts for (other programs, the kernel, the page cache in use);
	// OutsideGrowth is what it is expected to grow by, counted in Growth.
	Outside       uint64 `json:"outside"`
	OutsideGrowth uint64 `json:"outside_growth,omitempty"`
	// OOMKills counts the lease processes the kernel's OOM killer killed
	// since tokend started, OOMKillsOutside the kills of other processes
	// it saw. OOMSource tells how it sees them: "kernel log" (each kill's
	// own report) or "counters" (the memory cgroups' kill counts).
	OOMKills        int    `json:"oom_kills"`
	OOMKillsOutside int    `json:"oom_kills_outside"`
	OOMSource       string `json:"oom_source"`
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
	// Estimates are the expected peaks of one job of each class.
	Estimates JobEstimates `json:"estimates"`
	// Source tells where the compile estimate comes from: one of the
	// Estimate constants.
	Source string `json:"source"`
	Frozen bool   `json:"frozen,omitempty"`
	// OOMKills counts the lease's processes the OOM killer killed;
	// OOMKilled is the largest size one of its jobs had reached when it
	// was killed, which the next lease of its name expects.
	OOMKills  int    `json:"oom_kills"`
	OOMKilled uint64 `json:"oom_killed,omitempty"`
}

// JobEstimates are the expected peaks of one job, per job class, in bytes.
type JobEstimates struct {
	Compile uint64 `json:"compile"`
	// Link is for linkers and link-time optimisers.
	Link uint64 `json:"link"`
}

// Where an estimate comes from, as LeaseMemory.Source shows it.
const (
	EstimateObserved = "observed" // this lease's own finished jobs
	EstimateHistory  = "history"  // the same user's past leases of the same name
	EstimateRun      = "run"      // the jobs of the same user's other live leases, finished or growing
	EstimateFeatures = "features" // the default, scaled for a build that requires big-parallel or big-memory
	EstimateDefault  = "default"  // the configured job_estimate
)

// Lease states, as LeaseStatus.State shows them.
const (
	// StateRunning: admitted; its jobs run on its slot and tokens.
	StateRunning = "running"
	// StateWaiting: it waits for admission (tokenctl run, or a nix build
	// whose setup hook reads its gate).
	StateWaiting = "waiting"
	// StateStarting: a nix build that joined its FIFO and has not asked
	// for a slot yet (it is before its build phase).
	StateStarting = "starting"
	// StateNotJoined: a nix build that never opened its FIFO: built
	// without the setup hook, it runs its own -j outside the budget.
	StateNotJoined = "not joined"
	// StateEnding: ended; its tokens come back as its clients let go.
	StateEnding = "ending"
)
