package control

import (
	"fmt"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker/memory"
)

// DefaultAbandonedGrace is how long a nix build's sandbox directory may hold no
// process before its lease is ended. A build's first process runs in it
// milliseconds after the hook, and Nix removes the directory when the
// build ends; a directory that stays empty of processes is one a
// nix-daemon left behind when it died, and its lease would hold its slot
// for ever.
const DefaultAbandonedGrace = time.Minute

// endAbandoned ends the lease of a directory owner (a nix build's sandbox)
// in which no process has run for the grace (Config.AbandonedGrace). empty remembers since
// when each lease's directory has been seen empty.
func (c *Controller) endAbandoned(l api.LeaseStatus, forest func() (memory.Forest, error), now time.Time) {
	if l.Owner.PID > 0 || l.Owner.Dir == "" || l.Ending {
		delete(c.empty, l.ID)
		return
	}
	f, err := forest()
	if err != nil {
		return
	}
	ps, err := f.Rooted(l.Owner.Dir)
	if err != nil || len(ps) > 0 {
		delete(c.empty, l.ID)
		return
	}
	// A build with use-cgroups shows in its group as well.
	if l.Cgroup != "" {
		if in, err := members(l.Cgroup); err == nil && len(in) > 0 {
			delete(c.empty, l.ID)
			return
		}
	}
	since, ok := c.empty[l.ID]
	if !ok {
		c.empty[l.ID] = now
		return
	}
	if now.Sub(since) < c.grace {
		return
	}
	delete(c.empty, l.ID)
	why := fmt.Sprintf("no process ran in its sandbox %s for %v: a nix-daemon that died left it", l.Owner.Dir, c.grace)
	if err := c.b.End(0, l.ID, why); err != nil {
		c.log.Warn("cannot end an abandoned lease", "lease", l.ID, "error", err)
	}
}
