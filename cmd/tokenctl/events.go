package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/tokend/tokend/api"
)

// eventsTimeout bounds one GET /v1/events, which tokend holds for a
// couple of seconds while nothing happens.
const eventsTimeout = 10 * time.Second

// eventsOptions are the flags of tokenctl events.
type eventsOptions struct {
	json, backlog bool
}

// followEvents prints tokend's events as they happen, until writing them
// fails (the reader went away) or ctx ends. While tokend is unreachable it
// says so once and keeps asking, so a notifier piped to it outlives a
// restart of tokend.
func followEvents(ctx context.Context, c *api.Client, o eventsOptions, w io.Writer) int {
	enc := json.NewEncoder(w)
	err := eachEvent(ctx, c, o.backlog, func(e api.Event) error {
		if o.json {
			return enc.Encode(e)
		}
		_, err := fmt.Fprintln(w, eventLine(e))
		return err
	}, func(msg string) { fmt.Fprintln(os.Stderr, "tokenctl:", msg) })
	if err != nil && ctx.Err() == nil {
		return fail(err)
	}
	return 0
}

// eachEvent calls fn with each event tokend records, from the ones it
// still keeps when backlog is set, else from now on, until ctx ends or fn
// fails. It tells warn, once each time, that tokend went away and came
// back, and how many events it missed.
func eachEvent(ctx context.Context, c *api.Client, backlog bool, fn func(api.Event) error, warn func(string)) error {
	var after uint64
	first, down := true, false
	for ctx.Err() == nil {
		callCtx, cancel := context.WithTimeout(ctx, eventsTimeout)
		evs, err := c.Events(callCtx, after)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if !down {
				warn(fmt.Sprintf("%v; still asking", err))
				down = true
			}
			sleep(ctx, time.Second)
			continue
		}
		if down {
			warn("tokend answers again")
			down = false
		}
		if evs.Missed > 0 && !first {
			warn(fmt.Sprintf("missed %d events; tokend keeps only its last few hundred", evs.Missed))
		}
		skip := first && !backlog
		first = false
		after = evs.Next // lower than before when tokend restarted: it numbers from 1 again
		if skip {
			continue
		}
		for _, e := range evs.Events {
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}
func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// eventLine is an event for people: its time, its kind and what it says.
func eventLine(e api.Event) string {
	return fmt.Sprintf("%s  %-8s  %s", e.Time.Local().Format("15:04:05"), e.Kind, eventText(e))
}

// eventText says what an event means, lease names escaped.
func eventText(e api.Event) string {
	name := api.Printable(e.Name)
	switch e.Kind {
	case api.EventBudget:
		return fmt.Sprintf("%d → %d (%s)", e.From, e.Budget, api.Printable(e.Reason))
	case api.EventDecision:
		if e.FixedBy != "" {
			return fmt.Sprintf("memory would allow %d (%s); fixed by %s", e.Budget, api.Printable(e.Reason), api.Printable(e.FixedBy))
		}
		return fmt.Sprintf("memory controller: %d (%s)", e.Budget, api.Printable(e.Reason))
	case api.EventStart:
		return fmt.Sprintf("%s started (lease %s)", name, e.Lease)
	case api.EventEnd:
		return fmt.Sprintf("%s ended: %s", name, api.Printable(e.Reason))
	case api.EventAdmit:
		return fmt.Sprintf("%s admitted after %s", name, e.Wait.Round(time.Millisecond))
	case api.EventFreeze:
		return fmt.Sprintf("%s frozen: %s", name, api.Printable(e.Detail))
	case api.EventThaw:
		return fmt.Sprintf("%s thawed: %s", name, api.Printable(e.Detail))
	case api.EventReclaim:
		return fmt.Sprintf("%d tokens of %s reclaimed", e.Tokens, name)
	case api.EventTrim:
		return fmt.Sprintf("%d excess tokens taken from %s", e.Tokens, name)
	case api.EventOOMKill:
		return fmt.Sprintf("%d jobs of %s OOM-killed", e.Kills, name)
	}
	return fmt.Sprintf("%s %s", name, api.Printable(e.Detail))
}
