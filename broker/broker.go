package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/jobserver"
)

// Options configure a Broker. The zero value of each field means its
// documented default.
type Options struct {
	// RuntimeDir holds the state file and the leases' FIFOs.
	RuntimeDir string
	// Budget is the number of jobs the host may run at once, implicit
	// slots included. Zero leaves it to Steer (tokend's memory
	// controller), and until anything steers, the number of usable CPUs.
	Budget int
	// Tick is how often the broker looks at every lease. Default 100ms.
	Tick time.Duration
	// Grace is how long after a client closed a FIFO the broker waits
	// before it looks for remaining holders. Default 300ms.
	Grace time.Duration
	// ProcDir is where processes are listed. Default /proc.
	ProcDir string
	// Cgroups, if set, makes a cgroup for each lease that asks for one.
	Cgroups LeaseCgroups
	// LeasesPerUser is how many leases one user other than root may hold.
	// Default DefaultLeasesPerUser.
	LeasesPerUser int
	// OOMScoreAdj is the oom_score_adj every lease's processes take, so
	// that when the kernel's OOM killer fires anyway it takes a build job
	// and not the desktop; 0 leaves them alone. Clients apply it (the
	// setup hook, tokenctl run), learning it from the gate and the
	// registration answer.
	OOMScoreAdj int
	Logger      hclog.Logger
}

// ownerCheckInterval is how often the broker looks for leases whose owner
// is gone. It is the fallback for an owner that died without ending its
// lease (a killed tokenctl, a nix build whose hook cannot end it), so a
// second is soon enough, and reading every owner's /proc entry on every
// tick was most of tokend's own CPU.
const ownerCheckInterval = time.Second

// moveStep bounds how many tokens one pass takes from a lease to give to
// another, so a build between two jobs is not stripped at once.
const moveStep = 2

// Broker owns the host's budget of job tokens and the leases it feeds.
type Broker struct {
	opts Options
	log  hclog.Logger
	run  *runDir

	mu             sync.Mutex
	budget         int
	budgetReason   string
	operatorBudget int // non-zero while an operator has pinned the budget
	steered        int // the budget tokend decides (Steer); 0 until it does
	steerReason    string
	memory         *api.MemoryStatus // the memory controller's view, once it has one
	leaseMemory    map[string]api.LeaseMemory
	leases         map[string]*Lease
	byWatch        map[int]watched
	reclaimedTotal int
	inflatedTotal  int
	violations     int
	lastViolation  string
	dirty          bool // state differs from the state file
	ownersChecked  time.Time

	scans        chan scanResult // the holder scan's answer
	scanSince    time.Time       // when the scan under way started; zero when none is
	scanReported bool            // a stuck scan was logged
	watch        *fifoWatch
	wake         chan struct{}
	admissions   chan struct{} // closed and replaced when a lease is admitted or removed
	collectors   sync.WaitGroup
	collectCtx   context.Context
	stopCollect  context.CancelFunc
}

// New opens the runtime directory, re-adopts the leases a previous broker
// left in its state file, and removes FIFOs no lease owns.
func New(opts Options) (*Broker, error) {
	if opts.RuntimeDir == "" {
		return nil, errors.New("broker: no runtime directory given")
	}
	if opts.Tick <= 0 {
		opts.Tick = 100 * time.Millisecond
	}
	if opts.Grace <= 0 {
		opts.Grace = 300 * time.Millisecond
	}
	if opts.ProcDir == "" {
		opts.ProcDir = "/proc"
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.LeasesPerUser <= 0 {
		opts.LeasesPerUser = DefaultLeasesPerUser
	}
	if opts.Budget < 0 {
		return nil, fmt.Errorf("broker: budget %d is negative", opts.Budget)
	}
	run, err := openRunDir(opts.RuntimeDir)
	if err != nil {
		return nil, err
	}
	watch, err := newFIFOWatch()
	if err != nil {
		run.close()
		return nil, err
	}
	collectCtx, stopCollect := context.WithCancel(context.Background())
	b := &Broker{
		opts:        opts,
		log:         opts.Logger,
		run:         run,
		leases:      map[string]*Lease{},
		byWatch:     map[int]watched{},
		watch:       watch,
		wake:        make(chan struct{}, 1),
		scans:       make(chan scanResult, 1),
		admissions:  make(chan struct{}),
		collectCtx:  collectCtx,
		stopCollect: stopCollect,
	}
	if err := b.adopt(); err != nil {
		watch.close()
		run.close()
		stopCollect()
		return nil, err
	}
	return b, nil
}

// adopt takes over the leases of the state file and cleans stale FIFOs.
func (b *Broker) adopt() error {
	st, err := loadState(b.run)
	if err != nil {
		return err
	}
	st.Leases = b.setAsideBad(st.Leases)
	b.reclaimedTotal, b.inflatedTotal = st.ReclaimedTotal, st.InflatedTotal
	b.operatorBudget = st.OperatorBudget
	b.applyBudget()
	for _, s := range st.Leases {
		f, err := jobserver.OpenOwnedBy(b.run.fifoPath(s.ID), s.Granted, fifoOwner(s.UID, s.Owner.Dir))
		if err != nil {
			// Its clients hold whatever they hold; the tokens are lost to
			// the budget either way, so count them and go on.
			b.log.Warn("lease lost its fifo; writing off its tokens", "lease", s.ID, "name", s.Name, "granted", s.Granted, "error", err)
			b.reclaimedTotal += s.Granted
			b.dirty = true
			continue
		}
		l := &Lease{
			ID: s.ID, Name: s.Name, Created: s.Created, Owner: s.Owner, UID: s.UID, GID: s.GID,
			Features: s.Features, Cgroup: s.Cgroup, ownCgroup: s.OwnCgroup, fifo: f, reclaimed: s.Reclaimed,
			inflated: s.Inflated, admitted: s.Admitted, ending: s.Ending, endReason: s.EndReason,
			joined: s.Joined, asked: s.Asked,
		}
		if s.Gate {
			if l.gate, err = openGate(gatePath(b.run.path, s.ID)); err != nil {
				// The build reads a stamp that no longer moves and goes on
				// without waiting; admit it so it is counted as it runs.
				b.log.Warn("lease lost its gate; admitting it", "lease", s.ID, "name", s.Name, "error", err)
				l.admitted = true
			}
		}
		if err := b.track(l); err != nil {
			f.Close()
			return err
		}
		// A holder may have closed while nobody watched.
		l.closeSeen = time.Now()
		free, _ := f.Free()
		b.log.Info("lease adopted", "lease", l.ID, "name", l.Name, "granted", s.Granted, "free", free)
	}
	return b.removeStale()
}

// watched is what an inotify watch is on: a lease's FIFO, or its gate.
type watched struct {
	lease *Lease
	gate  bool
}

// track makes l known to the broker and watches its FIFO and gate.
func (b *Broker) track(l *Lease) error {
	id, err := statID(l.fifo.Path())
	if err != nil {
		return fmt.Errorf("lease %s: %w", l.ID, err)
	}
	wd, err := b.watch.add(l.fifo.Path())
	if err != nil {
		return err
	}
	b.byWatch[wd] = watched{lease: l}
	if l.gate != nil {
		gwd, err := b.watch.add(l.gate.path)
		if err != nil {
			b.watch.remove(wd)
			delete(b.byWatch, wd)
			return err
		}
		b.byWatch[gwd] = watched{lease: l, gate: true}
	}
	l.inode = id
	b.leases[l.ID] = l
	return nil
}

// untrack forgets l and stops watching its files.
func (b *Broker) untrack(l *Lease) {
	for wd, w := range b.byWatch {
		if w.lease == l {
			b.watch.remove(wd)
			delete(b.byWatch, wd)
		}
	}
	delete(b.leases, l.ID)
}

// LeaseRequest asks for a new lease.
type LeaseRequest struct {
	Name     string
	Owner    api.Owner
	UID, GID int
	Features []string
	// Wait asks for admission before the build starts, so its implicit
	// slot does not push the host over the budget. Without it the lease
	// is admitted at once: for builds that already run.
	Wait bool
	// NewCgroup asks for a cgroup of the lease's own, for a command not
	// started yet (tokenctl run); made only if Options.Cgroups is set.
	NewCgroup bool
	// Cgroup is the existing cgroup v2 directory the build runs in (a nix
	// build with use-cgroups); it may appear only after registration.
	Cgroup string
	// Gate asks for a gate file (see gate): the build is already running
	// and waits for admission on its own side, by reading the gate, before
	// it starts parallel jobs. Until it first reads the gate it holds no
	// slot. A nix build.
	Gate bool
}

// ErrNotFound means no lease has the given ID.
var ErrNotFound = errors.New("no such lease")

// Register creates a lease with its own FIFO. The lease starts with no
// tokens; the next pass gives it its share, so registering never waits.
func (b *Broker) Register(req LeaseRequest) (*Lease, error) {
	if err := checkName(req.Name); err != nil {
		return nil, err
	}
	if req.Owner.PID <= 0 && req.Owner.Dir == "" {
		return nil, errors.New("lease needs an owner: a process ID or a directory whose end ends the lease")
	}
	if req.Owner.Dir != "" && !filepath.IsAbs(req.Owner.Dir) {
		return nil, fmt.Errorf("owner directory %q is not an absolute path", req.Owner.Dir)
	}
	if req.Cgroup != "" && (req.NewCgroup || !filepath.IsAbs(req.Cgroup)) {
		return nil, fmt.Errorf("cgroup %q: want an absolute path, and not together with a new cgroup", req.Cgroup)
	}
	if err := checkOwner(req.UID, req); err != nil {
		return nil, err
	}
	if req.Owner.PID > 0 {
		start, err := processStart(req.Owner.PID)
		if err != nil {
			return nil, fmt.Errorf("owner process %d: %w", req.Owner.PID, err)
		}
		req.Owner.Start = start
	}
	if why := ownerGone(req.Owner); why != "" {
		return nil, errors.New(why)
	}
	var raw [6]byte
	rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	f, err := jobserver.Create(b.run.fifoPath(id), fifoAccess(req.UID, req.GID, req.Owner.Dir))
	if err != nil {
		return nil, err
	}
	l := &Lease{
		ID: id, Name: req.Name, Created: time.Now(), Owner: req.Owner,
		UID: req.UID, GID: req.GID, Features: req.Features, Cgroup: req.Cgroup, fifo: f,
		admitted: !req.Wait && !req.Gate,
	}
	if req.Gate {
		if l.gate, err = createGate(gatePath(b.run.path, id), req.GID); err == nil {
			err = l.gate.write(false, b.opts.OOMScoreAdj, l.Created)
		}
		if err != nil {
			b.removeFiles(l)
			return nil, err
		}
	}
	if req.NewCgroup && b.opts.Cgroups != nil {
		// A build without a cgroup still runs; it only cannot be frozen.
		if dir, err := b.opts.Cgroups.Make(id); err != nil {
			b.log.Warn("cannot make the lease's cgroup; its command runs without one", "lease", id, "name", req.Name, "error", err)
		} else {
			l.Cgroup, l.ownCgroup = dir, true
		}
	}
	b.mu.Lock()
	err = b.checkQuota(req.UID)
	if err == nil {
		err = b.track(l)
	}
	if err == nil {
		// Saved before the caller hears of the lease, so a broker killed
		// right after still knows the FIFO a build may be using.
		err = saveState(b.run, b.snapshot(nil))
		if err != nil {
			b.untrack(l)
		} else {
			b.pass()
		}
	}
	b.mu.Unlock()
	if err != nil {
		b.removeFiles(l)
		b.removeCgroup(l)
		return nil, err
	}
	b.log.Info("lease started", "lease", id, "name", req.Name, "uid", req.UID, "owner_pid", req.Owner.PID, "owner_dir", req.Owner.Dir, "cgroup", l.Cgroup)
	return l, nil
}

// End ends a lease: it gets no more tokens, its free tokens go back to the
// budget at once, and the rest when its clients return them or are gone.
// uid is who asks: only the lease's own user or root may end it.
func (b *Broker) End(uid int, id, reason string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.leases[id]
	if !ok {
		return fmt.Errorf("end lease %s: %w", id, ErrNotFound)
	}
	if err := checkEnd(uid, l); err != nil {
		return err
	}
	b.end(l, reason)
	b.pass()
	return nil
}

func (b *Broker) end(l *Lease, reason string) {
	if l.ending {
		return
	}
	l.ending, l.endReason = true, reason
	l.closeSeen = time.Now()
	b.dirty = true
	b.log.Info("lease ending", "lease", l.ID, "name", l.Name, "reason", reason)
}

// SetBudget pins the budget to n for an operator; n = 0 unpins it.
func (b *Broker) SetBudget(n int) error {
	if n < 0 || n > jobserver.MaxTokens {
		return fmt.Errorf("budget %d is outside 0..%d (0 hands the budget back to tokend)", n, jobserver.MaxTokens)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.operatorBudget = n
	b.applyBudget()
	b.dirty = true
	b.pass()
	return nil
}

// Configure changes the configured budget (0: steered, else the CPU
// count), as a reload of the configuration does. An operator's pinned
// budget still wins.
func (b *Broker) Configure(budget int) error {
	if budget < 0 || budget > jobserver.MaxTokens {
		return fmt.Errorf("budget %d is outside 0..%d", budget, jobserver.MaxTokens)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.opts.Budget = budget
	b.applyBudget()
	b.pass()
	return nil
}

func (b *Broker) applyBudget() {
	switch {
	case b.operatorBudget > 0:
		b.setBudget(b.operatorBudget, "operator")
	case b.opts.Budget > 0:
		b.setBudget(b.opts.Budget, "config")
	case b.steered > 0:
		b.setBudget(b.steered, b.steerReason)
	default:
		b.setBudget(runtime.NumCPU(), "cpu count")
	}
}

func (b *Broker) setBudget(n int, reason string) {
	if n != b.budget || reason != b.budgetReason {
		b.log.Info("budget changed", "from", b.budget, "to", n, "reason", reason)
	}
	b.budget, b.budgetReason = n, reason
}

// Run moves tokens until ctx ends, then saves the state and closes the
// FIFOs, leaving them on disk so running builds go on and a restarted
// broker adopts them.
func (b *Broker) Run(ctx context.Context) error {
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go b.watch.run(watchCtx)
	tick := time.NewTicker(b.opts.Tick)
	defer tick.Stop()
	events := b.watch.events
	for {
		select {
		case <-ctx.Done():
			return b.shutdown()
		case ev, ok := <-events:
			if !ok {
				b.log.Error("fifo watch stopped; leaked tokens are now found only when leases end")
				events = nil
				continue
			}
			b.onFIFOEvent(ev)
		case <-b.wake:
			b.mu.Lock()
			b.pass()
			b.mu.Unlock()
		case r := <-b.scans:
			b.reclaim(r)
		case <-tick.C:
			b.tick()
		}
	}
}

func (b *Broker) onFIFOEvent(ev fifoEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	w, ok := b.byWatch[ev.wd]
	if !ok {
		return
	}
	l := w.lease
	switch {
	case w.gate:
		// The build read its gate: it asks for its slot from now on.
		if !ev.close && l.asked.IsZero() && !l.ending {
			l.asked = time.Now()
			b.dirty = true
			b.log.Info("lease asks for admission", "lease", l.ID, "name", l.Name)
			b.poke()
		}
	case ev.close:
		l.closeSeen = time.Now()
	default:
		l.opens++
		if !l.joined {
			l.joined = true
			b.dirty = true
		}
	}
}

func (b *Broker) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// tick is one regular pass: owners, holders, tokens, state.
func (b *Broker) tick() {
	b.mu.Lock()
	if now := time.Now(); now.Sub(b.ownersChecked) >= ownerCheckInterval {
		b.ownersChecked = now
		for _, l := range b.leases {
			if l.ending {
				continue
			}
			if why := ownerGone(l.Owner); why != "" {
				b.end(l, why)
			}
		}
	}
	b.startScan(b.dueScans())
	defer b.mu.Unlock()
	b.pass()
	b.beat()
	b.removeEnded()
	if b.dirty {
		if err := saveState(b.run, b.snapshot(nil)); err != nil {
			b.log.Error("cannot save state; a restart will lose track of leases", "error", err)
		} else {
			b.dirty = false
		}
	}
}

// scanRequest is a lease to look for holders of, with the open count seen
// before looking, so an open during the scan voids the answer.
type scanRequest struct {
	lease *Lease
	opens int
}

func (b *Broker) dueScans() []scanRequest {
	var due []scanRequest
	now := time.Now()
	for _, l := range b.leases {
		if l.removing || l.closeSeen.IsZero() || now.Sub(l.closeSeen) < b.opts.Grace {
			continue
		}
		due = append(due, scanRequest{lease: l, opens: l.opens})
	}
	return due
}

// reclaim writes off the tokens of leases that nobody holds open any more:
// whatever they were granted and is not in the FIFO will never come back.
func (b *Broker) reclaim(r scanResult) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.scanSince = time.Time{}
	if r.err != nil {
		b.log.Error("cannot look for jobserver holders", "error", r.err)
		return
	}
	due, counts := r.due, r.counts
	for _, s := range due {
		l := s.lease
		if l.opens != s.opens {
			continue // a client came while we looked; look again after it closes
		}
		l.closeSeen = time.Time{}
		if counts[l.inode] > 0 {
			if l.ending {
				l.closeSeen = time.Now() // keep looking until the last one is gone
			}
			continue
		}
		if l.ending {
			l.owed = 0
			if l.collector != nil {
				l.collector()
			}
			if _, err := l.fifo.Take(jobserver.MaxTokens); err != nil {
				b.log.Error("cannot take tokens back", "lease", l.ID, "error", err)
			}
			l.removing = true
		}
		free, err := l.fifo.Free()
		if err != nil {
			b.log.Error("cannot count tokens", "lease", l.ID, "error", err)
			continue
		}
		if free > l.fifo.Granted() {
			continue // inflated: the pass takes the excess out first
		}
		leaked := l.fifo.Granted() - free
		if leaked == 0 {
			continue
		}
		if err := l.fifo.Forget(leaked); err != nil {
			b.log.Error("cannot write off leaked tokens", "lease", l.ID, "error", err)
			continue
		}
		l.reclaimed += leaked
		b.reclaimedTotal += leaked
		b.dirty = true
		b.log.Info("reclaimed leaked tokens", "lease", l.ID, "name", l.Name, "tokens", leaked)
	}
}

// removeEnded deletes ended leases once nothing holds them and their
// collector has stopped, so no poll(2) can race the close.
func (b *Broker) removeEnded() {
	for id, l := range b.leases {
		if !l.removing || l.collector != nil {
			continue
		}
		if n := l.fifo.Granted(); n != 0 {
			b.log.Error("ended lease still counts tokens; writing them off", "lease", id, "tokens", n)
			l.fifo.Forget(n)
			b.reclaimedTotal += n
		}
		b.untrack(l)
		b.removeFiles(l)
		b.removeCgroup(l)
		b.dirty = true
		b.announce()
		b.log.Info("lease ended", "lease", id, "name", l.Name, "reason", l.endReason, "reclaimed", l.reclaimed)
	}
}

// pass observes every lease and moves tokens toward their shares. It is
// cheap (one ioctl per lease and a few reads or writes), so it runs on
// every tick and after every event.
func (b *Broker) pass() {
	leases := b.sorted()
	use := make([]usage, len(leases))
	active := 0
	for i, l := range leases {
		if extra, err := l.fifo.TakeExcess(); err != nil {
			b.log.Error("cannot take excess tokens", "lease", l.ID, "error", err)
		} else if extra > 0 {
			l.inflated += extra
			b.inflatedTotal += extra
			b.dirty = true
			b.log.Warn("lease fifo held more tokens than granted; took the excess", "lease", l.ID, "name", l.Name, "excess", extra)
		}
		free, err := l.fifo.Free()
		if err != nil {
			b.log.Error("cannot count tokens", "lease", l.ID, "error", err)
			free = 0
		}
		l.prevFree, l.lastFree = l.lastFree, free
		use[i] = usage{
			granted: l.fifo.Granted(),
			free:    free,
			idle:    min(l.prevFree, free),
			hungry:  free == 0 && !l.ending,
			ending:  l.ending,
			out:     !l.ending && !l.counted(),
		}
		l.hungry = use[i].hungry
		if l.counted() {
			active++
		}
	}
	allowance := max(b.budget-active, 0)
	target := shares(allowance, use)

	granted := 0
	for _, u := range use {
		granted += u.granted
	}
	debt := granted > allowance
	for i, l := range leases {
		surplus := use[i].granted - target[i]
		if surplus <= 0 {
			l.owed = 0
			continue
		}
		step := surplus
		if !debt && !use[i].ending {
			step = min(surplus, moveStep)
		}
		want := min(step, use[i].free)
		taken, err := l.fifo.Take(want)
		if err != nil {
			b.log.Error("cannot take tokens back", "lease", l.ID, "error", err)
		}
		if taken > 0 {
			b.dirty = true
			b.log.Debug("took tokens", "lease", l.ID, "tokens", taken, "target", target[i], "debt", debt)
		}
		use[i].granted -= taken
		use[i].free -= taken
		if taken < want {
			use[i].free = 0 // clients took the rest since the count: the pipe ran dry
		}
		l.lastFree = use[i].free
		granted -= taken
		l.owed = use[i].granted - target[i]
		b.startCollector(l)
	}

	// Admit before handing out, so a lease's first tokens are in its FIFO
	// by the time its client hears it may start: ninja looks for tokens
	// when it starts and then only when one of its own jobs ends.
	b.admit(leases, granted)
	pool := allowance - granted
	gives := make([]int, len(leases))
	for i, l := range leases {
		want := target[i] - use[i].granted
		if want <= 0 || pool <= 0 || !l.admitted {
			continue
		}
		gives[i] = min(want, pool)
		pool -= gives[i]
	}
	if !b.persist(leases, gives) {
		gives = make([]int, len(leases))
	}
	for i, l := range leases {
		give := gives[i]
		if give == 0 {
			continue
		}
		if err := l.fifo.Add(give); err != nil {
			b.log.Error("cannot add tokens", "lease", l.ID, "error", err)
			continue
		}
		b.log.Debug("gave tokens", "lease", l.ID, "tokens", give, "target", target[i])
		use[i].granted += give
		use[i].free += give
		l.lastFree += give
		granted += give
	}
	b.check(leases, use, target, allowance)
}

// admit lets waiting leases start, oldest first, while the implicit slots
// of the admitted leases and the tokens handed out leave room for one more.
// Allowance already counts waiting leases, so their room is kept free for
// them as tokens come back.
func (b *Broker) admit(leases []*Lease, granted int) {
	room := b.budget - granted
	for _, l := range leases {
		if l.admitted && !l.ending {
			room--
		}
	}
	for _, l := range leases {
		if l.admitted || l.ending || !l.asking() || room < 1 {
			continue
		}
		l.admitted = true
		room--
		b.dirty = true
		b.announce()
		since := l.Created
		if l.gate != nil {
			since = l.asked
			if err := l.gate.write(true, b.opts.OOMScoreAdj, time.Now()); err != nil {
				b.log.Error("cannot open the gate of an admitted lease; its build goes on once it sees the stamp stop", "lease", l.ID, "error", err)
			}
		}
		b.log.Info("lease admitted", "lease", l.ID, "name", l.Name, "waited", time.Since(since).Round(time.Millisecond))
	}
}

// beat rewrites the gate of every build that waits in its sandbox, so it
// can tell a tokend that is alive and has no room from one that is gone.
func (b *Broker) beat() {
	now := time.Now()
	for _, l := range b.leases {
		if l.gate == nil || l.admitted || l.ending {
			continue
		}
		if err := l.gate.write(false, b.opts.OOMScoreAdj, now); err != nil {
			b.log.Error("cannot write a waiting build's gate; it will go on without tokend", "lease", l.ID, "error", err)
		}
	}
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

// check verifies the accounting after a pass. Held tokens are derived, so
// what can break is a negative count, a FIFO holding more than it was
// granted, and tokens over the allowance while free ones sit unclaimed.
func (b *Broker) check(leases []*Lease, use []usage, target []int, allowance int) {
	var problems []string
	granted := 0
	for i, l := range leases {
		g := l.fifo.Granted()
		if g != use[i].granted {
			problems = append(problems, fmt.Sprintf("lease %s: fifo counts %d granted, pass counted %d", l.ID, g, use[i].granted))
		}
		if use[i].free < 0 || use[i].free > g {
			problems = append(problems, fmt.Sprintf("lease %s: %d free of %d granted", l.ID, use[i].free, g))
		}
		if g < 0 || g > jobserver.MaxTokens {
			problems = append(problems, fmt.Sprintf("lease %s: %d granted", l.ID, g))
		}
		granted += g
	}
	if granted > allowance {
		// Over the allowance, no lease may keep a free token above its share.
		for i, l := range leases {
			if use[i].free > 0 && use[i].granted > target[i] {
				problems = append(problems, fmt.Sprintf("granted %d over allowance %d, yet lease %s keeps %d free above its share of %d", granted, allowance, l.ID, use[i].free, target[i]))
			}
		}
	}
	if len(problems) == 0 {
		return
	}
	b.violations += len(problems)
	b.lastViolation = problems[0]
	b.log.Error("token accounting invariant broken", "problems", strings.Join(problems, "; "))
}

// startCollector takes tokens back from l as its clients return them,
// until what it owes is paid or the next pass decides it owes nothing.
func (b *Broker) startCollector(l *Lease) {
	if l.owed <= 0 || l.collector != nil {
		return
	}
	ctx, cancel := context.WithCancel(b.collectCtx)
	l.collector = cancel
	b.collectors.Add(1)
	go func() {
		defer b.collectors.Done()
		for {
			err := l.fifo.AwaitFree(ctx)
			b.mu.Lock()
			if err == nil && l.owed > 0 {
				taken, terr := l.fifo.Take(l.owed)
				if terr != nil {
					b.log.Error("cannot take tokens back", "lease", l.ID, "error", terr)
				}
				l.owed -= taken
				l.lastFree = max(l.lastFree-taken, 0)
				b.dirty = b.dirty || taken > 0
				b.persist(nil, nil)
				if taken > 0 {
					b.log.Debug("collected returned tokens", "lease", l.ID, "tokens", taken, "still_owed", l.owed)
					b.poke()
				}
			}
			if err != nil || l.owed <= 0 {
				if err != nil && !errors.Is(err, context.Canceled) {
					b.log.Error("cannot wait for tokens", "lease", l.ID, "error", err)
				}
				l.collector = nil
				cancel()
				b.mu.Unlock()
				return
			}
			b.mu.Unlock()
		}
	}()
}

// sorted lists leases oldest first, so passes are deterministic.
func (b *Broker) sorted() []*Lease {
	out := make([]*Lease, 0, len(b.leases))
	for _, l := range b.leases {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// snapshot is the state to save, counting extra tokens as granted to the
// leases they are keyed by.
func (b *Broker) snapshot(extra map[string]int) savedState {
	s := savedState{Version: stateVersion, OperatorBudget: b.operatorBudget, ReclaimedTotal: b.reclaimedTotal, InflatedTotal: b.inflatedTotal, Leases: []savedLease{}}
	for _, l := range b.sorted() {
		s.Leases = append(s.Leases, savedLease{
			ID: l.ID, Name: l.Name, Created: l.Created, Owner: l.Owner, UID: l.UID, GID: l.GID,
			Features: l.Features, Cgroup: l.Cgroup, OwnCgroup: l.ownCgroup, Granted: l.fifo.Granted() + extra[l.ID], Reclaimed: l.reclaimed, Inflated: l.inflated,
			Admitted: l.admitted, Ending: l.ending, EndReason: l.endReason,
			Gate: l.gate != nil, Joined: l.joined, Asked: l.asked,
		})
	}
	return s
}

func (b *Broker) shutdown() error {
	b.stopCollect()
	b.collectors.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	err := saveState(b.run, b.snapshot(nil))
	for _, l := range b.leases {
		err = errors.Join(err, l.fifo.Close())
		if l.gate != nil {
			err = errors.Join(err, l.gate.close())
		}
	}
	err = errors.Join(err, b.watch.close(), b.run.close())
	b.log.Info("stopped; leases stay on disk for the next start", "leases", len(b.leases))
	return err
}

// Status reports the budget and every lease.
func (b *Broker) Status() api.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := api.Status{
		Budget: b.budget, BudgetReason: b.budgetReason, ReclaimedTotal: b.reclaimedTotal,
		InflatedTotal: b.inflatedTotal, InvariantViolations: b.violations, LastViolation: b.lastViolation,
		Leases: []api.LeaseStatus{},
	}
	if b.memory != nil {
		m := *b.memory
		s.Memory = &m
	}
	for _, l := range b.sorted() {
		free, err := l.fifo.Free()
		if err != nil {
			free = l.lastFree
		}
		g := l.fifo.Granted()
		ls := api.LeaseStatus{
			ID: l.ID, Name: l.Name, Created: l.Created, Owner: l.Owner, UID: l.UID, Features: l.Features,
			FIFO: l.fifo.Path(), Cgroup: l.Cgroup, Granted: g, Free: min(free, g), Held: max(g-free, 0), Owed: l.owed,
			Reclaimed: l.reclaimed, Inflated: l.inflated, Admitted: l.admitted, Hungry: l.hungry,
			Ending: l.ending, EndReason: l.endReason, State: l.state(), Asked: l.asked,
		}
		if m, ok := b.leaseMemory[l.ID]; ok {
			ls.Memory = &m
		}
		s.Leases = append(s.Leases, ls)
		s.Granted += g
		if l.counted() {
			s.ActiveLeases++
		}
	}
	s.Allowance = max(s.Budget-s.ActiveLeases, 0)
	s.Debt = max(s.Granted-s.Allowance, 0)
	return s
}

// announce wakes everyone waiting in AwaitAdmission to look again.
func (b *Broker) announce() {
	close(b.admissions)
	b.admissions = make(chan struct{})
}

// AwaitAdmission waits until the lease with the given ID is admitted, or
// ctx ends, and returns the lease as it then is.
func (b *Broker) AwaitAdmission(ctx context.Context, id string) (api.LeaseStatus, error) {
	for {
		b.mu.Lock()
		l, ok := b.leases[id]
		admitted, changed := ok && l.admitted, b.admissions
		b.mu.Unlock()
		if !ok || admitted {
			return b.Lease(id)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return b.Lease(id)
		}
	}
}

// Lease returns the lease with the given ID.
func (b *Broker) Lease(id string) (api.LeaseStatus, error) {
	for _, l := range b.Status().Leases {
		if l.ID == id {
			return l, nil
		}
	}
	return api.LeaseStatus{}, fmt.Errorf("lease %s: %w", id, ErrNotFound)
}
