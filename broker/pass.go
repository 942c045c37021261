package broker

import (
	"fmt"
	"strings"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/jobserver"
)

// moveStep bounds how many tokens one pass takes from a lease to give to
// another, so a build between two jobs is not stripped at once.
const moveStep = 2

// passState is what one pass knows of the leases, oldest first: what each
// has, what it should have, and how many tokens are out in all.
type passState struct {
	leases    []*Lease
	use       []usage
	target    []int // each lease's share
	allowance int   // the budget less the active leases' implicit slots
	granted   int   // tokens granted over all leases, kept current as the pass moves them
	// collected is what the collector had taken from each lease when the
	// pass counted it: it goes on taking during the pass.
	collected []int
}

// pass observes every lease and moves tokens toward their shares. It is
// cheap (one ioctl per lease and a few reads or writes), so it runs on
// every tick and after every event.
func (b *Broker) pass() {
	p := b.observe()
	p.target = shares(p.allowance, p.use)
	b.takeBack(p)
	// Admit before handing out, so a lease's first tokens are in its FIFO
	// by the time its client hears it may start: ninja looks for tokens
	// when it starts and then only when one of its own jobs ends.
	b.admit(p.leases, p.granted)
	if gives := p.grants(); b.persist(p.leases, gives) {
		b.grant(p, gives)
	}
	b.judge(p, time.Now())
	b.check(p)
}

// judge notes every lease's share, and since when each lease above it has
// been so while another waits; once that has lasted ShareGrace, it says so
// in the log, an event and the lease's status, once per spell.
func (b *Broker) judge(p *passState, now time.Time) {
	over := overShare(p.use, p.target)
	var waiting []string
	for i, l := range p.leases {
		l.share = p.target[i]
		if p.use[i].waits(p.target[i]) {
			waiting = append(waiting, l.ID)
		}
	}
	for i, l := range p.leases {
		if !over[i] {
			l.overSince, l.overReported = time.Time{}, false
			continue
		}
		if l.overSince.IsZero() {
			l.overSince = now
		}
		if l.overReported || now.Sub(l.overSince) < b.opts.ShareGrace {
			continue
		}
		l.overReported = true
		above := p.use[i].granted - p.target[i]
		b.log.Warn("lease keeps tokens above its share while other leases wait; they come back only as its jobs end",
			"lease", l.ID, "name", l.Name, "above_share", above, "share", p.target[i], "for", now.Sub(l.overSince).Round(time.Millisecond), "waiting", strings.Join(waiting, ","))
		b.Record(api.Event{Kind: api.EventOverShare, Lease: l.ID, Name: l.Name, Tokens: above, Wait: now.Sub(l.overSince),
			Detail: fmt.Sprintf("%d tokens above its share of %d, held by its clients, while %s wait", above, p.target[i], strings.Join(waiting, ", "))})
	}
}

// observe takes out what clients wrote beyond their grant and counts every
// lease's free tokens.
func (b *Broker) observe() *passState {
	leases := b.sorted()
	p := &passState{leases: leases, use: make([]usage, len(leases)), collected: make([]int, len(leases))}
	if b.collected.Swap(false) {
		b.dirty = true
	}
	active := 0
	for i, l := range leases {
		b.recover(l)
		b.trimExcess(l)
		free, err := l.fifo.Free()
		if err != nil {
			b.log.Error("cannot count tokens", "lease", l.ID, "error", err)
			free = 0
		}
		l.prevFree, l.lastFree = l.lastFree, free
		var granted int
		granted, p.collected[i] = l.fifo.Snapshot()
		p.use[i] = usage{
			granted: granted,
			free:    free,
			idle:    min(l.prevFree, free),
			hungry:  free == 0 && !l.ending,
			ending:  l.ending,
			out:     !l.ending && !l.counted(),
			waiting: !l.ending && !l.admitted && l.asking(),
			first:   l.ID == b.first,
		}
		l.hungry = p.use[i].hungry
		p.granted += p.use[i].granted
		if l.counted() {
			active++
		}
	}
	p.allowance = max(b.budget-active, 0)
	return p
}

// trimExcess takes out of l's FIFO the tokens its clients wrote beyond
// what it was granted.
func (b *Broker) trimExcess(l *Lease) {
	extra, err := l.fifo.TakeExcess()
	if err != nil {
		b.log.Error("cannot take excess tokens", "lease", l.ID, "error", err)
		return
	}
	if extra > 0 {
		l.inflated += extra
		b.totals.inflated += extra
		b.dirty = true
		b.log.Warn("lease fifo held more tokens than granted; took the excess", "lease", l.ID, "name", l.Name, "excess", extra)
		b.Record(api.Event{Kind: api.EventTrim, Lease: l.ID, Name: l.Name, Tokens: extra})
	}
}

// takeBack takes free tokens from leases above their share: a few at a
// time while the allowance covers what is out, all of them when the
// budget shrank below it or the lease is ending. What is not free now is
// owed, and the collector takes it as clients return it.
func (b *Broker) takeBack(p *passState) {
	debt := p.granted > p.allowance
	for i, l := range p.leases {
		u := &p.use[i]
		surplus := u.granted - p.target[i]
		if surplus <= 0 {
			l.owed = 0
			if l.fifo.Reissued() > 0 {
				b.collector.Collect(l.fifo, p.target[i])
			} else {
				b.collector.Stop(l.fifo)
			}
			continue
		}
		step := surplus
		if !debt && !u.ending {
			step = min(surplus, moveStep)
		}
		want := min(step, u.free)
		taken, err := l.fifo.Take(want)
		if err != nil {
			b.log.Error("cannot take tokens back", "lease", l.ID, "error", err)
		}
		if taken > 0 {
			b.dirty = true
			b.log.Debug("took tokens", "lease", l.ID, "tokens", taken, "target", p.target[i], "debt", debt)
		}
		u.granted -= taken
		u.free -= taken
		if taken < want {
			u.free = 0 // clients took the rest since the count: the pipe ran dry
		}
		l.lastFree = u.free
		p.granted -= taken
		l.owed = u.granted - p.target[i]
		if l.owed > 0 || l.fifo.Reissued() > 0 {
			b.collector.Collect(l.fifo, p.target[i])
		} else {
			b.collector.Stop(l.fifo)
		}
	}
}

// collectedTokens is the collector's report, from its own threads: it
// must not take b.mu, which is held while the collector is told what to
// collect. The next pass counts what was taken and saves it.
func (b *Broker) collectedTokens(f *jobserver.FIFO, taken int, err error) {
	if err != nil {
		if f != nil {
			b.log.Error("cannot collect returned tokens", "fifo", f.Path(), "error", err)
		} else {
			b.log.Error("cannot collect returned tokens", "error", err)
		}
		return
	}
	b.collected.Store(true)
	b.log.Debug("collected returned tokens", "fifo", f.Path(), "tokens", taken)
	b.poke()
}

// grants is how many tokens each admitted lease below its share gets from
// what the allowance has left, oldest first. The tokens a lease's clients
// hold that were reissued count against its share: they are in its
// clients' hands, and they were idle, not gone.
func (p *passState) grants() []int {
	pool := p.allowance - p.granted
	gives := make([]int, len(p.leases))
	for i, l := range p.leases {
		want := p.target[i] - p.use[i].granted - l.fifo.Reissued()
		if want <= 0 || pool <= 0 || !l.admitted {
			continue
		}
		gives[i] = min(want, pool)
		pool -= gives[i]
	}
	return gives
}

// grant hands out gives, which the state file already counts.
func (b *Broker) grant(p *passState, gives []int) {
	for i, l := range p.leases {
		give := gives[i]
		if give == 0 {
			continue
		}
		if err := l.fifo.Add(give); err != nil {
			b.log.Error("cannot add tokens", "lease", l.ID, "error", err)
			continue
		}
		b.log.Debug("gave tokens", "lease", l.ID, "tokens", give, "target", p.target[i])
		p.use[i].granted += give
		// Not added to lastFree: tokens just handed out are not idle in
		// the next pass, which may come within milliseconds, before the
		// clients had time to read them; counted idle, they shrank a
		// newcomer's share and went back to the lease they came from.
		p.use[i].free += give
		p.granted += give
	}
}

// check verifies the accounting after a pass. Held tokens are derived, so
// what can break is a negative count, a FIFO holding more than it was
// granted, and tokens over the allowance while free ones sit unclaimed.
// What the collector took during the pass is added back to compare.
func (b *Broker) check(p *passState) {
	var problems []string
	granted := 0
	for i, l := range p.leases {
		g, collected := l.fifo.Snapshot()
		u := p.use[i]
		if during := collected - p.collected[i]; g+during != u.granted {
			problems = append(problems, fmt.Sprintf("lease %s: fifo counts %d granted and %d collected during the pass, pass counted %d", l.ID, g, during, u.granted))
		} else {
			g += during
		}
		if u.free < 0 || u.free > g {
			problems = append(problems, fmt.Sprintf("lease %s: %d free of %d granted", l.ID, u.free, g))
		}
		if g < 0 || g > jobserver.MaxTokens {
			problems = append(problems, fmt.Sprintf("lease %s: %d granted", l.ID, g))
		}
		granted += g
	}
	if granted > p.allowance {
		// Over the allowance, no lease may keep a free token above its share.
		for i, l := range p.leases {
			if p.use[i].free > 0 && p.use[i].granted > p.target[i] {
				problems = append(problems, fmt.Sprintf("granted %d over allowance %d, yet lease %s keeps %d free above its share of %d", granted, p.allowance, l.ID, p.use[i].free, p.target[i]))
			}
		}
	}
	if len(problems) == 0 {
		return
	}
	b.totals.violations += len(problems)
	b.totals.lastViolation = problems[0]
	b.log.Error("token accounting invariant broken", "problems", strings.Join(problems, "; "))
}
