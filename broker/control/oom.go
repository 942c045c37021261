package control

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker/memory"
	"github.com/tokend/tokend/internal/bytesize"
)

// How OOM kills are seen, as status shows it.
const (
	// OOMFromKernelLog: the kernel's own report of each kill in
	// /dev/kmsg, which names the victim's pid, task and memory cgroup.
	OOMFromKernelLog = "kernel log"
	// OOMFromCounters: without the kernel log (not root, or no
	// CAP_SYSLOG where dmesg_restrict is set), the kill counters of the
	// domain and of lease cgroups that have one; each kill is laid on
	// the largest job of a lease that ended at that moment, the one the
	// OOM killer picks, or, if none did, counted outside the leases.
	OOMFromCounters = "counters"
)

// oomPendingFor is how long a counted kill waits for its victim to show
// as gone from a lease: the counter moves when the kill is decided, the
// victim leaves /proc once its memory is freed, a tick or two later.
const oomPendingFor = time.Second

// oomTally is what the engine saw of OOM kills since it started.
type oomTally struct {
	total, outside int
	// pending counts kills the domain's counter showed that no lease's
	// vanished job explains yet, since pendingSince.
	pending      int
	pendingSince time.Time
}

// attributeOOM lays the tick's OOM kills on the leases whose processes
// they were. A kill from the kernel log is found by its pid among the
// lease's processes of the last sample and those that ended since, else
// by its memory cgroup; counted kills go to the largest job that just
// ended in the lease whose group counted them, or in any lease for the
// domain's count. Each kill is logged with the job's size and recorded in
// the history at once, so a lease of the same name started after it is
// admitted with room for that job.
func (e *engine) attributeOOM(in tickInput, now time.Time) {
	for _, k := range in.OOMKills {
		id, p, ok := e.oomVictim(k, in.Leases)
		if !ok {
			e.oom.outside++
			e.log.Info("OOM kill outside every lease", "pid", k.PID, "task", k.Task, "uid", k.UID, "size", bytesize.Human(k.RSS), "memcg", k.Memcg)
			continue
		}
		e.oomKilled(id, p, k.RSS, OOMFromKernelLog, now)
	}
	counted := 0
	for _, id := range slices.Sorted(maps.Keys(in.OOMCounted)) {
		n := in.OOMCounted[id]
		counted += n
		ls := e.leases[id]
		if ls == nil {
			continue
		}
		for range n {
			p, ok := ls.largestEnded()
			if !ok {
				p = proc{class: classCompile} // its job was too quick to sample
			}
			e.oomKilled(id, p, 0, OOMFromCounters, now)
		}
	}
	if extra := in.OOMCountedDomain - counted; extra > 0 {
		if e.oom.pending == 0 {
			e.oom.pendingSince = now
		}
		e.oom.pending += extra
	}
	for e.oom.pending > 0 {
		id, p, ok := e.largestEnded(in.Leases)
		if !ok {
			break
		}
		e.oom.pending--
		e.oomKilled(id, p, 0, OOMFromCounters, now)
	}
	if e.oom.pending > 0 && now.Sub(e.oom.pendingSince) >= oomPendingFor {
		e.oom.outside += e.oom.pending
		e.log.Info("OOM kills outside every lease", "kills", e.oom.pending)
		e.oom.pending = 0
	}
}

// oomVictim finds the lease and process a kill from the kernel log took.
func (e *engine) oomVictim(k memory.OOMKill, in []leaseInput) (string, proc, bool) {
	for _, li := range in {
		ls := e.leases[li.ID]
		if p, ok := ls.procs[k.PID]; ok {
			return li.ID, p, true
		}
		for _, p := range ls.ended {
			if p.PID == k.PID {
				return li.ID, p, true
			}
		}
	}
	for _, li := range in {
		if inCgroup(li.Cgroup, k.Memcg) {
			return li.ID, proc{Proc: memory.Proc{PID: k.PID, Name: k.Task}, class: classify(k.Task, "")}, true
		}
	}
	return "", proc{}, false
}

// inCgroup tells whether a task whose memory cgroup is memcg (relative to
// its hierarchy's root, as the kernel log gives it) runs in the cgroup
// directory dir or below it.
func inCgroup(dir, memcg string) bool {
	if dir == "" {
		return false
	}
	for m := memcg; strings.HasPrefix(m, "/") && m != "/"; m = m[:strings.LastIndex(m, "/")] {
		if strings.HasSuffix(dir, m) {
			return true
		}
	}
	return false
}

// largestEnded is the largest heavy process among the leases' that ended
// since the last sample or are exiting, not yet laid a kill on.
func (e *engine) largestEnded(in []leaseInput) (string, proc, bool) {
	var id string
	var best proc
	found := false
	for _, li := range in {
		if p, ok := e.leases[li.ID].largestEnded(); ok && (!found || p.held > best.held) {
			id, best, found = li.ID, p, true
		}
	}
	return id, best, found
}

// largestEnded is the lease's largest heavy process that ended since the
// last sample or is exiting, not yet laid a kill on.
func (l *leaseState) largestEnded() (proc, bool) {
	var best proc
	found := false
	consider := func(p proc) {
		if p.class == classDriver || p.Peak < heavyFloor || l.oomPIDs[p.PID] {
			return
		}
		if !found || p.held > best.held {
			best, found = p, true
		}
	}
	for _, p := range l.ended {
		consider(p)
	}
	for _, p := range l.procs {
		if p.exiting {
			consider(p)
		}
	}
	return best, found
}

// oomKilled counts one OOM kill of process p of lease id, of rss bytes
// when killed as far as the kernel said (0: unknown).
func (e *engine) oomKilled(id string, p proc, rss uint64, from string, now time.Time) {
	ls := e.leases[id]
	reached := max(rss, p.Peak, p.held)
	ls.oomKills++
	e.oom.total++
	if p.PID > 0 {
		if ls.oomPIDs == nil {
			ls.oomPIDs = map[int]bool{}
		}
		ls.oomPIDs[p.PID] = true
	}
	if p.class != classDriver {
		ls.oom[p.class] = max(ls.oom[p.class], reached)
	}
	e.hist.recordOOM(ls.uid, ls.name, p.class, reached, now)
	args := []any{"lease", id, "name", ls.name, "uid", ls.uid, "class", p.class.String(), "size", bytesize.Human(reached), "from", from}
	detail := fmt.Sprintf("a %s job at %s (from the %s)", p.class, bytesize.Human(reached), from)
	if p.PID > 0 {
		args = append(args, "pid", p.PID, "task", p.Name)
		detail = fmt.Sprintf("%s, pid %d (%s)", detail, p.PID, api.Printable(p.Name))
	}
	e.kills = append(e.kills, api.Event{Kind: api.EventOOMKill, Time: now, Lease: id, Name: ls.name, Kills: 1, Detail: detail})
	e.log.Warn("a job of a lease was OOM-killed; its next build expects a job twice that size", args...)
}

// oomWatch reads the tick's OOM kills for the engine: from the kernel log
// when it can be read, else from the kill counters.
type oomWatch struct {
	klog   *memory.KernelLog
	domain *memory.Domain
	log    hclog.Logger
	// The counters at the last tick; counted tells whether the domain's
	// was read yet.
	domainCount uint64
	counted     bool
	groups      map[string]uint64
}

func newOOMWatch(domain *memory.Domain, log hclog.Logger) *oomWatch {
	w := &oomWatch{domain: domain, log: log, groups: map[string]uint64{}}
	klog, err := memory.OpenKernelLog("")
	if err != nil {
		log.Info("OOM kills are counted from the memory counters and laid on the largest job that ends with them; "+
			"run tokend as root (with CAP_SYSLOG) so it reads the kernel's own reports", "error", err)
		w.read(nil)
		return w
	}
	w.klog = klog
	return w
}

// source is how kills are seen, for status.
func (w *oomWatch) source() string {
	if w.klog != nil {
		return OOMFromKernelLog
	}
	return OOMFromCounters
}

// read fills in's kills, or counted kills, since the last tick.
func (w *oomWatch) read(in *tickInput) {
	if w.klog != nil {
		kills, lost, err := w.klog.OOMKills()
		if lost > 0 {
			w.log.Warn("the kernel overwrote log records before tokend read them; OOM kills among them are missed", "records", lost)
		}
		w.report(err)
		if in != nil {
			in.OOMKills = kills
		}
		return
	}
	n, err := w.domain.OOMKills()
	w.report(err)
	if err == nil {
		if w.counted && in != nil {
			in.OOMCountedDomain = int(n - min(w.domainCount, n))
		}
		w.domainCount, w.counted = n, true
	}
	if in == nil {
		return
	}
	seen := map[string]bool{}
	for _, li := range in.Leases {
		if li.Cgroup == "" {
			continue
		}
		seen[li.Cgroup] = true
		n, ok, err := memory.GroupOOMKills(li.Cgroup)
		if err != nil || !ok {
			continue
		}
		if prev, known := w.groups[li.Cgroup]; known && n > prev {
			if in.OOMCounted == nil {
				in.OOMCounted = map[string]int{}
			}
			in.OOMCounted[li.ID] += int(n - prev)
		}
		w.groups[li.Cgroup] = n
	}
	for g := range w.groups {
		if !seen[g] {
			delete(w.groups, g)
		}
	}
}

// report logs a read error.
func (w *oomWatch) report(err error) {
	if err != nil {
		w.log.Warn("cannot read OOM kills", "error", err)
	}
}

// close closes the kernel log.
func (w *oomWatch) close() error {
	if w.klog == nil {
		return nil
	}
	return w.klog.Close()
}
