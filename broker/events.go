package broker

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/tokend/tokend/api"
)

// eventsKept bounds the events kept for clients that ask: a client that
// falls further behind is told how many it missed.
const eventsKept = 512

// events keeps the last decisions the broker and its controller made, in
// order, for GET /v1/events, and hands each to the observers (the
// metrics) as it is recorded. It has a lock of its own: events are
// recorded with the broker's lock held and without it.
type events struct {
	mu        sync.Mutex
	seq       uint64
	kept      []api.Event // the last eventsKept, oldest first
	changed   chan struct{}
	observers []func(api.Event)
}

func newEvents() *events { return &events{changed: make(chan struct{})} }

// Record numbers e, keeps it, hands it to the observers and wakes the
// clients waiting for events. A zero Time is now.
func (b *Broker) Record(e api.Event) {
	ev := b.events
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ev.seq++
	e.Seq = ev.seq
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if len(ev.kept) == eventsKept {
		ev.kept = append(ev.kept[:0], ev.kept[1:]...)
	}
	ev.kept = append(ev.kept, e)
	for _, o := range ev.observers {
		o(e)
	}
	close(ev.changed)
	ev.changed = make(chan struct{})
}

// observe calls fn with every event recorded from now on, with the events'
// lock held: fn must be quick and must not record.
func (ev *events) observe(fn func(api.Event)) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ev.observers = append(ev.observers, fn)
}

// Observe calls fn with every event recorded from now on, with the
// events' lock and perhaps the broker's held: fn must be quick and must
// neither record nor call the broker.
func (b *Broker) Observe(fn func(api.Event)) { b.events.observe(fn) }

// Events returns the events after the one numbered after, waiting until
// there is one or ctx ends.
func (b *Broker) Events(ctx context.Context, after uint64) api.Events {
	ev := b.events
	for {
		ev.mu.Lock()
		out := api.Events{Next: after, Events: []api.Event{}}
		if after > ev.seq {
			after = ev.seq // a tokend restarted since: start over with what it has
			out.Next = after
		}
		for _, e := range ev.kept {
			if e.Seq > after {
				out.Events = append(out.Events, e)
			}
		}
		if n := len(out.Events); n > 0 {
			out.Missed = out.Events[0].Seq - after - 1
			out.Next = out.Events[n-1].Seq
		}
		changed := ev.changed
		ev.mu.Unlock()
		if len(out.Events) > 0 {
			return out
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return out
		}
	}
}

// eventsWait bounds how long GET /v1/events holds a request while nothing
// happens, well inside the server's write timeout and clients' patience.
const eventsWait = 2 * time.Second

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	var after uint64
	if a := r.URL.Query().Get("after"); a != "" {
		n, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			fail(w, http.StatusBadRequest, fmt.Errorf("after=%q: want the number of the last event seen, or 0", a))
			return
		}
		after = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), eventsWait)
	defer cancel()
	reply(w, http.StatusOK, s.broker.Events(ctx, after))
}
