package control

import (
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker/memory"
)

// class is the kind of job a process is, for its memory estimate.
type class int

const (
	// classDriver is a build tool that runs jobs (make, ninja, cargo): it
	// holds a slot but is not the job whose memory grows.
	classDriver class = iota
	classCompile
	// classLink: linkers and link-time optimisers, which need far more
	// memory than a compile and arrive at the end of a build.
	classLink
)

func (c class) String() string {
	switch c {
	case classCompile:
		return "compile"
	case classLink:
		return "link"
	}
	return "driver"
}

// commLen is how much of a command name the kernel keeps in
// /proc/PID/status: TASK_COMM_LEN less the NUL.
const commLen = 15

var (
	linkers = map[string]bool{
		"ld": true, "ld.bfd": true, "ld.gold": true, "gold": true, "ld.lld": true, "lld": true,
		"ld64.lld": true, "wasm-ld": true, "rust-lld": true, "mold": true, "ld.mold": true,
		"collect2": true, "lto1": true, "lto-wrapper": true,
	}
	drivers = map[string]bool{
		"make": true, "gmake": true, "ninja": true, "samu": true, "cargo": true, "tokenctl": true,
		"nix": true, "nix-build": true, "nix-daemon": true, "nix-store": true,
	}
)

// classify tells a process's job class from its name, and from argv0 when
// the name may have been cut to 15 bytes: x86_64-linux-gnu-ld.bfd and
// x86_64-linux-gnu-gcc-12 both read "x86_64-linux-gn".
func classify(name, argv0 string) class {
	if len(name) >= commLen && argv0 != "" {
		name = filepath.Base(argv0)
	}
	if drivers[name] || strings.HasPrefix(name, "make-") {
		return classDriver
	}
	if linkers[name] {
		return classLink
	}
	// Cross and versioned tools: x86_64-linux-gnu-ld.gold, ld.lld-19.
	for l := range linkers {
		if strings.HasSuffix(name, "-"+l) {
			return classLink
		}
		if v, ok := strings.CutPrefix(name, l+"-"); ok && v != "" && strings.Trim(v, "0123456789.") == "" {
			return classLink
		}
	}
	return classCompile
}

// proc is one sampled process of a lease, with its job class.
type proc struct {
	memory.Proc
	class class
	// exiting: the process has begun to exit (PF_EXITING) and is tearing
	// its memory down; make may already run the next job in its place.
	exiting bool
	// held is the RSS it had when last seen alive: what an exiting
	// process gives back. /proc reads zero as soon as its threads have
	// dropped the memory, while the kernel is still freeing it.
	held uint64
}

const (
	// heavyFloor: a process whose peak stays below it is not counted as a
	// job's memory (shells, compiler drivers, assemblers of small files);
	// nothing under it is worth a slot's worth of reserve.
	heavyFloor = 64 << 20
	// estimateWindow is how many finished jobs of a class an estimate
	// remembers: the largest of them is the estimate, so one big job keeps
	// it up for the next few, and a build whose jobs shrink is believed
	// after this many.
	estimateWindow = 8
)

// leaseState is what the controller keeps of one lease between ticks.
type leaseState struct {
	uid  int
	name string
	// procs are the lease's processes at the last sample, by PID.
	procs map[int]proc
	// seen are the peaks of finished heavy processes, newest last, per
	// class; small counts finished non-driver processes below heavyFloor.
	seen  [3][]uint64
	small int
	// gone is what the processes that ended since the last sample held
	// when last seen alive: memory the kernel may still be freeing.
	gone uint64
	// seed is the estimate per class before anything is seen; source
	// tells where it came from (api.EstimateHistory or api.EstimateDefault).
	seed   [3]uint64
	source string
	// known tells which seeds came from history rather than a default.
	known [3]bool
	// run is what the jobs of its user's live leases show of a compile's
	// size (see engine.pool), for a lease whose compiles nothing else
	// shows yet; 0 for none.
	run uint64
	// ended are the processes that ended since the last sample, as last
	// seen alive.
	ended []proc
	// oom is the largest size a job of each class reached before the OOM
	// killer took it; oomKills counts the lease's processes it took, and
	// oomPIDs are those already counted.
	oom      [3]uint64
	oomKills int
	oomPIDs  map[int]bool

	frozen   bool
	frozenAt time.Time
	// recorded: its run is in the history already.
	recorded bool
}

// observe takes a new sample of the lease's processes and learns from
// those that finished since the last one: their last sampled peak (VmHWM
// only grows, so it is at most one tick short), which it returns for
// heavy compiles.
func (l *leaseState) observe(procs []proc) (compiles []uint64) {
	byPID := make(map[int]proc, len(procs))
	for _, p := range procs {
		prev, seen := l.procs[p.PID]
		// An exiting process reads zero: keep the peak it had.
		if seen {
			p.Peak = max(p.Peak, prev.Peak)
		}
		p.held = p.RSS
		if p.exiting && seen {
			p.held = prev.held
		}
		byPID[p.PID] = p
	}
	l.gone = 0
	l.ended = l.ended[:0]
	for pid, p := range l.procs {
		if _, ok := byPID[pid]; ok {
			continue
		}
		l.ended = append(l.ended, p)
		l.gone += p.held
		if p.class == classDriver {
			continue
		}
		if p.Peak < heavyFloor {
			l.small++
			continue
		}
		l.seen[p.class] = window(l.seen[p.class], p.Peak)
		if p.class == classCompile {
			compiles = append(compiles, p.Peak)
		}
	}
	l.procs = byPID
	return compiles
}

// window appends v to the peaks vs, keeping the last estimateWindow.
func window(vs []uint64, v uint64) []uint64 {
	vs = append(vs, v)
	return vs[max(len(vs)-estimateWindow, 0):]
}

// estimate is the expected peak of one job of class c: the largest seen
// of the last finished ones, else for a compile what the user's other
// jobs show (run), else the seed, and never less than a running job of
// that class already reached or a job of it the OOM killer took. A lease
// that ran a window's worth of jobs, all below the floor, is expected to
// stay there.
func (l *leaseState) estimate(c class) uint64 {
	var e uint64
	switch {
	case len(l.seen[c]) > 0:
		e = slices.Max(l.seen[c])
	case c == classCompile && l.small >= estimateWindow:
		e = heavyFloor
	case c == classCompile && l.run > 0:
		e = l.run
	default:
		e = l.seed[c]
	}
	for _, p := range l.procs {
		if p.class == c {
			e = max(e, p.Peak)
		}
	}
	return max(e, l.oom[c])
}

// estimateSource tells where the compile estimate comes from.
func (l *leaseState) estimateSource() string {
	switch {
	case len(l.seen[classCompile]) > 0 || l.small >= estimateWindow:
		return api.EstimateObserved
	case l.run > 0:
		return api.EstimateRun
	}
	return l.source
}

// evidenced tells whether the lease's own jobs or its history show the
// size of its jobs of class c.
func (l *leaseState) evidenced(c class) bool {
	return len(l.seen[c]) > 0 || l.known[c] || c == classCompile && l.small >= estimateWindow
}

// usage is what the lease's processes hold and what its jobs are still
// expected to grow by. jobs is how many jobs the lease runs (its implicit
// slot and the tokens it holds): each heavy process is one, growing to its
// class's estimate (or its own peak, if larger); jobs without a heavy
// process yet are expected to grow from nothing to a compile's estimate.
// A process that is exiting runs no job any more; back is the memory such
// processes, and those that ended since the last sample, held when last
// seen alive, which is coming back; live is the RSS of the others.
func (l *leaseState) usage(jobs int) (rss, peak, growth, back, live uint64) {
	heavy := 0
	back = l.gone
	for _, p := range l.procs {
		rss += p.RSS
		peak = max(peak, p.Peak)
		if p.exiting {
			back += p.held
			continue
		}
		live += p.RSS
		if p.class == classDriver || p.Peak < heavyFloor {
			continue
		}
		heavy++
		e := max(l.estimate(p.class), p.Peak)
		growth += e - min(p.RSS, e)
	}
	if missing := jobs - heavy; missing > 0 {
		growth += uint64(missing) * l.estimate(classCompile)
	}
	return rss, peak, growth, back, live
}

// track starts states for new leases, seeded from history, hands each its
// processes, and retires leases that are gone. seedCap bounds a seed from
// history: what one job may be expected at is no more than the domain
// less the reserve, since a job bigger than that can still run alone.
func (e *engine) track(in []leaseInput, seedCap uint64, now time.Time) {
	seen := make(map[string]bool, len(in))
	for _, li := range in {
		seen[li.ID] = true
		ls, ok := e.leases[li.ID]
		if !ok {
			ls = &leaseState{uid: li.UID, name: li.Name}
			ls.seed, ls.source = e.p.firstEstimates(li.Features)
			for _, c := range []class{classCompile, classLink} {
				if s := e.hist.seed(li.UID, li.Name, c); s > 0 {
					ls.seed[c], ls.source = max(min(s, seedCap), heavyFloor), api.EstimateHistory
					ls.known[c] = true
				}
			}
			e.leases[li.ID] = ls
		}
		e.learn(ls.uid, ls.observe(li.Procs))
		if li.Ending {
			e.record(ls, false, now)
		}
	}
	e.retire(seen, now)
	e.pool()
}

// learn adds compiles that finished in a lease of uid to what uid's
// leases show each other (engine.pool).
func (e *engine) learn(uid int, compiles []uint64) {
	for _, c := range compiles {
		e.finished[uid] = window(e.finished[uid], c)
	}
}

// pool gives every lease that nothing shows the size of its compiles
// (no finished job, no history, no build feature) what the jobs of its
// user's leases show instead of the default, once one of them has
// finished a compile: the largest peak of the user's last finished
// compiles, and no less than a compile of a live lease of theirs still
// running has reached. What finished is kept while the user has a lease
// live, so that builds that overlap (nix runs several at once) hand it
// on; it is forgotten with the user's last lease. A running job's size
// is only a lower bound of its peak (g++'s cc1plus, sampled here, sits
// at 60 to 140 MiB for its first seconds whether it peaks at 0.3 or
// 0.77 GiB), so running jobs alone show nothing. Only the user's own
// leases count, as with history: another user's small jobs cannot
// lower it.
func (e *engine) pool() {
	running, live := map[int]uint64{}, map[int]bool{}
	for _, ls := range e.leases {
		live[ls.uid] = true
		for _, p := range ls.procs {
			if p.class == classCompile {
				running[ls.uid] = max(running[ls.uid], p.Peak)
			}
		}
	}
	for uid := range e.finished {
		if !live[uid] {
			delete(e.finished, uid)
		}
	}
	for _, ls := range e.leases {
		ls.run = 0
		if f := e.finished[ls.uid]; len(f) > 0 && ls.source == api.EstimateDefault && !ls.evidenced(classCompile) {
			ls.run = max(slices.Max(f), running[ls.uid])
		}
	}
}

// retire records the leases that are not live any more in the history,
// unless they were recorded as they ended, and forgets them.
func (e *engine) retire(live map[string]bool, now time.Time) {
	for id, ls := range e.leases {
		if live[id] {
			continue
		}
		e.learn(ls.uid, ls.observe(nil))
		e.record(ls, false, now)
		delete(e.leases, id)
	}
}

// recordLive records every lease still tracked in the history, as
// tokend stops: those ending as whole runs, the others as partial ones,
// which can only raise an estimate (see History.record).
func (e *engine) recordLive(ending map[string]bool, now time.Time) {
	for id, ls := range e.leases {
		e.record(ls, !ending[id], now)
	}
}

// record records the lease's run in the history once: the largest peak
// per class of its finished jobs and of those still running (for a run
// recorded as it ends or as tokend stops, a part of the run).
func (e *engine) record(ls *leaseState, partial bool, now time.Time) {
	if ls.recorded {
		return
	}
	ls.recorded = true
	run := leaseRun{prior: ls.seed, oom: ls.oom, partial: partial}
	for _, c := range []class{classCompile, classLink} {
		if len(ls.seen[c]) > 0 {
			run.peak[c] = slices.Max(ls.seen[c])
		}
		for _, p := range ls.procs {
			if p.class == c && p.Peak >= heavyFloor {
				run.peak[c] = max(run.peak[c], p.Peak)
			}
		}
	}
	if run.peak[classCompile] == 0 && ls.small >= estimateWindow {
		run.peak[classCompile] = heavyFloor
	}
	if run.peak != [3]uint64{} || run.oom != [3]uint64{} {
		e.hist.record(ls.uid, ls.name, run, now)
	}
}

// runsLink tells whether the lease runs a link of a size worth a job.
func (l *leaseState) runsLink() bool {
	for _, p := range l.procs {
		if p.class == classLink && !p.exiting && p.Peak >= heavyFloor {
			return true
		}
	}
	return false
}

// linksUnknown tells whether the lease runs a link whose size nothing
// has shown yet: no link of this lease has finished, and its history has
// none.
func (l *leaseState) linksUnknown() bool {
	return !l.known[classLink] && len(l.seen[classLink]) == 0 && l.runsLink()
}
