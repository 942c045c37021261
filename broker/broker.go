package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
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
	// ShareGrace is how long a lease may hold more than its share while
	// another waits before the broker reports it, and how long its clients
	// may hold tokens beyond their jobs meanwhile before the broker
	// reissues those (reissue.go). Default DefaultShareGrace.
	ShareGrace time.Duration
	// ProcDir is where processes are listed. Default /proc.
	ProcDir string
	// Cgroups, if set, makes a cgroup for each lease that asks for one.
	Cgroups LeaseCgroups
	// Holder, if set, keeps every lease FIFO open in another process, so
	// that tokens survive a crash of tokend.
	Holder FIFOHolder
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

// DefaultShareGrace is how long a lease may keep more than its share while
// another waits before tokend reports it. A waiting build gets each token
// above the share within milliseconds of the job holding it ending (see
// jobserver.Collector), so what lasts this long is a job running longer
// than that on a token above the share, or a client that keeps tokens
// without running jobs, whose tokens are then reissued. 30 s is longer
// than a compile job takes: the report points at links, LTO and hoarders,
// not at a build between jobs.
const DefaultShareGrace = 30 * time.Second

// MaxShareGrace bounds ShareGrace: a report an hour late helps nobody.
const MaxShareGrace = time.Hour

// Broker owns the host's budget of job tokens and the leases it feeds.
// Its work is split by what it does: registry.go, adopt.go and permit.go
// hold the leases and say who may have one, watch.go sees their files
// opened and their owners go, budget.go decides the budget,
// pass.go (with share.go) moves tokens, admission.go lets waiting builds
// start (gate.go for nix builds), jobserver.Collector takes owed tokens back,
// holders.go and reclaim.go write off leaked ones, reissue.go hands
// tokens held without jobs to waiting leases, state.go and rundir.go
// keep it all on disk, status.go reports it, and api.go and socket.go
// serve the control API.
type Broker struct {
	opts      Options
	log       hclog.Logger
	run       *runDir
	watch     *leaseWatch
	wake      chan struct{}
	collector *jobserver.Collector
	events    *events
	metrics   *metrics

	mu            sync.Mutex
	leases        map[string]*Lease
	byWatch       map[int]watched
	budget        int
	budgetReason  string
	sources       budgetSources
	totals        totals
	memory        *api.MemoryStatus // the memory controller's view, once it has one
	leaseMemory   map[string]api.LeaseMemory
	first         string        // the lease whose share is served first (ServeFirst); "" for none
	admissions    chan struct{} // closed and replaced when a lease is admitted or removed
	dirty         bool          // state differs from the state file
	ownersChecked time.Time
	scans         chan scanResult // the holder scan's answer
	scanSince     time.Time       // when the scan under way started; zero when none is
	scanReported  bool            // a stuck scan was logged
	jobCounts     chan jobCountResult
	jobCounting   bool      // a job count is under way
	jobsCounted   time.Time // when the last job count started
	// collected is set by the collector's threads when they took tokens
	// back, so the next pass saves the smaller grant.
	collected atomic.Bool
}

// totals are the broker's counts over every lease it ever had.
type totals struct {
	reclaimed     int // tokens leaked by clients and written off
	inflated      int // bytes clients wrote beyond what they were granted
	reissued      int // tokens held beyond jobs, written off and handed to waiting leases
	violations    int // accounting invariants found broken
	lastViolation string
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
	if opts.ShareGrace <= 0 {
		opts.ShareGrace = DefaultShareGrace
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
	watch, err := newLeaseWatch()
	if err != nil {
		run.close()
		return nil, err
	}
	b := &Broker{
		opts:       opts,
		log:        opts.Logger,
		run:        run,
		watch:      watch,
		wake:       make(chan struct{}, 1),
		events:     newEvents(),
		leases:     map[string]*Lease{},
		byWatch:    map[int]watched{},
		sources:    budgetSources{configured: opts.Budget},
		admissions: make(chan struct{}),
		scans:      make(chan scanResult, 1),
		jobCounts:  make(chan jobCountResult, 1),
	}
	b.metrics = newMetrics(b)
	if b.collector, err = jobserver.NewCollector(b.collectedTokens); err != nil {
		watch.close()
		run.close()
		return nil, err
	}
	if err := b.collector.RealTime(); err != nil {
		b.log.Info("tokens returned by builds above their share are collected at ordinary priority, so their clients often take them again first; give tokend CAP_SYS_NICE or LimitRTPRIO=1 for real-time collection", "error", err)
	}
	if err := b.adopt(); err != nil {
		watch.close()
		run.close()
		b.collector.Close()
		return nil, err
	}
	return b, nil
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
				b.log.Error("inotify watch stopped; leaked tokens are now found only when leases end, and leases end up to a second after their owner")
				events = nil
				continue
			}
			b.onWatchEvent(ev)
		case <-b.wake:
			b.mu.Lock()
			b.pass()
			b.mu.Unlock()
		case r := <-b.scans:
			b.reclaim(r)
		case r := <-b.jobCounts:
			b.jobsCountedNow(r)
		case <-tick.C:
			b.tick()
		}
	}
}

// tick is one regular pass: owners, holders, tokens, state.
func (b *Broker) tick() {
	b.mu.Lock()
	b.endOrphans(time.Now())
	b.startScan(b.settleDue(b.dueScans()))
	defer b.mu.Unlock()
	b.pass()
	b.startJobCount(time.Now())
	b.beat()
	b.removeEnded()
	b.checkpoint()
}

// poke asks Run for a pass soon, from code that cannot run one itself.
func (b *Broker) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *Broker) shutdown() error {
	b.collector.Close()
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
