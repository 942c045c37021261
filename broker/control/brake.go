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
// be frozen, never the keeper (the oldest, or the one with the smallest
// links), which must make progress. Sustained
// pressure does the same, at most once a pressure window: real
// compilers near a limit thrash (their text pages evicted and read
// again) long before the OOM killer comes, with headroom to spare, and a
// lower budget only stops new jobs, while those running go on
// thrashing; as Buck2 suspends its youngest action. Links of unknown
// size it lets grow one at a time: when two leases or more run one and
// memory does not fit the growth to come (free < 0), the youngest of them
// is frozen until the older link is done; where history tells every
// running lease's link size, a lease whose link does not fit waits for
// the keeper to be done. A link runs on its build's
// implicit slot, the last job of a build, which no token holds back, and
// once it has grown nothing gives its memory back: this is where a cold
// tokend lost builds to the OOM killer beside a growing program. It thaws
// the oldest frozen lease once memory has recovered (headroom back over
// the reserve, room for the expected growth of every job, frozen ones
// included, and no pressure) for a growth interval, or at once after a
// growth interval if the frozen lease has become the keeper.
func (e *engine) brake(in []leaseInput, m measure, frozen []leaseInput, now time.Time) []action {
	head, reserve, outsideGrowth, free := m.head, m.reserve, m.outsideGrowth, m.free
	var acts []action
	keeper, bySize := e.keeper(in)
	freezable := func(li leaseInput) bool {
		return li.ID != keeper && li.Admitted && !li.Ending && li.Freezable && !e.leases[li.ID].frozen
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
		for i := len(in) - 1; i >= 0; i-- {
			if freezable(in[i]) {
				freeze(in[i], why)
				break
			}
		}
	case m.pressured && now.Sub(e.lastPressureFreeze) >= pressureWindow:
		why := fmt.Sprintf("memory pressure: tasks stalled %.0f%% of the last %v (full %.0f%%)",
			100*m.some, m.span.Round(100*time.Millisecond), 100*m.full)
		for i := len(in) - 1; i >= 0; i-- {
			if freezable(in[i]) {
				freeze(in[i], why)
				e.lastPressureFreeze = now
				break
			}
		}
	case bySize && free < 0:
		keeps := e.leases[keeper].estimate(classLink)
		for i := len(in) - 1; i >= 0; i-- {
			if ls := e.leases[in[i].ID]; freezable(in[i]) && ls.runsLink() {
				freeze(in[i], fmt.Sprintf("its link, expected at %s, fits only once the build whose links take %s is done; memory is %s short of their growth to come",
					bytesize.Human(ls.estimate(classLink)), bytesize.Human(keeps), bytesize.Human(uint64(-free))))
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
	// A frozen keeper goes first. The keeper changes (a link growing past
	// the other lease's estimate makes that one the keeper), and a keeper
	// left frozen behind an older frozen lease, which memory does not let
	// go, would leave no lease running.
	f := frozen[0]
	for _, fl := range frozen {
		if fl.ID == keeper {
			f = fl
		}
	}
	ls := e.leases[f.ID]
	dwell := e.p.GrowthInterval
	due := now.Sub(ls.frozenAt) >= dwell && now.Sub(e.lastThaw) >= dwell
	if due && (f.ID == keeper || recovered && now.Sub(e.recoveredSince) >= dwell) {
		ls.frozen = false
		e.lastThaw = now
		why := fmt.Sprintf("memory recovered: headroom %s", bytesize.Human(head))
		if f.ID == keeper {
			why = "it became the lease that must make progress"
		}
		acts = append(acts, action{Lease: f.ID, Name: f.Name, Why: why})
		e.log.Info("memory brake: thawed a lease", "lease", f.ID, "name", f.Name,
			"frozen_for", now.Sub(ls.frozenAt).Round(time.Millisecond), "headroom", bytesize.Human(head), "keeper", f.ID == keeper)
	}
	return acts
}

// keeper is the lease the brake never freezes, so that one always makes
// progress: the oldest running lease, unless the history of every running
// lease tells the size of its links and they differ. Then it is the lease
// whose links are the smallest (bySize): a link runs on its build's
// implicit slot and nothing gives its memory back, so where memory fits
// the largest link only alone, the others must be done first. In the
// bench's hog scenario one package links at 3 GiB and the other at
// 1.6 GiB beside a 3 GiB program in 6 GiB: keeping the oldest, whichever
// linked first, lost a build to the OOM killer in one warm run of three.
func (e *engine) keeper(in []leaseInput) (id string, bySize bool) {
	var running []string
	for _, li := range in {
		if li.Admitted && !li.Ending {
			running = append(running, li.ID)
		}
	}
	if len(running) == 0 {
		return "", false
	}
	id = running[0]
	least, most := uint64(0), uint64(0)
	for i, r := range running {
		ls := e.leases[r]
		if !ls.evidenced(classLink) {
			return running[0], false
		}
		link := ls.estimate(classLink)
		if i == 0 || link < least {
			id, least = r, link
		}
		most = max(most, link)
	}
	return id, least < most
}

// servedFirst is the lease whose share the broker serves before the
// others' (Broker.ServeFirst), and why: the keeper, when it is chosen by
// link size and the running builds' links, at their expected sizes, do
// not fit together in what the reserve and the memory outside the builds
// (with its expected growth) leave. Such links run one after the other
// whatever the budget, the smaller first. Under equal shares the builds
// keep in step and reach their links together, and the larger one waits
// frozen for the keeper's last jobs while a CPU idles: in the bench's
// warm hog runs pkg02 waited 3 to 10 s so. Served first, the keeper
// finishes early, while every other build goes on at its implicit slot.
// The choice holds while that lease stays the keeper by size: the
// outside memory's forecast moves by hundreds of MiB from tick to tick,
// and a choice that came and went with it would move tokens back and
// forth.
func (e *engine) servedFirst(in []leaseInput, m measure) (id, why string) {
	keeper, bySize := e.keeper(in)
	if !bySize || keeper != e.first {
		e.first = ""
	}
	if !bySize {
		return "", ""
	}
	var links uint64
	for _, li := range in {
		if li.Admitted && !li.Ending {
			links += e.leases[li.ID].estimate(classLink)
		}
	}
	left := m.limit - min(m.limit, m.reserve+m.outside+m.outsideGrowth)
	if e.first == "" && links > left {
		e.first = keeper
		e.firstWhy = fmt.Sprintf("its links, expected at %s, are the smallest, and the running builds' links, %s together, do not fit in the %s that the reserve and memory outside the builds leave",
			bytesize.Human(e.leases[keeper].estimate(classLink)), bytesize.Human(links), bytesize.Human(left))
	}
	if e.first == "" {
		return "", ""
	}
	return e.first, e.firstWhy
}
