package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/bytesize"
)

// oomKilled is what tokend saw the OOM killer take of one run: how many
// of its processes, and the largest size one of its jobs had reached.
type oomKilled struct {
	jobs int
	size uint64
}

// statusPoll is how often tokenctl asks tokend while it waits for it.
const statusPoll = 100 * time.Millisecond

// leaseOOMKills asks tokend what the OOM killer took of lease id, once
// tokend has looked at memory after the command ended at ended: a kill
// that ended the command is reported in the kernel log before the command
// exits, and tokend reads it on every tick. It gives up after callTimeout,
// reporting nothing: without tokend there is nothing to retry for.
func leaseOOMKills(c *api.Client, id string, ended time.Time) oomKilled {
	deadline := time.Now().Add(callTimeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		st, err := c.Status(ctx)
		cancel()
		if err != nil || st.Memory == nil {
			return oomKilled{}
		}
		if st.Memory.Updated.After(ended) {
			for _, l := range st.Leases {
				if l.ID == id && l.Memory != nil {
					return oomKilled{jobs: l.Memory.OOMKills, size: l.Memory.OOMKilled}
				}
			}
			return oomKilled{}
		}
		time.Sleep(statusPoll)
	}
	return oomKilled{}
}

// awaitRoom waits until memory fits a job of size alone: tokend's headroom
// less its reserve and the growth still to come of running jobs covers
// it, or no other build runs, so waiting longer cannot make more room. It
// goes on at once if tokend cannot tell.
func awaitRoom(c *api.Client, size uint64) {
	told := false
	for {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		st, err := c.Status(ctx)
		cancel()
		if err != nil || st.Memory == nil {
			return
		}
		m := st.Memory
		if room := int64(m.Headroom) - int64(m.Reserve) - int64(m.Growth); room >= int64(size) || st.ActiveLeases == 0 {
			return
		}
		if !told {
			fmt.Fprintf(os.Stderr, "tokenctl: waiting for %s of memory (headroom %s, reserve %s, growth to come %s)\n",
				bytesize.Human(size), bytesize.Human(m.Headroom), bytesize.Human(m.Reserve), bytesize.Human(m.Growth))
			told = true
		}
		time.Sleep(5 * statusPoll)
	}
}
