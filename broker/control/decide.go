package control

import (
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker/memory"
	"github.com/tokend/tokend/internal/bytesize"
)

// Reasons a budget changes, shown in status and logs.
const (
	ReasonHeadroom = "headroom"       // memory allows this many jobs, or no more
	ReasonGrowth   = "growth reserve" // room is there now, but running jobs will need it
	ReasonPressure = "pressure"       // sustained PSI stalls, or the soft cap they left
	ReasonCPU      = "cpu cap"        // the CPUs justify no more
	ReasonOutside  = "outside growth" // memory outside every lease is growing into the room
)

// leaseInput is one lease at one tick: the broker's view of it and its
// sampled processes.
type leaseInput struct {
	ID, Name string
	// UID is the user the lease belongs to, whose history it learns from.
	UID int
	// Features are the build's requiredSystemFeatures (nix builds).
	Features []string
	// Cgroup is the cgroup v2 directory the build runs in, if known.
	Cgroup   string
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
	// OOMKills are the kernel log's reports of OOM kills since the last
	// tick. Without the kernel log, OOMCounted are the kills the lease
	// cgroups' own counters showed, by lease, and OOMCountedDomain those
	// the domain's counter showed, theirs included.
	OOMKills         []memory.OOMKill
	OOMCounted       map[string]int
	OOMCountedDomain int
}

// action freezes or thaws one lease's cgroup; Why says why, for people.
type action struct {
	Lease, Name string
	Freeze      bool
	Why         string
}

// decision is what one tick decided.
type decision struct {
	Budget  int
	Reason  string
	Changed bool
	Actions []action
	Status  api.MemoryStatus
	Leases  map[string]api.LeaseMemory
	// OOMKills are the kills laid on leases this tick, as events.
	OOMKills []api.Event
	// First is the lease whose share the broker is to serve first, "" for
	// none; FirstWhy says why (engine.servedFirst).
	First, FirstWhy string
}

// engine decides the budget from one tick's input at a time. It does no
// I/O, so recorded traces replay through it exactly as live ticks do; all
// time is the readings' time.
type engine struct {
	p                    Params
	cpus                 int
	domain, pressureFile string
	oomSource            string
	hist                 *History
	log                  hclog.Logger
	oom                  oomTally
	kills                []api.Event // this tick's, for the decision

	started      bool
	budget       int
	reason       string
	changed      time.Time
	lastChange   time.Time // last increase or decrease, for the growth interval
	lastDecrease time.Time // last multiplicative decrease
	lastPressure time.Time
	// lastPressureFreeze is when the brake last froze a lease for pressure.
	lastPressureFreeze time.Time
	wasPressured       bool
	window             []memory.Reading // readings spanning the pressure window, oldest first
	softCap            uint64           // working set at which pressure appeared; 0 for none
	capMoved           time.Time
	prevHead           uint64
	outside            []sample // memory outside the leases over the pressure window, oldest first
	recoveredSince     time.Time
	lastThaw           time.Time
	// first is the lease served first (servedFirst), "" for none;
	// firstWhy says why, as it was when it was chosen.
	first, firstWhy string
	leases          map[string]*leaseState
	// finished are the peaks of the last compiles that finished in each
	// user's leases, for engine.pool.
	finished map[int][]uint64
}

func newEngine(p Params, cpus int, domain, pressureFile string, hist *History, log hclog.Logger) *engine {
	return &engine{
		p: p, cpus: cpus, domain: domain, pressureFile: pressureFile, hist: hist, log: log,
		leases: map[string]*leaseState{}, finished: map[int][]uint64{},
	}
}

// step takes one tick's input and decides, in phases: what the leases
// run and want (demand), what memory allows (measure), the budget that
// follows (target), the brake, what to publish, and which lease's share
// goes first.
func (e *engine) step(in tickInput) decision {
	now := in.Reading.At
	limit, _ := domainSize(in.Reading)
	e.track(in.Leases, max(limit-min(e.p.reserve(limit), limit), heavyFloor), now)
	e.attributeOOM(in, now)
	d := e.demand(in.Leases)
	m := e.measure(in.Reading, d, in.Leases, now)
	frozen := e.frozen(in.Leases)
	target, reason := e.target(m, d, len(frozen), now)
	acts := e.brake(in.Leases, m, frozen, now)
	for _, a := range acts {
		lm := d.leases[a.Lease]
		lm.Frozen = a.Freeze
		d.leases[a.Lease] = lm
	}
	dec := e.publish(target, reason, m, d, acts, now)
	dec.OOMKills, e.kills = e.kills, nil
	dec.First, dec.FirstWhy = e.servedFirst(in.Leases, m)
	return dec
}

// demand is what the leases run and still want at one tick.
type demand struct {
	jobs    int // implicit slots of admitted leases plus tokens held
	waiting int // leases waiting for admission
	// growth is what running jobs are still expected to grow by; back is
	// what exiting and ended jobs give back; live is the RSS of the rest;
	// rss is what every sampled process of a lease holds.
	growth, back, live, rss uint64
	active                  bool // a lease runs or waits
	wanting                 bool // a lease that is not frozen wants another job
	leases                  map[string]api.LeaseMemory
}

func (e *engine) demand(in []leaseInput) demand {
	d := demand{leases: make(map[string]api.LeaseMemory, len(in))}
	for _, li := range in {
		ls := e.leases[li.ID]
		j := li.Held
		if li.Admitted && !li.Ending {
			j++
		}
		if !li.Ending {
			d.active = true
			if !li.Admitted {
				d.waiting++
			}
			d.wanting = d.wanting || (!ls.frozen && (li.Hungry || !li.Admitted))
		}
		rss, peak, g, b, l := ls.usage(j)
		d.jobs += j
		d.growth += g
		d.back += b
		d.live += l
		d.rss += rss
		d.leases[li.ID] = api.LeaseMemory{
			Procs: len(ls.procs), RSS: rss, Peak: peak, Jobs: j, Growth: g,
			Estimates: api.JobEstimates{Compile: ls.estimate(classCompile), Link: ls.estimate(classLink)},
			Source:    ls.estimateSource(), Frozen: ls.frozen,
			OOMKills: ls.oomKills, OOMKilled: max(ls.oom[classCompile], ls.oom[classLink]),
		}
	}
	return d
}

// measure is what memory allows at one tick.
type measure struct {
	limit, ws, head, reserve uint64
	some, full               float64
	span                     time.Duration // what the pressure rates are measured over
	pressured                bool
	growth                   uint64 // growth to come, less what jobs give back, plus outside growth
	next                     uint64 // the expected peak of one more job
	// outside is the working set no lease's process accounts for, held
	// now or being given back;
	// outsideGrowth what it is expected to grow by (see forecastOutside).
	outside, outsideGrowth uint64
	// room is what may still be committed: headroom less the reserve, and
	// no more than the soft cap allows (capBinds when it is the cap).
	// free is what is left of it once running jobs have grown to their
	// expected peaks.
	room, free int64
	capBinds   bool
	// fit is how many jobs memory allows once running jobs have grown;
	// fitNow how many it would allow without that growth, fitInside
	// without the outside growth.
	fit, fitNow, fitInside int
	cpuCap                 int
}

// measure reads the domain's size, headroom and pressure, moves the soft
// cap, and works out how many jobs fit.
func (e *engine) measure(r memory.Reading, d demand, in []leaseInput, now time.Time) measure {
	m := measure{growth: d.growth}
	m.limit, m.ws = domainSize(r)
	// Jobs exiting or just ended give their memory back, which offsets
	// the growth of the jobs that replace them, but only up to the part
	// of a cgroup's working set that no live process accounts for: what
	// is free already must not count twice. The host's working set holds
	// everything else running, which bounds nothing: there, no offset.
	if r.Cgroup != nil {
		m.growth -= min(m.growth, d.back, m.ws-min(d.live, m.ws))
	}
	// A job exiting reads little or no RSS while the kernel still frees
	// what it held, and one that ended between the domain's reading and
	// the leases' sampling is in the first and not the second: that
	// memory is the leases', not the outside's.
	m.outside = m.ws - min(d.rss+d.back, m.ws)
	m.outsideGrowth = e.forecastOutside(m.outside, now)
	m.growth += m.outsideGrowth
	m.head = r.Headroom()
	m.reserve = e.p.reserve(m.limit)
	m.some, m.full, m.span = e.pressure(r)
	m.pressured = m.span >= pressureWindow*3/4 && m.some >= pressureThreshold
	if m.pressured {
		e.lastPressure = now
	}
	e.moveSoftCap(m.pressured, m.ws, m.limit, now)
	m.next = e.nextJob(in)

	m.room = int64(m.head) - int64(m.reserve)
	if e.softCap > 0 {
		if c := int64(e.softCap) - int64(m.ws); c < m.room {
			m.room, m.capBinds = c, true
		}
	}
	m.free = m.room - int64(m.growth)
	m.fit = d.jobs + floorDiv(m.free, m.next)
	m.fitNow = d.jobs + floorDiv(m.room, m.next)
	m.fitInside = d.jobs + floorDiv(m.free+int64(m.outsideGrowth), m.next)
	m.cpuCap = e.p.cpuCap(e.cpus)
	return m
}

// limitReason is why memory allows no more than budget: the soft cap,
// else the outside growth when without it the budget (for a jump: more)
// would fit, else the growth still to come when without it the budget
// would fit, else the headroom itself.
func (m measure) limitReason(budget int) string {
	switch {
	case m.capBinds:
		return ReasonPressure
	case m.outsideGrowth > 0 && m.fitInside > m.fit && m.fitInside >= budget:
		return ReasonOutside
	case m.fitNow > m.fit && m.fitNow >= budget:
		return ReasonGrowth
	}
	return ReasonHeadroom
}

// target is the budget memory, pressure and the CPUs allow, and why.
func (e *engine) target(m measure, d demand, frozen int, now time.Time) (int, string) {
	target, reason := e.budget, e.reason
	switch {
	case !e.started || !d.active:
		// Nothing runs that a jump could misjudge: start from what memory
		// allows outright.
		target, reason = max(m.fit, 1), m.limitReason(m.fit+1)
	case m.pressured && now.Sub(e.lastDecrease) >= pressureWindow:
		target = max(1, min(e.budget*decreaseNum/decreaseDen, e.budget-1))
		reason = ReasonPressure
		e.lastDecrease = now
	}
	if fit := max(m.fit, 1); target > fit {
		target, reason = fit, m.limitReason(target)
	}
	if target > m.cpuCap {
		target, reason = m.cpuCap, ReasonCPU
	}
	if e.mayGrow(target, m, d, frozen, now) {
		target, reason = target+1, ReasonHeadroom
	}
	return target, reason
}

// mayGrow is the growth rule: the budget, unchanged this tick, grows by
// one only while it is in use and a lease wants more, nothing is frozen,
// a growth interval has passed since the last change and since the last
// pressure, the CPUs allow one more, and memory fits one more job. There
// is no margin beyond the fit: the reserve is there for what estimates
// and readings miss, and the growth interval since the last change,
// decreases included, already keeps headroom wobbling across the fit
// from growing the budget more than once an interval. A margin of an
// eighth of a job, before, kept a second 672 MiB compile waiting for
// 40 s beside 676 to 689 MiB of steady room: warm gcc-thrash took 1.88x
// static -j1, and 1.08x without the margin, with no stall either way.
func (e *engine) mayGrow(target int, m measure, d demand, frozen int, now time.Time) bool {
	settled := e.started && target == e.budget
	inUse := d.active && d.wanting && d.jobs+d.waiting >= target
	rested := frozen == 0 && now.Sub(e.lastChange) >= e.p.GrowthInterval && now.Sub(e.lastPressure) >= e.p.GrowthInterval
	fits := target < m.cpuCap && m.fit > target
	return settled && inUse && rested && fits
}

// publish records the decision, logs it with its arithmetic, and builds
// what status shows.
func (e *engine) publish(target int, reason string, m measure, d demand, acts []action, now time.Time) decision {
	dec := decision{Budget: target, Reason: reason, Actions: acts, Leases: d.leases}
	dec.Changed = !e.started || target != e.budget || reason != e.reason
	detail := fmt.Sprintf("headroom %s - reserve %s - growth %s = %s free; %d jobs running + %d more of %s fit; cpu cap %d",
		bytesize.Human(m.head), bytesize.Human(m.reserve), bytesize.Human(m.growth), signedSize(m.free),
		d.jobs, m.fit-d.jobs, bytesize.Human(m.next), m.cpuCap)
	if e.softCap > 0 {
		detail += fmt.Sprintf("; soft cap %s at working set %s", bytesize.Human(e.softCap), bytesize.Human(m.ws))
	}
	if m.outsideGrowth > 0 {
		detail += fmt.Sprintf("; outside the leases %s, growing by %s (in the growth)", bytesize.Human(m.outside), bytesize.Human(m.outsideGrowth))
	}
	if m.pressured {
		detail += fmt.Sprintf("; pressure some %.1f%% full %.1f%%", 100*m.some, 100*m.full)
	}
	if dec.Changed {
		if !e.started || target != e.budget {
			e.lastChange = now
		}
		e.budget, e.reason, e.changed, e.started = target, reason, now, true
	}
	dec.Status = api.MemoryStatus{
		Domain: e.domain, PressureFile: e.pressureFile, Limit: m.limit, WorkingSet: m.ws, Headroom: m.head,
		Reserve: m.reserve, Growth: m.growth, NextJob: m.next, SoftCap: e.softCap,
		PressureSome: m.some, PressureFull: m.full, PressureWindow: m.span,
		Jobs: d.jobs, Fit: m.fit, CPUCap: m.cpuCap, Target: target, Reason: e.reason, Detail: detail,
		Changed: e.changed, Updated: now,
		Outside: m.outside, OutsideGrowth: m.outsideGrowth,
		OOMKills: e.oom.total, OOMKillsOutside: e.oom.outside, OOMSource: e.oomSource,
	}
	return dec
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

// signedSize writes a deficit as a negative size.
func signedSize(b int64) string {
	if b < 0 {
		return "-" + bytesize.Human(uint64(-b))
	}
	return bytesize.Human(uint64(b))
}
