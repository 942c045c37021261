package jobserver

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/buildtest"
)

// collectDeadline bounds the waits of the collector's tests, which take
// milliseconds: it detects a hang, it measures nothing.
const collectDeadline = 30 * time.Second

// takes records what a Collector reported.
type takes struct {
	mu    sync.Mutex
	taken map[*FIFO]int
	errs  []error
}

func (r *takes) report(f *FIFO, n int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errs = append(r.errs, err)
		return
	}
	r.taken[f] += n
}

func (r *takes) of(f *FIFO) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.taken[f]
}

func newCollector(t *testing.T) (*Collector, *takes) {
	t.Helper()
	r := &takes{taken: map[*FIFO]int{}}
	c, err := NewCollector(r.report)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if len(r.errs) != 0 {
			t.Errorf("the collector reported errors: %v", r.errs)
		}
	})
	return c, r
}

// client opens f's path as a jobserver client does, apart from the server.
func client(t *testing.T, f *FIFO) *os.File {
	t.Helper()
	c, err := os.OpenFile(f.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// heldFIFO is a FIFO granted n tokens that a client holds, and the client.
func heldFIFO(t *testing.T, n int) (*FIFO, *os.File) {
	t.Helper()
	f := newFIFO(t, n)
	cl := client(t, f)
	if _, err := cl.Read(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	return f, cl
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(collectDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// The collector takes the tokens a client returns down to what the FIFO
// keeps, and not one more: those left are the lease's own.
func TestCollectorTakesBackDownToKeep(t *testing.T) {
	c, r := newCollector(t)
	f, cl := heldFIFO(t, 5)
	c.Collect(f, 2)
	for range 5 {
		if _, err := cl.Write([]byte{'+'}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the collector to take 3 tokens", func() bool { return f.Granted() == 2 })
	// Stop returns once no poller waits on the FIFO, so what is in it
	// now stays: the 2 kept.
	c.Stop(f)
	wantCounts(t, f, 2, 2)
	if got := r.of(f); got != 3 {
		t.Errorf("the collector reported %d tokens taken, want 3", got)
	}
	if _, collected := f.Snapshot(); collected != 3 {
		t.Errorf("Snapshot counts %d collected, want 3", collected)
	}
}

// Tokens reissued from a FIFO its client holds are swallowed as the client
// returns them, even when the FIFO is granted no more than it keeps; the
// tokens returned after them stay.
func TestCollectorSwallowsReissued(t *testing.T) {
	c, r := newCollector(t)
	f, cl := heldFIFO(t, 5)
	if err := f.Reissue(3); err != nil {
		t.Fatal(err)
	}
	c.Collect(f, 2)
	for range 5 {
		if _, err := cl.Write([]byte{'+'}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the collector to swallow 3 reissued tokens", func() bool { return f.Reissued() == 0 })
	c.Stop(f)
	wantCounts(t, f, 2, 2)
	if got := r.of(f); got != 3 {
		t.Errorf("the collector reported %d tokens taken, want 3", got)
	}
	if _, collected := f.Snapshot(); collected != 0 {
		t.Errorf("Snapshot counts %d collected, want 0: swallowed tokens were never granted", collected)
	}
}

// Raising what a FIFO keeps takes effect before Collect returns: a token
// added next is not taken.
func TestCollectorKeepRaised(t *testing.T) {
	c, _ := newCollector(t)
	f := newFIFO(t, 0)
	c.Collect(f, 0)
	c.Collect(f, 1)
	if err := f.Add(1); err != nil {
		t.Fatal(err)
	}
	// Under the old keep the collector would take the token at once.
	wantCounts(t, f, 1, 1)
	c.Collect(f, 0)
	waitFor(t, "the token to be collected", func() bool { return f.Granted() == 0 })
	c.Stop(f)
}

// Several FIFOs at once, each down to its own keep; a stopped one is left
// alone; Close with FIFOs still owing returns.
func TestCollectorManyFIFOs(t *testing.T) {
	c, _ := newCollector(t)
	var fs []*FIFO
	var cls []*os.File
	for i := range 3 {
		f, cl := heldFIFO(t, 4)
		fs, cls = append(fs, f), append(cls, cl)
		c.Collect(f, i)
	}
	c.Stop(fs[2])
	for _, cl := range cls {
		if _, err := cl.Write([]byte("++++")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the first two FIFOs to be collected", func() bool { return fs[0].Granted() == 0 && fs[1].Granted() == 1 })
	wantCounts(t, fs[2], 4, 4)
	c.Close()
	c.Collect(fs[2], 0) // after Close: nothing happens, nothing hangs
	wantCounts(t, fs[2], 4, 4)
}

// The collector's whole point: a client that returns a token and at once
// reads one again, as make and ninja do between two jobs, gets nothing
// while the FIFO owes tokens, when the collector runs at real-time
// priority. Without it (CI runs as root; a non-root run skips), the test
// says so and checks only that every token comes back in the end.
func TestCollectorBeatsClientRereading(t *testing.T) {
	c, _ := newCollector(t)
	realTime := c.RealTime() == nil
	if !realTime {
		t.Logf("no real-time priority (%v): checking only that the tokens come back", c.RealTime())
	}
	const rounds = 50
	f := newFIFO(t, 0)
	cl := client(t, f)
	fd := int(cl.Fd())
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	kept := 0
	ctx, cancel := context.WithTimeout(context.Background(), collectDeadline)
	defer cancel()
	for range rounds {
		c.Collect(f, 1)
		if err := f.Add(1); err != nil {
			t.Fatal(err)
		}
		if err := readToken(ctx, fd); err != nil {
			t.Fatal(err)
		}
		c.Collect(f, 0)
		// What the client does next, with no system call between:
		// return the token, try to take one for the next job.
		var b [1]byte
		unix.Write(fd, b[:])
		if n, _ := unix.Read(fd, b[:]); n == 1 {
			kept++
			unix.Write(fd, b[:])
		}
		waitFor(t, "the token to be collected", func() bool { return f.Granted() == 0 })
	}
	c.Stop(f)
	t.Logf("the client read back %d of %d tokens it returned while they were owed", kept, rounds)
	// A token lost now and then is the runtime's doing (its garbage
	// collector stops every thread for a moment): the bound is far below
	// what an ordinary-priority collector loses (a fifth to a third here).
	if realTime && kept > rounds/10 {
		t.Errorf("the client read back %d of %d tokens it returned while they were owed, want at most %d", kept, rounds, rounds/10)
	}
}

// readToken blocks in poll(2) until it has read one byte from fd.
func readToken(ctx context.Context, fd int) error {
	var b [1]byte
	for ctx.Err() == nil {
		if n, _ := unix.Read(fd, b[:]); n == 1 {
			return nil
		}
		unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 10)
	}
	return ctx.Err()
}

// An unprivileged collector cannot have real-time priority; it says why
// and still takes tokens back.
func TestCollectorWithoutRealTime(t *testing.T) {
	if buildtest.RerunAsNobody(t) {
		return
	}
	c, _ := newCollector(t)
	if os.Geteuid() == buildtest.Nobody {
		if c.RealTime() == nil {
			t.Errorf("uid %d got real-time priority; RealTime should say why not", buildtest.Nobody)
		} else {
			t.Logf("as uid %d: %v", buildtest.Nobody, c.RealTime())
		}
	}
	f, cl := heldFIFO(t, 2)
	c.Collect(f, 0)
	if _, err := cl.Write([]byte("++")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the tokens to be collected", func() bool { return f.Granted() == 0 })
	c.Stop(f)
}
