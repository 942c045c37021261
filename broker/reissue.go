package broker

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/fileid"
)

// A token in a client's hands cannot be taken back. make, ninja and cargo
// hold one only while a job of theirs runs on it, so a lease above its
// share gives its tokens back as its jobs end (the collector takes them
// for the waiters). A client that keeps tokens without running jobs (a
// stuck one, or a hostile one) would keep them forever. So while a lease
// is above its share and another waits, the broker counts the jobs its
// clients run; tokens held beyond them in every count for ShareGrace are
// written off (jobserver.FIFO.Reissue) and handed to the waiters. The
// tokens the lease's clients return next are swallowed until it has paid
// them back, and until then it is given no tokens beyond those its clients
// hold (passState.grants).

// jobCountInterval is how often the jobs of leases above their share are
// counted: often enough that one grace holds several counts, seldom
// enough that walking /proc costs little.
func (b *Broker) jobCountInterval() time.Duration {
	return min(max(b.opts.ShareGrace/5, 200*time.Millisecond), 5*time.Second)
}

// jobCount is one count of a lease's jobs, with the tokens its clients
// held when it started.
type jobCount struct {
	lease *Lease
	held  int
}

// jobCountResult is what one job count found.
type jobCountResult struct {
	counts []jobCount
	jobs   map[fileid.ID]int
	err    error
}

// startJobCount counts, in a goroutine of its own, the jobs of the leases
// above their share while another waits, unless a count is under way or
// the last one was less than jobCountInterval ago. Called with b.mu held.
func (b *Broker) startJobCount(now time.Time) {
	if b.jobCounting || now.Sub(b.jobsCounted) < b.jobCountInterval() {
		return
	}
	var counts []jobCount
	want := map[fileid.ID]bool{}
	for _, l := range b.leases {
		if l.overSince.IsZero() || l.ending {
			l.idleSince = time.Time{}
			continue
		}
		counts = append(counts, jobCount{lease: l, held: b.heldByClients(l)})
		want[l.inode] = true
	}
	if len(counts) == 0 {
		return
	}
	b.jobCounting, b.jobsCounted = true, now
	holder := b.holderPID()
	go func() {
		jobs, err := countJobs(b.opts.ProcDir, want, holder)
		b.jobCounts <- jobCountResult{counts: counts, jobs: jobs, err: err}
	}()
}

// heldByClients is how many of l's granted tokens its clients hold.
func (b *Broker) heldByClients(l *Lease) int {
	free, err := l.fifo.Free()
	if err != nil {
		return 0
	}
	return max(l.fifo.Granted()-free, 0)
}

// jobsCountedNow takes a job count's answer: a lease that held tokens
// beyond its jobs in every count for ShareGrace, above its share while
// another waited, has those tokens (down to its share) reissued.
func (b *Broker) jobsCountedNow(r jobCountResult) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.jobCounting = false
	if r.err != nil {
		b.log.Error("cannot count the jobs of leases above their share", "error", r.err)
		return
	}
	now := time.Now()
	for _, c := range r.counts {
		l := c.lease
		if l.overSince.IsZero() || l.ending || l.removing {
			l.idleSince = time.Time{}
			continue
		}
		// A client that took a token during the count may have started
		// its job after the count passed it: the fewer held counts.
		held := min(c.held, b.heldByClients(l))
		jobs, seen := r.jobs[l.inode]
		l.jobs = jobs
		if !seen {
			// No client seen: tokend may not read their /proc entries
			// (run as an ordinary user), or they closed the FIFO, and
			// reclaim takes care of what they hold then.
			l.idleSince = time.Time{}
			continue
		}
		idle := held - max(jobs-1, 0) // the first job runs in the implicit slot
		if idle <= 0 {
			l.idleSince = time.Time{}
			continue
		}
		if l.idleSince.IsZero() {
			l.idleSince, l.idleLeast = b.jobsCounted, idle
		}
		l.idleLeast = min(l.idleLeast, idle)
		if now.Sub(l.idleSince) < b.opts.ShareGrace {
			continue
		}
		b.reissue(l, jobs, now)
	}
	b.poke()
}

// reissue writes off the tokens l's clients have held beyond their jobs
// for ShareGrace, down to its share, so the next pass hands them to the
// leases that wait.
func (b *Broker) reissue(l *Lease, jobs int, now time.Time) {
	n := min(l.idleLeast, l.fifo.Granted()-l.share, b.heldByClients(l))
	since := l.idleSince
	l.idleSince = time.Time{}
	if n <= 0 {
		return
	}
	if err := l.fifo.Reissue(n); err != nil {
		b.log.Error("cannot reissue tokens", "lease", l.ID, "error", err)
		return
	}
	b.totals.reissued += n
	b.dirty = true
	idle := now.Sub(since).Round(time.Millisecond)
	b.log.Warn("lease holds tokens beyond the jobs it runs while other leases wait; reissued them to the waiting leases, and swallow what it returns until paid back",
		"lease", l.ID, "name", l.Name, "tokens", n, "jobs", jobs, "share", l.share, "for", idle)
	b.Record(api.Event{Kind: api.EventReissue, Lease: l.ID, Name: l.Name, Tokens: n, Wait: idle,
		Detail: fmt.Sprintf("%d tokens held beyond its %d jobs for %v, above its share of %d, reissued to the waiting leases", n, jobs, idle, l.share)})
}

// recover swallows what l's clients returned while they owe reissued
// tokens, before the pass counts l's tokens: what the collector did not
// catch, or all of it when the collector is not real-time.
func (b *Broker) recover(l *Lease) {
	if _, err := l.fifo.Recover(); err != nil {
		b.log.Error("cannot swallow returned tokens", "lease", l.ID, "error", err)
	}
}

// countJobs counts, for each FIFO in want that a client was seen to hold,
// the jobs its clients (the processes holding it open but ignore) run: each client's children, or,
// for a client that runs its jobs as threads of its own (rustc's codegen
// units), its threads but the first, whichever is more. Counting too many
// only spares a lease; counting too few would reissue tokens that run
// jobs, so every child counts, a sub-make's shell included.
func countJobs(procDir string, want map[fileid.ID]bool, ignore int) (map[fileid.ID]int, error) {
	match := newFileMatch(want)
	children, threads := map[int]int{}, map[int]int{}
	clients := map[int]map[fileid.ID]bool{}
	err := eachProcess(procDir, ignore, func(pid int, dir string) {
		ppid, n, ok := readTasks(dir)
		if !ok {
			return
		}
		children[ppid]++
		threads[pid] = n
		match.held(dir, func(id fileid.ID) {
			if clients[pid] == nil {
				clients[pid] = map[fileid.ID]bool{}
			}
			clients[pid][id] = true
		})
	})
	jobs := map[fileid.ID]int{}
	for pid, fifos := range clients {
		n := max(children[pid], threads[pid]-1)
		for id := range fifos {
			jobs[id] += n
		}
	}
	return jobs, err
}

// readTasks reads a process's parent and thread count from its stat file;
// ok is false for a process gone or a zombie, which runs nothing.
func readTasks(dir string) (ppid, threads int, ok bool) {
	raw, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid ... num_threads is the 20th field; comm may
	// hold spaces and parentheses.
	s := string(raw)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return 0, 0, false
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 18 || f[0] == "Z" {
		return 0, 0, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	threads, err2 := strconv.Atoi(f[17])
	return ppid, threads, err1 == nil && err2 == nil
}
