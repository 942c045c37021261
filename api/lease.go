package api

import "time"

// Owner is what a lease lives as long as: a process, a directory (a nix
// build's sandbox), or both.
type Owner struct {
	PID int `json:"pid,omitempty"`
	// Start is the process's start time in clock ticks since boot, so a
	// reused PID is not mistaken for the owner.
	Start uint64 `json:"start,omitempty"`
	Dir   string `json:"dir,omitempty"`
}

// Registration is a lease as tokend registered it. It is fixed when the
// lease is made and never changes: status shows it, and tokend's state
// file keeps it whole, so a restarted tokend re-adopts every lease as it
// was registered.
type Registration struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Owner   Owner     `json:"owner"`
	// UID registered the lease; GID is its FIFO's group.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// Features are the build's nix requiredSystemFeatures, for the
	// operator's eye.
	Features []string `json:"features,omitempty"`
	// Cgroup is the cgroup v2 directory the build runs in: made for the
	// lease (OwnCgroup) or named at registration; "" when none is known.
	Cgroup    string `json:"cgroup,omitempty"`
	OwnCgroup bool   `json:"own_cgroup,omitempty"`
	// Gate: the build waits for admission on its own side, reading a gate
	// file tokend keeps (a nix build).
	Gate bool `json:"gate,omitempty"`
}

// RegisterRequest is the body of POST /v1/leases.
type RegisterRequest struct {
	Name     string   `json:"name"`
	OwnerPID int      `json:"owner_pid,omitempty"`
	OwnerDir string   `json:"owner_dir,omitempty"`
	GID      *int     `json:"gid,omitempty"` // root only; others get their own group
	Features []string `json:"features,omitempty"`
	// Wait asks for admission before the build starts (tokenctl run);
	// GET the lease until it is admitted.
	Wait bool `json:"wait,omitempty"`
	// NewCgroup asks tokend for a cgroup v2 group of the lease's own to
	// start the command in (tokenctl run), so it can be frozen alone.
	NewCgroup bool `json:"new_cgroup,omitempty"`
	// Cgroup names the existing cgroup v2 directory the build runs in (a
	// nix build with use-cgroups); root only.
	Cgroup string `json:"cgroup,omitempty"`
	// Gate asks for a gate file: the build already runs (a nix build) and
	// waits for admission on its own side by reading the gate.
	Gate bool `json:"gate,omitempty"`
}

// Registered is the answer to POST /v1/leases.
type Registered struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	FIFO string `json:"fifo"`
	// Cgroup is the cgroup the lease's build runs in: the group made for
	// it when NewCgroup asked for one and tokend could make it (start the
	// command inside), or the one the request named.
	Cgroup string `json:"cgroup,omitempty"`
	// Gate is the lease's gate file, when the request asked for one: the
	// nix hook maps it into the sandbox, where the setup hook reads it.
	Gate string `json:"gate,omitempty"`
	// OOMScoreAdj is the oom_score_adj the build's processes should take
	// (0: leave them alone).
	OOMScoreAdj int `json:"oom_score_adj,omitempty"`
}

// BudgetRequest is the body of PUT /v1/budget. Zero hands the budget back
// to tokend.
type BudgetRequest struct {
	Tokens *int `json:"tokens"`
}
