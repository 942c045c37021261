package control

import (
	"fmt"
	"time"

	"github.com/tokend/tokend/internal/bytesize"
)

// frozen lists the frozen leases, oldest first.
func (e *engine) frozen(in []leaseInput) []leaseInput {
	var out []leaseInput
	for _, li := range in {
		if e.leases[li.ID].frozen {
			out = append(out, li)
		}
	}
	return out
}

// brake is the last resort. When headroom is under half the reserve and
// still falling, it freezes the youngest lease that can be frozen, never
// the oldest, which must make progress. It thaws the oldest frozen lease
// once memory has recovered (headroom back over the reserve and room for
// the expected growth of every job, frozen ones included) for a growth
// interval, or at once after a growth interval if the frozen lease has
// become the oldest.
func (e *engine) brake(in []leaseInput, head, reserve uint64, free int64, frozen []leaseInput, now time.Time) []action {
	var acts []action
	var oldest string
	for _, li := range in {
		if li.Admitted && !li.Ending {
			oldest = li.ID
			break
		}
	}
	if e.started && head < reserve/2 && head < e.prevHead {
		for i := len(in) - 1; i >= 0; i-- {
			li := in[i]
			if li.ID == oldest {
				break
			}
			ls := e.leases[li.ID]
			if !li.Admitted || li.Ending || !li.Freezable || ls.frozen {
				continue
			}
			ls.frozen, ls.frozenAt = true, now
			acts = append(acts, action{Lease: li.ID, Name: li.Name, Freeze: true, Why: fmt.Sprintf("headroom %s, falling from %s, is below half the reserve of %s",
				bytesize.Human(head), bytesize.Human(e.prevHead), bytesize.Human(reserve))})
			e.log.Info("memory brake: froze the youngest lease", "lease", li.ID, "name", li.Name,
				"headroom", bytesize.Human(head), "previous", bytesize.Human(e.prevHead), "reserve", bytesize.Human(reserve))
			break
		}
	}
	e.prevHead = head
	if len(frozen) == 0 {
		return acts
	}
	recovered := head >= reserve && free >= 0
	switch {
	case !recovered:
		e.recoveredSince = time.Time{}
	case e.recoveredSince.IsZero():
		e.recoveredSince = now
	}
	f := frozen[0]
	ls := e.leases[f.ID]
	dwell := e.p.GrowthInterval
	due := now.Sub(ls.frozenAt) >= dwell && now.Sub(e.lastThaw) >= dwell
	if due && (f.ID == oldest || recovered && now.Sub(e.recoveredSince) >= dwell) {
		ls.frozen = false
		e.lastThaw = now
		why := fmt.Sprintf("memory recovered: headroom %s", bytesize.Human(head))
		if f.ID == oldest {
			why = "it became the oldest lease, which must make progress"
		}
		acts = append(acts, action{Lease: f.ID, Name: f.Name, Why: why})
		e.log.Info("memory brake: thawed a lease", "lease", f.ID, "name", f.Name,
			"frozen_for", now.Sub(ls.frozenAt).Round(time.Millisecond), "headroom", bytesize.Human(head), "oldest", f.ID == oldest)
	}
	return acts
}
