package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/atomicfile"
	"github.com/tokend/tokend/jobserver"
)

// stateVersion changes when the state file's meaning does; a file of
// another version is refused rather than misread.
const stateVersion = 1

// savedState is what a restarted broker needs to re-adopt running builds.
// The FIFOs themselves hold the free tokens; the state holds what was
// granted, which the FIFOs cannot tell.
type savedState struct {
	Version        int          `json:"version"`
	OperatorBudget int          `json:"operator_budget,omitempty"`
	ReclaimedTotal int          `json:"reclaimed_total"`
	InflatedTotal  int          `json:"inflated_total"`
	ReissuedTotal  int          `json:"reissued_total,omitempty"`
	Leases         []savedLease `json:"leases"`
}

// savedLease is a lease's registration, whole, and its accounting.
type savedLease struct {
	api.Registration
	Granted int `json:"granted"`
	// Reissued is what its clients hold beyond Granted (see Reissue).
	Reissued  int       `json:"reissued,omitempty"`
	Reclaimed int       `json:"reclaimed"`
	Inflated  int       `json:"inflated"`
	Admitted  bool      `json:"admitted"`
	Ending    bool      `json:"ending,omitempty"`
	EndReason string    `json:"end_reason,omitempty"`
	Joined    bool      `json:"joined,omitempty"`
	Asked     time.Time `json:"asked,omitzero"`
}

// snapshot is the state to save, counting extra tokens as granted to the
// leases they are keyed by.
func (b *Broker) snapshot(extra map[string]int) savedState {
	s := savedState{
		Version: stateVersion, OperatorBudget: b.sources.operator,
		ReclaimedTotal: b.totals.reclaimed, InflatedTotal: b.totals.inflated, ReissuedTotal: b.totals.reissued, Leases: []savedLease{},
	}
	for _, l := range b.sorted() {
		s.Leases = append(s.Leases, savedLease{
			Registration: l.Registration, Granted: l.fifo.Granted() + extra[l.ID], Reissued: l.fifo.Reissued(),
			Reclaimed: l.reclaimed, Inflated: l.inflated, Admitted: l.admitted, Ending: l.ending, EndReason: l.endReason,
			Joined: l.joined, Asked: l.asked,
		})
	}
	return s
}

// persist saves the state if it changed, counting gives as already
// granted, and reports whether it may hand them out. Saving after every
// take and before every grant means a broker killed at any moment restarts
// knowing what the FIFOs hold; if the state cannot be written, nothing is
// handed out, so a restart never sees fewer tokens out than there are.
func (b *Broker) persist(leases []*Lease, gives []int) bool {
	extra := map[string]int{}
	for i, l := range leases {
		if gives[i] > 0 {
			extra[l.ID] = gives[i]
		}
	}
	if len(extra) == 0 && !b.dirty {
		return true
	}
	if err := saveState(b.run, b.snapshot(extra)); err != nil {
		b.log.Error("cannot save state; handing out no tokens until it can", "error", err)
		return false
	}
	b.dirty = false
	return true
}

// checkpoint saves the state if it changed, at the end of a tick.
func (b *Broker) checkpoint() {
	if !b.dirty {
		return
	}
	if err := saveState(b.run, b.snapshot(nil)); err != nil {
		b.log.Error("cannot save state; a restart will lose track of leases", "error", err)
		return
	}
	b.dirty = false
}

// stateFile is the state's name in the runtime directory.
const stateFile = "state.json"

// maxStateBytes bounds what is read: leases are bounded by the per-user
// quota and names by MaxNameBytes, so a real state file is far smaller.
const maxStateBytes = 16 << 20

func loadState(r *runDir) (savedState, error) {
	path := filepath.Join(r.path, stateFile)
	raw, err := r.readFile(stateFile, maxStateBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return savedState{Version: stateVersion}, nil
	}
	if err != nil {
		return savedState{}, fmt.Errorf("read state %s: %w; move it aside to start without the leases it records", path, err)
	}
	var s savedState
	if err := json.Unmarshal(raw, &s); err != nil {
		return savedState{}, fmt.Errorf("read state %s: %w; move it aside to start without the leases it records", path, err)
	}
	if s.Version != stateVersion {
		return savedState{}, fmt.Errorf("read state %s: version %d, this tokend reads version %d; move it aside to start without the leases it records", path, s.Version, stateVersion)
	}
	if s.OperatorBudget < 0 || s.OperatorBudget > jobserver.MaxTokens || s.ReclaimedTotal < 0 || s.InflatedTotal < 0 || s.ReissuedTotal < 0 {
		return savedState{}, fmt.Errorf("read state %s: operator budget %d, reclaimed %d, inflated %d, reissued %d: counts out of range; move it aside to start without the leases it records", path, s.OperatorBudget, s.ReclaimedTotal, s.InflatedTotal, s.ReissuedTotal)
	}
	return s, nil
}

// check says what is wrong with a saved lease, so that a forged or damaged
// entry is set aside instead of obeyed: its ID names a file tokend
// creates and removes, and its cgroup a directory it writes and removes.
// owns tells whether a directory is one of tokend's lease cgroups.
func (s savedLease) check(owns func(string) bool) error {
	if !leaseIDPattern.MatchString(s.ID) {
		return fmt.Errorf("lease id %q is not one tokend makes", s.ID)
	}
	if err := checkName(s.Name); err != nil {
		return err
	}
	if s.UID < 0 || s.GID < -1 || s.Owner.PID < 0 {
		return fmt.Errorf("uid %d, gid %d, owner pid %d out of range", s.UID, s.GID, s.Owner.PID)
	}
	if d := s.Owner.Dir; d != "" && (s.UID != 0 || !filepath.IsAbs(d) || filepath.Clean(d) != d || d == "/") {
		return fmt.Errorf("owner directory %q of uid %d: only root's leases have one, a clean absolute path other than /", d, s.UID)
	}
	if s.Owner.PID == 0 && s.Owner.Dir == "" {
		return errors.New("no owner")
	}
	if s.Granted < 0 || s.Reissued < 0 || s.Granted+s.Reissued > jobserver.MaxTokens || s.Reclaimed < 0 || s.Inflated < 0 {
		return fmt.Errorf("granted %d, reissued %d, reclaimed %d, inflated %d out of range", s.Granted, s.Reissued, s.Reclaimed, s.Inflated)
	}
	switch {
	case s.Cgroup == "":
	case s.OwnCgroup:
		if owns == nil || !owns(s.Cgroup) || filepath.Base(s.Cgroup) != s.ID {
			return fmt.Errorf("cgroup %q is not this lease's group under tokend's lease cgroups", s.Cgroup)
		}
	case s.UID != 0 || !filepath.IsAbs(s.Cgroup) || filepath.Clean(s.Cgroup) != s.Cgroup:
		return fmt.Errorf("cgroup %q of uid %d: only root names a lease's cgroup, as a clean absolute path", s.Cgroup, s.UID)
	}
	return nil
}

// saveState replaces the state file atomically: a crash of tokend leaves
// the old file or the new one, never a torn one. It does not sync: the
// file lives in /run and guards against tokend dying, not the host (no
// build survives a reboot), and tokend saves it before every grant and on
// every registration, where a sync would cost milliseconds each time
// under the broker's lock. It is not indented either: with 22 leases that
// alone took 0.2 ms of each save here (`jq` shows it to a reader).
func saveState(r *runDir, s savedState) error {
	raw, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := atomicfile.WriteAt(r.dir, stateFile, append(raw, '\n'), atomicfile.CrashOfWriter); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}
