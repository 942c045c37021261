package broker

import (
	"context"
	"errors"
	"sync"
)

// collectors run the goroutines that take owed tokens back from leases as
// their clients return them, at most one per lease, and stop them all when
// the broker stops. A lease's collector is l.collector while it runs.
type collectors struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newCollectors() *collectors {
	c := &collectors{}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c
}

// stop stops every collector and waits until they have returned.
func (c *collectors) stop() {
	c.cancel()
	c.wg.Wait()
}

// collect starts taking back what l owes, unless it owes nothing or a
// collector runs already. It runs until the debt is paid or the next pass
// decides l owes nothing.
func (b *Broker) collect(l *Lease) {
	if l.owed <= 0 || l.collector != nil {
		return
	}
	ctx, cancel := context.WithCancel(b.collectors.ctx)
	l.collector = cancel
	b.collectors.wg.Add(1)
	go func() {
		defer b.collectors.wg.Done()
		for {
			err := l.fifo.AwaitFree(ctx)
			b.mu.Lock()
			if err == nil && l.owed > 0 {
				b.collectReturned(l)
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

// collectReturned takes what l owes of the tokens now free in its FIFO.
func (b *Broker) collectReturned(l *Lease) {
	taken, err := l.fifo.Take(l.owed)
	if err != nil {
		b.log.Error("cannot take tokens back", "lease", l.ID, "error", err)
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

// stopCollecting stops l's collector, if one runs; it clears l.collector
// once it has returned.
func (l *Lease) stopCollecting() {
	if l.collector != nil {
		l.collector()
	}
}
