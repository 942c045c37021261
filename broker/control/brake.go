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

// brake is the last resort. When headroom, less what memory outside the
// leases is expected to take (outsideGrowth), is under half the reserve
// and headroom is still falling, it freezes the youngest lease that can
// be frozen, never the oldest, which must make progress. Sustained
// pressure does the same, at most once a pressure window: real
// compilers near a limit thrash (their text pages evicted and read
// again) long before the OOM killer comes, with headroom to spare, and a
// lower budget only stops new jobs, while those running go on
// thrashing; as Buck2 suspends its youngest action. Links of unknown
// size it lets grow one at a time: when two leases or more run one and
// memory does not fit the growth to come (free < 0), the youngest of them
// is frozen until the older link is done. A link runs on its build's
// implicit slot, the last job of a build, which no token holds back, and
// once it has grown nothing gives its memory back: this is where a cold
// tokend lost builds to the OOM killer beside a growing program. It thaws
// the oldest frozen lease once memory has recovered (headroom back over
// the reserve, room for the expected growth of every job, frozen ones
// included, and no pressure) for a growth interval, or at once after a growth interval if
// the frozen lease has become the oldest.
func (e *engine) brake(in []leaseInput, m measure, frozen []leaseInput, now time.Time) []action {
	head, reserve, outsideGrowth, free := m.head, m.reserve, m.outsideGrowth, m.free
	var acts []action
	var oldest string
	for _, li := range in {
		if li.Admitted && !li.Ending {
			oldest = li.ID
			break
		}
	}
	freezable := func(li leaseInput) bool {
		return li.ID != oldest && li.Admitted && !li.Ending && li.Freezable && !e.leases[li.ID].frozen
	}
	freeze := func(li leaseInput, why string) {
		ls := e.leases[li.ID]
		ls.frozen, ls.frozenAt = true, now
		acts = append(acts, action{Lease: li.ID, Name: li.Name, Freeze: true, Why: why})
		e.log.Info("memory brake: froze a lease", "lease", li.ID, "name", li.Name, "why", why)
	}
	var unknownLinks []leaseInput
	for _, li := range in {
		if li.Admitted && !li.Ending && !e.leases[li.ID].frozen && e.leases[li.ID].linksUnknown() {
			unknownLinks = append(unknownLinks, li)
		}
	}
	short := head-min(head, outsideGrowth) < reserve/2 && head < e.prevHead
	switch {
	case !e.started:
	case short:
		why := fmt.Sprintf("headroom %s, falling from %s, is below half the reserve of %s",
			bytesize.Human(head), bytesize.Human(e.prevHead), bytesize.Human(reserve))
		if outsideGrowth > 0 {
			why += fmt.Sprintf(" once memory outside the leases has grown by the %s expected", bytesize.Human(outsideGrowth))
		}
		for i := len(in) - 1; i >= 0 && in[i].ID != oldest; i-- {
			if freezable(in[i]) {
				freeze(in[i], why)
				break
			}
		}
	case m.pressured && now.Sub(e.lastPressureFreeze) >= pressureWindow:
		why := fmt.Sprintf("memory pressure: tasks stalled %.0f%% of the last %v (full %.0f%%)",
			100*m.some, m.span.Round(100*time.Millisecond), 100*m.full)
		for i := len(in) - 1; i >= 0 && in[i].ID != oldest; i-- {
			if freezable(in[i]) {
				freeze(in[i], why)
				e.lastPressureFreeze = now
				break
			}
		}
	case len(unknownLinks) >= 2 && free < 0:
		for i := len(unknownLinks) - 1; i >= 0; i-- {
			if freezable(unknownLinks[i]) {
				freeze(unknownLinks[i], fmt.Sprintf("%d links of unknown size run and memory does not fit their growth to come (%s short); this one waits for the older",
					len(unknownLinks), bytesize.Human(uint64(-free))))
				break
			}
		}
	}
	e.prevHead = head
	if len(frozen) == 0 {
		return acts
	}
	recovered := head >= reserve && free >= 0 && !m.pressured
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
