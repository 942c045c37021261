package control

import (
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker/memory"
)

// Reasons a budget changes, shown in status and logs.
const (
	ReasonHeadroom = "headroom"       // memory allows this many jobs, or no more
	ReasonGrowth   = "growth reserve" // room is there now, but running jobs will need it
	ReasonPressure = "pressure"       // sustained PSI stalls, or the soft cap they left
	ReasonCPU      = "cpu cap"        // the CPUs justify no more
)

// leaseInput is one lease at one tick: the broker's view of it and its
// sampled processes.
type leaseInput struct {
	ID, Name string
	Created  time.Time
	Admitted bool
	Ending   bool
	Hungry   bool
	Held     int
	// Freezable: the lease has a cgroup v2 group of its own.
	Freezable bool
	Procs     []proc
}

// tickInput is everything one decision looks at. Leases are oldest first.
type tickInput struct {
	Reading memory.Reading
	Leases  []leaseInput
}

// action freezes or thaws one lease's cgroup.
type action struct {
	Lease  string
	Freeze bool
}

// decision is what one tick decided.
type decision struct {
	Budget  int
	Reason  string
	Changed bool
	Actions []action
	Status  api.MemoryStatus
	Leases  map[string]api.LeaseMemory
}

// engine decides the budget from one tick's input at a time. It does no
// I/O, so recorded traces replay through it exactly as live ticks do; all
// time is the readings' time.
type engine struct {
	p                    Params
	cpus                 int
	domain, pressureFile string
	hist                 *History
	log                  hclog.Logger

	started        bool
	budget         int
	reason         string
	changed        time.Time
	lastChange     time.Time // last increase or decrease, for the growth interval
	lastDecrease   time.Time // last multiplicative decrease
	lastPressure   time.Time
	wasPressured   bool
	window         []memory.Reading // readings spanning the pressure window, oldest first
	softCap        uint64           // working set at which pressure appeared; 0 for none
	capMoved       time.Time
	prevHead       uint64
	recoveredSince time.Time
	lastThaw       time.Time
	leases         map[string]*leaseState
}

func newEngine(p Params, cpus int, domain, pressureFile string, hist *History, log hclog.Logger) *engine {
	return &engine{
		p: p, cpus: cpus, domain: domain, pressureFile: pressureFile, hist: hist, log: log,
		leases: map[string]*leaseState{},
	}
}

// step takes one tick's input and decides.
func (e *engine) step(in tickInput) decision {
	r := in.Reading
	now := r.At
	e.track(in.Leases, now)

	jobs, waiting := 0, 0
	var growth, back, live uint64
	active, wanting := false, false
	leaseMem := make(map[string]api.LeaseMemory, len(in.Leases))
	for _, li := range in.Leases {
		ls := e.leases[li.ID]
		j := li.Held
		if li.Admitted && !li.Ending {
			j++
		}
		if !li.Ending {
			active = true
			if !li.Admitted {
				waiting++
			}
			wanting = wanting || (!ls.frozen && (li.Hungry || !li.Admitted))
		}
		rss, peak, g, b, l := ls.usage(j)
		jobs += j
		growth += g
		back += b
		live += l
		leaseMem[li.ID] = api.LeaseMemory{
			Procs: len(ls.procs), RSS: rss, Peak: peak, Jobs: j, Growth: g,
			Estimates: map[string]uint64{
				classCompile.String(): ls.estimate(classCompile),
				classLink.String():    ls.estimate(classLink),
			},
			Source: ls.estimateSource(), Frozen: ls.frozen,
		}
	}

	limit, ws := domainSize(r)
	// Jobs exiting or just ended give their memory back, which offsets
	// the growth of the jobs that replace them, but only up to the part
	// of a cgroup's working set that no live process accounts for: what
	// is free already must not count twice. The host's working set holds
	// everything else running, which bounds nothing: there, no offset.
	if r.Cgroup != nil {
		growth -= min(growth, back, ws-min(live, ws))
	}
	head := r.Headroom()
	reserve := e.p.reserve(limit)
	some, full, span := e.pressure(r)
	pressured := span >= pressureWindow*3/4 && some >= pressureThreshold
	if pressured {
		e.lastPressure = now
	}
	e.moveSoftCap(pressured, ws, limit, now)
	next := e.nextJob(in.Leases)

	// room is what may still be committed: headroom less the reserve, and
	// no more than the soft cap allows. free is what is left of it once
	// running jobs have grown to their expected peaks.
	room := int64(head) - int64(reserve)
	capBinds := false
	if e.softCap > 0 {
		if c := int64(e.softCap) - int64(ws); c < room {
			room, capBinds = c, true
		}
	}
	free := room - int64(growth)
	fit := jobs + floorDiv(free, next)
	cpuCap := e.p.cpuCap(e.cpus)

	// Why memory allows no more: the soft cap, else the growth still to
	// come when without it the budget (for a jump: more) would fit, else
	// the headroom itself.
	fitNow := jobs + floorDiv(room, next)
	memReason := func(budget int) string {
		switch {
		case capBinds:
			return ReasonPressure
		case fitNow > fit && fitNow >= budget:
			return ReasonGrowth
		}
		return ReasonHeadroom
	}
	target, reason := e.budget, e.reason
	switch {
	case !e.started || !active:
		// Nothing runs that a jump could misjudge: start from what memory
		// allows outright.
		target, reason = max(fit, 1), memReason(fit+1)
	case pressured && now.Sub(e.lastDecrease) >= pressureWindow:
		target = max(1, min(e.budget*decreaseNum/decreaseDen, e.budget-1))
		reason = ReasonPressure
		e.lastDecrease = now
	}
	if m := max(fit, 1); target > m {
		target, reason = m, memReason(target)
	}
	if target > cpuCap {
		target, reason = cpuCap, ReasonCPU
	}
	frozen := e.frozen(in.Leases)
	// Growing needs an eighth of a job more room than keeping the budget
	// does, so that headroom wobbling by a few MiB (page cache, slab) does
	// not grow and shrink the budget in turn.
	hysteresis := int64(next / hysteresisDen)
	if target == e.budget && e.started && active && wanting && len(frozen) == 0 &&
		now.Sub(e.lastChange) >= e.p.GrowthInterval && now.Sub(e.lastPressure) >= e.p.GrowthInterval &&
		target < cpuCap && jobs+waiting >= target && jobs+floorDiv(free-hysteresis, next) > target {
		target, reason = target+1, ReasonHeadroom
	}

	acts := e.brake(in.Leases, head, reserve, free, frozen, now)
	for _, a := range acts {
		m := leaseMem[a.Lease]
		m.Frozen = a.Freeze
		leaseMem[a.Lease] = m
	}

	d := decision{Budget: target, Reason: reason, Actions: acts, Leases: leaseMem}
	d.Changed = !e.started || target != e.budget || reason != e.reason
	detail := fmt.Sprintf("headroom %s - reserve %s - growth %s = %s free; %d jobs running + %d more of %s fit; cpu cap %d",
		size(head), size(reserve), size(growth), signedSize(free), jobs, fit-jobs, size(next), cpuCap)
	if e.softCap > 0 {
		detail += fmt.Sprintf("; soft cap %s at working set %s", size(e.softCap), size(ws))
	}
	if pressured {
		detail += fmt.Sprintf("; pressure some %.1f%% full %.1f%%", 100*some, 100*full)
	}
	if d.Changed {
		if !e.started || target != e.budget {
			e.lastChange = now
		}
		e.budget, e.reason, e.changed, e.started = target, reason, now, true
		e.log.Info("memory controller set the budget", "budget", target, "reason", reason, "detail", detail)
	} else {
		e.log.Debug("memory controller keeps the budget", "budget", target, "reason", reason, "detail", detail)
	}
	d.Status = api.MemoryStatus{
		Domain: e.domain, PressureFile: e.pressureFile, Limit: limit, WorkingSet: ws, Headroom: head,
		Reserve: reserve, Growth: growth, NextJob: next, SoftCap: e.softCap,
		PressureSome: some, PressureFull: full, PressureWindow: span,
		Jobs: jobs, Fit: fit, CPUCap: cpuCap, Target: target, Reason: e.reason, Detail: detail,
		Changed: e.changed, Updated: now,
	}
	return d
}

// track starts states for new leases, seeded from history, hands each its
// processes, and records leases that are gone in the history.
func (e *engine) track(in []leaseInput, now time.Time) {
	seen := make(map[string]bool, len(in))
	for _, li := range in {
		seen[li.ID] = true
		ls, ok := e.leases[li.ID]
		if !ok {
			ls = &leaseState{name: li.Name, source: "default"}
			ls.seed[classCompile], ls.seed[classLink] = e.p.JobEstimate, 2*e.p.JobEstimate
			for _, c := range []class{classCompile, classLink} {
				if s := e.hist.seed(li.Name, c); s > 0 {
					ls.seed[c], ls.source = s, "history"
				}
			}
			e.leases[li.ID] = ls
		}
		ls.observe(li.Procs)
	}
	for id, ls := range e.leases {
		if seen[id] {
			continue
		}
		ls.observe(nil)
		var compile, link uint64
		if ls.estimateSource() == "observed" {
			compile = ls.estimate(classCompile)
		}
		if len(ls.seen[classLink]) > 0 {
			link = ls.estimate(classLink)
		}
		if compile > 0 || link > 0 {
			e.hist.record(ls.name, compile, link, now)
		}
		delete(e.leases, id)
	}
}

// pressure adds r to the window and returns the stall rates over it.
func (e *engine) pressure(r memory.Reading) (some, full float64, span time.Duration) {
	if n := len(e.window); n > 0 {
		last := e.window[n-1]
		if !r.At.After(last.At) || r.Pressure.Some < last.Pressure.Some || r.Pressure.Full < last.Pressure.Full {
			e.window = e.window[:0] // another file, or a clock step: start over
		}
	}
	e.window = append(e.window, memory.Reading{At: r.At, Pressure: r.Pressure})
	for len(e.window) > 2 && !e.window[1].At.After(r.At.Add(-pressureWindow)) {
		e.window = e.window[1:]
	}
	st, err := r.StallSince(e.window[0])
	if err != nil {
		return 0, 0, 0 // a single reading: no interval yet
	}
	return st.Some, st.Full, st.Interval
}

// moveSoftCap remembers the working set at which pressure appears and
// relaxes that cap slowly once pressure is gone.
func (e *engine) moveSoftCap(pressured bool, ws, limit uint64, now time.Time) {
	switch {
	case pressured && !e.wasPressured:
		if e.softCap == 0 || ws < e.softCap {
			e.softCap = ws
		}
		e.capMoved = now
	case pressured:
		e.capMoved = now
	case e.softCap > 0 && now.Sub(e.capMoved) >= e.p.GrowthInterval:
		e.softCap += limit / capRelaxDen
		e.capMoved = now
		if e.softCap >= limit {
			e.softCap = 0
		}
	}
	e.wasPressured = pressured
}

// nextJob is the expected peak of one more job: the largest compile
// estimate of the leases that want one, else of any lease, else the default.
func (e *engine) nextJob(in []leaseInput) uint64 {
	var want, any uint64
	for _, li := range in {
		if li.Ending {
			continue
		}
		ls := e.leases[li.ID]
		est := ls.estimate(classCompile)
		any = max(any, est)
		if !ls.frozen && (li.Hungry || !li.Admitted) {
			want = max(want, est)
		}
	}
	switch {
	case want > 0:
		return want
	case any > 0:
		return any
	}
	return e.p.JobEstimate
}

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
			acts = append(acts, action{Lease: li.ID, Freeze: true})
			e.log.Info("memory brake: froze the youngest lease", "lease", li.ID, "name", li.Name,
				"headroom", size(head), "previous", size(e.prevHead), "reserve", size(reserve))
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
		acts = append(acts, action{Lease: f.ID})
		e.log.Info("memory brake: thawed a lease", "lease", f.ID, "name", f.Name,
			"frozen_for", now.Sub(ls.frozenAt).Round(time.Millisecond), "headroom", size(head), "oldest", f.ID == oldest)
	}
	return acts
}

// domainSize is the domain's size and working set: the cgroup's limit
// (no more than the host's memory) and its usage less inactive file
// pages, or the host's memory and what is not available of it.
func domainSize(r memory.Reading) (limit, ws uint64) {
	if r.Cgroup == nil {
		return r.MemTotal, r.MemTotal - min(r.MemAvailable, r.MemTotal)
	}
	return min(r.Cgroup.Limit(), r.MemTotal), r.Cgroup.WorkingSet()
}

// floorDiv is a/b rounded toward minus infinity, so that a deficit costs
// whole jobs.
func floorDiv(a int64, b uint64) int {
	d := int64(max(b, 1))
	q := a / d
	if a%d != 0 && a < 0 {
		q--
	}
	return int(q)
}

// size writes bytes for people: MiB below 10 GiB, GiB with one decimal
// above.
func size(b uint64) string {
	if b >= 10<<30 {
		return fmt.Sprintf("%.1fGiB", float64(b)/(1<<30))
	}
	return fmt.Sprintf("%dMiB", b>>20)
}

func signedSize(b int64) string {
	if b < 0 {
		return "-" + size(uint64(-b))
	}
	return size(uint64(b))
}
