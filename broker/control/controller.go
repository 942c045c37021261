package control

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker"
	"github.com/tokend/tokend/broker/memory"
	"github.com/tokend/tokend/internal/bytesize"
)

// Config sets up a Controller.
type Config struct {
	Params Params
	// Memory names the domain: Cgroup "" is the host. Pressure "" means
	// the domain's own memory.pressure for a v2 group; for a v1 group that
	// of the lease cgroups' parent, which holds the builds and where the
	// kernel counts the stalls the v1 limit causes; for the host
	// /proc/pressure/memory.
	Memory memory.Config
	// Cgroups makes the tokenctl leases' groups; nil when tokend makes none.
	Cgroups *Cgroups
	// History is the job history (OpenHistory), which New's caller owns.
	History *History
	// CPUs is how many CPUs builds may use; 0 means runtime.NumCPU(),
	// which counts those in this process's affinity mask.
	CPUs int
	// AbandonedGrace is how long a sandbox may hold no process before its
	// lease ends; 0 means DefaultAbandonedGrace.
	AbandonedGrace time.Duration
	Logger         hclog.Logger
}

// Controller sizes the broker's budget from memory: it samples the domain
// and every lease's processes each tick, and steers the budget, freezing
// and thawing leases as a last resort.
type Controller struct {
	b       *broker.Broker
	domain  *memory.Domain
	sampler sampler
	forests forestCache
	cgroups *Cgroups
	hist    *History
	oom     *oomWatch
	engine  *engine
	log     hclog.Logger

	mu   sync.Mutex
	next *Params // parameters to apply at the next tick
	// leases wakes Run when a lease starts, so that its jobs are sized
	// before the broker admits it (see broker's unsized), and when
	// one ends, so that its run is recorded in the history at once rather
	// than at the next tick.
	leases chan struct{}

	placed  map[string]bool      // leases whose build is known to run in its own group
	empty   map[string]time.Time // since when a sandbox lease's directory has held no process
	grace   time.Duration        // how long it may before the lease ends
	stopped map[string]string    // leases the brake stopped by signal: their sandbox
	lastErr string
}

// brakeTarget is what the brake acts on for one lease: its cgroup when its
// processes were sampled there, else its sandbox directory.
type brakeTarget struct {
	cgroup, sandbox string
	uid             int // the lease's user, whose processes alone its group's freeze may reach
}

// New makes a controller for b. It checks that the domain's files can be
// read, so that a misconfiguration stops tokend at start.
func New(b *broker.Broker, c Config) (*Controller, error) {
	p := c.Params.withDefaults()
	if err := p.validate(); err != nil {
		return nil, err
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.AbandonedGrace <= 0 {
		c.AbandonedGrace = DefaultAbandonedGrace
	}
	if c.CPUs <= 0 {
		c.CPUs = runtime.NumCPU()
	}
	mc := c.Memory
	if mc.Pressure == "" && mc.Cgroup != "" && !isCgroup2(mc.Cgroup) && c.Cgroups != nil {
		mc.Pressure = filepath.Join(c.Cgroups.Parent(), "memory.pressure")
	}
	domain, err := memory.NewDomain(mc)
	if err != nil {
		return nil, err
	}
	if _, err := domain.Read(); err != nil {
		return nil, errors.Join(err, domain.Close())
	}
	s, err := newSampler(mc.Proc)
	if err != nil {
		return nil, errors.Join(err, domain.Close())
	}
	if c.History == nil {
		return nil, errors.Join(errors.New("memory controller: no job history given"), domain.Close(), s.mem.Close())
	}
	hist := c.History
	name := "host"
	if mc.Cgroup != "" {
		name = mc.Cgroup
	}
	reserve := "auto"
	if p.Reserve != 0 {
		reserve = bytesize.Human(p.Reserve)
	}
	oom := newOOMWatch(domain, c.Logger)
	c.Logger.Info("memory controller ready", "domain", name, "pressure", domain.PressureFile(),
		"reserve", reserve, "tick", p.Tick, "growth_interval", p.GrowthInterval,
		"cpu_multiple", p.CPUMultiple, "cpus", c.CPUs, "job_estimate", bytesize.Human(p.JobEstimate), "oom_kills_from", oom.source())
	engine := newEngine(p, c.CPUs, name, domain.PressureFile(), hist, c.Logger)
	engine.oomSource = oom.source()
	leases := make(chan struct{}, 1)
	b.Observe(func(e api.Event) {
		if e.Kind == api.EventStart || e.Kind == api.EventEnd {
			select {
			case leases <- struct{}{}:
			default:
			}
		}
	})
	return &Controller{
		b: b, domain: domain, sampler: s, forests: forestCache{mem: s.mem}, cgroups: c.Cgroups, hist: hist,
		oom: oom, engine: engine, leases: leases,
		log:    c.Logger,
		placed: map[string]bool{}, stopped: map[string]string{}, empty: map[string]time.Time{}, grace: c.AbandonedGrace,
	}, nil
}

// Reconfigure changes the parameters from the next tick on, as a reload of
// the configuration does.
func (c *Controller) Reconfigure(p Params) error {
	p = p.withDefaults()
	if err := p.validate(); err != nil {
		return err
	}
	c.mu.Lock()
	c.next = &p
	c.mu.Unlock()
	return nil
}

// Run steers the budget until ctx ends, then thaws what it froze and saves
// the job history.
func (c *Controller) Run(ctx context.Context) error {
	c.thawLeftovers()
	var trigger <-chan time.Time
	w, err := c.domain.Watch(ctx, memory.Trigger{Stall: triggerStall, Window: pressureWindow})
	if err != nil {
		c.log.Warn("no PSI trigger; pressure is seen at each tick only", "error", err)
	} else {
		trigger = w.C
	}
	tick := time.NewTicker(c.engine.p.Tick)
	defer tick.Stop()
	c.tick()
	last := time.Now()
	// soon is a tick brought forward by a lease's start or end, put off
	// until leaseWakeGap after the last one.
	var soon <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			err := c.stop()
			if w != nil {
				err = errors.Join(err, w.Wait())
			}
			return err
		case <-tick.C:
		case <-c.leases:
			if wait := time.Until(last.Add(leaseWakeGap)); wait > 0 {
				if soon == nil {
					soon = time.After(wait)
				}
				continue
			}
		case <-soon:
		case _, ok := <-trigger:
			if !ok {
				c.log.Warn("PSI trigger stopped; pressure is seen at each tick only", "error", w.Wait())
				trigger = nil
				continue
			}
			c.log.Debug("PSI trigger fired")
		}
		c.mu.Lock()
		if c.next != nil {
			c.engine.p = *c.next
			tick.Reset(c.engine.p.Tick)
			c.next = nil
		}
		c.mu.Unlock()
		c.tick()
		last, soon = time.Now(), nil
	}
}

// leaseWakeGap is the least time between a tick and one that a lease's
// start or end brings forward. A tick costs about a millisecond with a
// dozen leases; without the gap, nix starting 125 short builds a second
// (BenchmarkHookLatency) made one tick per start, a quarter of tokend's
// time, and put the hook's p99 over 6 ms. A new lease waits for its
// sizing at most this much longer (see broker's unsized).
const leaseWakeGap = 50 * time.Millisecond

// tick samples, decides and applies the decision.
func (c *Controller) tick() {
	r, err := c.domain.Read()
	if err != nil {
		if msg := err.Error(); msg != c.lastErr {
			c.log.Error("cannot read memory; the budget stays as it is", "error", err)
			c.lastErr = msg
		}
		return
	}
	c.lastErr = ""
	st := c.b.Status()
	in := tickInput{Reading: r}
	targets := map[string]brakeTarget{}
	live := map[string]bool{}
	forest := c.forests.at(time.Now())
	for _, l := range st.Leases {
		live[l.ID] = true
		c.place(l, forest)
		c.endAbandoned(l, forest, time.Now())
		var procs []proc
		var grouped bool
		// A nix build that has not asked for its slot yet runs all the
		// same (configuring, or built without the setup hook and so
		// outside the budget): for memory it counts as running. Only a
		// waiting lease has started nothing that matters yet.
		running := l.State != api.StateWaiting
		if running {
			if procs, grouped, err = c.sampler.lease(l, forest); err != nil {
				c.log.Debug("cannot sample the lease's processes", "lease", l.ID, "error", err)
			}
		}
		target := brakeTarget{uid: l.UID}
		switch {
		case grouped:
			target.cgroup = l.Cgroup
		case l.Owner.PID <= 0 && l.Owner.Dir != "" && len(procs) > 0:
			target.sandbox = l.Owner.Dir
		}
		targets[l.ID] = target
		in.Leases = append(in.Leases, leaseInput{
			ID: l.ID, Name: l.Name, UID: l.UID, Features: l.Features, Cgroup: l.Cgroup, Created: l.Created, Admitted: running, Ending: l.Ending,
			Hungry: l.Hungry, Held: l.Held, Freezable: target.cgroup != "" || target.sandbox != "", Procs: procs,
		})
	}
	for id := range c.placed {
		if !live[id] {
			delete(c.placed, id)
		}
	}
	for id := range c.empty {
		if !live[id] {
			delete(c.empty, id)
		}
	}
	// Read after the domain: a status updated at r.At has every kill the
	// kernel reported before then, so a build that ended before it and
	// asks finds its kills counted.
	c.oom.read(&in)
	d := c.engine.step(in)
	c.b.ServeFirst(d.First, d.FirstWhy)
	if d.Changed {
		c.steer(d)
	} else {
		c.log.Debug("memory controller keeps the budget", "budget", d.Budget, "reason", d.Reason, "detail", d.Status.Detail)
	}
	for _, a := range d.Actions {
		if err := c.apply(a, targets[a.Lease]); err != nil {
			c.log.Error("memory brake failed", "lease", a.Lease, "error", err)
			continue
		}
		kind := api.EventThaw
		if a.Freeze {
			kind = api.EventFreeze
		}
		c.b.Record(api.Event{Kind: kind, Lease: a.Lease, Name: a.Name, Detail: a.Why})
	}
	for _, e := range d.OOMKills {
		c.b.Record(e)
	}
	c.b.SetMemory(d.Status, d.Leases)
	if c.cgroups != nil {
		c.cgroups.Retry()
	}
	if err := c.hist.Save(); err != nil {
		c.log.Warn("cannot save the job history; it is kept in memory and saved when it can be", "error", err)
	}
}

// steer hands a changed decision to the broker and logs what it did: a
// budget pinned by the configuration or an operator stays, and then the
// log says what memory would allow instead of a change that never was.
func (c *Controller) steer(d decision) {
	budget, pinnedBy, err := c.b.Steer(d.Budget, d.Reason)
	if err == nil {
		c.b.Record(api.Event{Kind: api.EventDecision, Budget: d.Budget, Reason: d.Reason, FixedBy: pinnedBy, Detail: d.Status.Detail})
	}
	switch {
	case err != nil:
		c.log.Error("cannot steer the budget", "error", err)
	case pinnedBy == "":
		c.log.Info("memory controller set the budget", "budget", budget, "reason", d.Reason, "detail", d.Status.Detail)
	default:
		c.log.Info(fmt.Sprintf("memory would allow %d; the budget stays fixed", d.Budget),
			"budget", budget, "fixed_by", pinnedBy, "memory_would_allow", d.Budget, "reason", d.Reason, "detail", d.Status.Detail)
	}
}

// place moves a tokenctl build into the group made for its lease when it
// started outside it: tokenctl starts its command inside the group with
// clone3(CLONE_INTO_CGROUP), which needs write access to the common
// ancestor of both groups, so for users other than root it falls back to
// starting it outside. tokend, as root, moves it; until then its memory
// is still sampled from the owner's descendants.
func (c *Controller) place(l api.LeaseStatus, forest func() (memory.Forest, error)) {
	if c.cgroups == nil || !c.cgroups.Owns(l.Cgroup) || c.placed[l.ID] || !l.Admitted || l.Ending || l.Owner.PID <= 0 {
		return
	}
	f, err := forest()
	if err != nil {
		return
	}
	tree, err := f.Tree(l.Owner.PID)
	if err != nil || len(tree) < 2 {
		return // not started yet
	}
	in, err := members(l.Cgroup)
	if err != nil {
		c.log.Debug("cannot list the lease cgroup", "lease", l.ID, "error", err)
		return
	}
	moved := 0
	for _, p := range tree[1:] {
		if in[p.PID] {
			continue
		}
		if err := broker.Reachable(l.UID, p.PID); err != nil {
			c.log.Debug("leaving a process of the build outside its lease cgroup", "lease", l.ID, "reason", err)
			continue
		}
		if err := move(l.Cgroup, p.PID); err != nil {
			c.log.Warn("cannot move the build into its lease cgroup; it cannot be frozen", "lease", l.ID, "error", err)
			c.placed[l.ID] = true
			return
		}
		moved++
	}
	if moved == 0 {
		c.placed[l.ID] = true
		return
	}
	c.log.Info("moved the build into its lease cgroup", "lease", l.ID, "name", l.Name, "processes", moved, "cgroup", l.Cgroup)
}

// apply carries out one action of the brake on the lease's group, or on
// its sandbox's processes when it has no group.
func (c *Controller) apply(a action, t brakeTarget) error {
	if !a.Freeze {
		if dir, ok := c.stopped[a.Lease]; ok {
			delete(c.stopped, a.Lease)
			_, err := resumeSandbox(c.sandboxProcs, dir)
			return err
		}
		return setFrozen(t.cgroup, false)
	}
	if t.cgroup != "" || t.sandbox == "" {
		return freeze(t.cgroup, t.uid)
	}
	c.stopped[a.Lease] = t.sandbox
	n, err := stopSandbox(c.sandboxProcs, t.sandbox)
	c.log.Info("memory brake: stopped the processes of a build without a cgroup", "lease", a.Lease, "sandbox", t.sandbox, "processes", n)
	return err
}

// sandboxProcs lists the processes confined to a sandbox from a fresh
// read of the process table.
func (c *Controller) sandboxProcs(dir string) ([]memory.Proc, error) {
	f, err := c.sampler.mem.Forest()
	if err != nil {
		return nil, err
	}
	return f.Rooted(dir)
}

// thawLeftovers thaws groups of adopted leases that a previous tokend left
// frozen, resumes the sandboxes it may have stopped, and removes the empty
// groups of leases it did not leave.
func (c *Controller) thawLeftovers() {
	keep := map[string]bool{}
	for _, l := range c.b.Status().Leases {
		if l.Owner.PID <= 0 && l.Owner.Dir != "" {
			if n, err := resumeSandbox(c.sandboxProcs, l.Owner.Dir); err != nil {
				c.log.Error("cannot resume a build a previous tokend may have stopped", "lease", l.ID, "error", err)
			} else if n > 0 {
				c.log.Debug("resumed the processes of a build a previous tokend may have stopped", "lease", l.ID, "processes", n)
			}
		}
		if l.Cgroup == "" {
			continue
		}
		keep[l.Cgroup] = true
		if on, err := isFrozen(l.Cgroup); err == nil && on {
			if err := setFrozen(l.Cgroup, false); err != nil {
				c.log.Error("cannot thaw a lease a previous tokend froze", "lease", l.ID, "error", err)
				continue
			}
			c.log.Info("thawed a lease a previous tokend froze", "lease", l.ID, "name", l.Name)
		}
	}
	if c.cgroups != nil {
		c.cgroups.Sweep(keep)
	}
}

// stop thaws every lease the controller froze, records in the history
// the leases that ended since the last tick and those still running, and
// saves it.
func (c *Controller) stop() error {
	var err error
	c.b.ServeFirst("", "")
	st := c.b.Status()
	live := make(map[string]bool, len(st.Leases))
	ending := map[string]bool{}
	for _, l := range st.Leases {
		live[l.ID] = true
		ending[l.ID] = l.Ending
	}
	now := time.Now()
	c.engine.retire(live, now)
	c.engine.recordLive(ending, now)
	for _, l := range st.Leases {
		ls, ok := c.engine.leases[l.ID]
		if !ok || !ls.frozen {
			continue
		}
		if dir, ok := c.stopped[l.ID]; ok {
			if _, rerr := resumeSandbox(c.sandboxProcs, dir); rerr != nil {
				err = errors.Join(err, fmt.Errorf("resume lease %s on stopping: %w", l.ID, rerr))
				continue
			}
		} else if l.Cgroup == "" {
			continue
		} else if ferr := setFrozen(l.Cgroup, false); ferr != nil && !errors.Is(ferr, os.ErrNotExist) {
			err = errors.Join(err, fmt.Errorf("thaw lease %s on stopping: %w", l.ID, ferr))
			continue
		}
		ls.frozen = false
		c.log.Info("thawed a lease on stopping", "lease", l.ID, "name", l.Name)
	}
	if c.cgroups != nil {
		c.cgroups.Close()
	}
	return errors.Join(err, c.oom.close(), c.hist.Save(), c.domain.Close(), c.sampler.mem.Close())
}
