package jobserver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Collector takes tokens back from FIFOs as their clients return them.
//
// A client with more work reads a token it returned again within
// microseconds: make 4.4.1 writes the token of a job it reaps and, in the
// same turn of its loop, reads one for the next job. A server that waits
// in poll(2) at ordinary priority wakes after that and finds the pipe
// empty. Measured on a 2-core host under load (issue 13): such a server
// got 15 of the 37 tokens make 4.4.1 owed it and 6 of the 19 ninja 1.13.2
// owed it, the rest starting more jobs of the build that owed them; one
// such thread at real-time priority got 9 of 13 from make; against a
// client that returns a token and reads at once, it got 0 to 13 of 50.
//
// So the Collector waits in poll(2) on every CPU it may run on, one thread
// pinned to each, at real-time priority (SCHED_FIFO) where it is allowed:
// a client's write wakes the thread on the client's own CPU, which
// preempts the client as it returns from write(2), before it can read.
// Measured the same way: 15 of 15 from make, 9 of 11 from ninja, 1500 of
// 1500 from the client that reads at once. Without real-time priority (an
// unprivileged tokend) the threads are no faster than one; RealTime says
// why they lack it.
//
// Each returned token owed wakes every poller; the pollers cost nothing
// while no FIFO owes tokens. The first NewCollector of a process raises
// GOMAXPROCS by the number of pollers (see raiseProcs).
type Collector struct {
	report func(f *FIFO, taken int, err error)

	mu      sync.Mutex
	changed *sync.Cond // a poller moved to a newer set
	keep    map[*FIFO]int
	gen     uint64 // bumped on every change of keep
	pollers []*poller
	closed  bool
	rtErr   error
	wg      sync.WaitGroup
}

// poller is one thread of a Collector, pinned to one CPU.
type poller struct {
	cpu  int
	wake int    // eventfd the Collector writes when its set changes
	gen  uint64 // the generation of the set the poller waits on
	done bool
}

// realtimePriority is the SCHED_FIFO priority of the pollers: the lowest,
// which is enough to preempt every ordinary process, and below every
// real-time thread a host may run for its own needs.
const realtimePriority = 1

// raiseProcs gives the Go runtime one more P per poller, once per process:
// a poller woken by a returned token must run at once, and with no P free
// (the runtime busy elsewhere) its thread waits, and the client reads the
// token first. Measured with a client that returns a token and reads again
// at once, beside two busy goroutines: 50 of 300 tokens lost with GOMAXPROCS
// at the CPU count, 3 to 5 of 300 with a P per poller more.
var raiseProcs sync.Once

// errorPause is how long a poller waits after poll(2) failed, so that a
// lasting failure costs one report a second rather than a CPU.
const errorPause = time.Second

// NewCollector starts a Collector with one poller per CPU this process may
// run on. report is called from the pollers after each take, with what was
// taken from which FIFO or why taking failed (f is nil when waiting
// failed); it must return quickly and may not wait for a lock held while
// calling Collect or Stop.
func NewCollector(report func(f *FIFO, taken int, err error)) (*Collector, error) {
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		return nil, fmt.Errorf("token collector: list usable CPUs: %w", err)
	}
	c := &Collector{report: report, keep: map[*FIFO]int{}}
	c.changed = sync.NewCond(&c.mu)
	for cpu := 0; cpu < len(cpus)*64 && len(c.pollers) < cpus.Count(); cpu++ {
		if !cpus.IsSet(cpu) {
			continue
		}
		fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("token collector: eventfd: %w", err)
		}
		c.pollers = append(c.pollers, &poller{cpu: cpu, wake: fd})
	}
	raiseProcs.Do(func() { runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + len(c.pollers)) })
	started := make(chan error, len(c.pollers))
	for _, p := range c.pollers {
		c.wg.Add(1)
		go c.poll(p, started)
	}
	for range c.pollers {
		if err := <-started; err != nil && c.rtErr == nil {
			c.rtErr = err
		}
	}
	return c, nil
}

// RealTime returns nil if every poller runs at real-time priority, else
// why one does not (it needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least
// 1, and a cgroup that allows real-time threads).
func (c *Collector) RealTime() error { return c.rtErr }

// Collect takes back, as its clients return them, the tokens f was granted
// beyond keep, and swallows those it reissued (FIFO.Reissue), until Stop. keep may change from call to call. Collect
// returns once every poller waits on f with the new keep: a token returned
// from then on is raced for, and tokens added within keep stay in f.
func (c *Collector) Collect(f *FIFO, keep int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.keep[f]; c.closed || (ok && old == keep) {
		return
	}
	c.keep[f] = keep
	c.bump()
	c.await(c.gen)
}

// Stop stops collecting from f and returns once no poller waits on its
// descriptor any more: f may be closed then.
func (c *Collector) Stop(f *FIFO) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.keep[f]; !ok {
		return
	}
	delete(c.keep, f)
	c.bump()
	c.await(c.gen)
}

// Close stops every poller and waits until they have returned.
func (c *Collector) Close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.keep = map[*FIFO]int{}
		c.bump()
	}
	c.mu.Unlock()
	c.wg.Wait()
	for _, p := range c.pollers {
		unix.Close(p.wake)
	}
	c.pollers = nil
}

// bump starts a new generation of the set and wakes every poller to take
// it up. c.mu is held.
func (c *Collector) bump() {
	c.gen++
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	for _, p := range c.pollers {
		if !p.done {
			unix.Write(p.wake, one[:])
		}
	}
}

// await waits until every running poller waits on generation gen or a
// later one. c.mu is held.
func (c *Collector) await(gen uint64) {
	for {
		behind := false
		for _, p := range c.pollers {
			behind = behind || (!p.done && p.gen < gen)
		}
		if !behind {
			return
		}
		c.changed.Wait()
	}
}

// poll is one poller's thread: pinned to its CPU, real-time if allowed,
// waiting for tokens in every FIFO that owes some. It reports on started
// whether it got real-time priority.
func (c *Collector) poll(p *poller, started chan<- error) {
	defer c.wg.Done()
	// Never unlocked: the thread, pinned and real-time, ends with the
	// goroutine instead of running other goroutines.
	runtime.LockOSThread()
	started <- pin(p.cpu)
	fds := []unix.PollFd{}
	fifos := []*FIFO{}
	keeps := []int{}
	var drain [8]byte
	for {
		c.mu.Lock()
		if c.closed {
			p.done = true
			c.changed.Broadcast()
			c.mu.Unlock()
			return
		}
		fds, fifos, keeps = c.pollSet(p, fds[:0], fifos[:0], keeps[:0])
		p.gen = c.gen
		c.changed.Broadcast()
		c.mu.Unlock()

		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			c.report(nil, 0, fmt.Errorf("wait for returned tokens: poll: %w", err))
			time.Sleep(errorPause)
			continue
		}
		if fds[0].Revents != 0 {
			unix.Read(p.wake, drain[:])
		}
		for i, f := range fifos {
			if fds[i+1].Revents == 0 {
				continue
			}
			taken, err := f.takeAbove(keeps[i])
			if taken > 0 || err != nil {
				c.report(f, taken, err)
			}
			if err != nil {
				c.forget(f)
			}
		}
	}
}

// pollSet lists what p waits on: its eventfd, then every FIFO granted more
// than it keeps. A FIFO paid up is left out, so that its free tokens, which
// are its own, do not wake the poller again and again. c.mu is held.
func (c *Collector) pollSet(p *poller, fds []unix.PollFd, fifos []*FIFO, keeps []int) ([]unix.PollFd, []*FIFO, []int) {
	fds = append(fds, unix.PollFd{Fd: int32(p.wake), Events: unix.POLLIN})
	for f, keep := range c.keep {
		fd, owes := f.owes(keep)
		if !owes {
			continue
		}
		fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		fifos = append(fifos, f)
		keeps = append(keeps, keep)
	}
	return fds, fifos, keeps
}

// forget stops collecting from a FIFO that failed, without waiting.
func (c *Collector) forget(f *FIFO) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.keep[f]; ok {
		delete(c.keep, f)
		c.bump()
	}
}

// pin binds the calling thread to cpu and raises it to real-time
// priority, returning why it could not be raised. SCHED_RESET_ON_FORK
// keeps any process started from the thread at ordinary priority.
func pin(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin a token collector to CPU %d: %w", cpu, err)
	}
	attr := unix.SchedAttr{
		Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: realtimePriority,
		Flags: unix.SCHED_FLAG_RESET_ON_FORK,
	}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		return fmt.Errorf("real-time priority for the token collector: %w", err)
	}
	return nil
}

// owes reports f's descriptor and whether f is granted more than keep or
// its clients hold reissued tokens.
func (f *FIFO) owes(keep int) (int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fd, f.fd >= 0 && (f.granted > keep || f.reissued > 0)
}

// takeAbove swallows returned tokens while clients owe reissued ones
// (see Reissue), then takes free tokens while the FIFO is granted more
// than keep, and returns how many it took of both kinds.
func (f *FIFO) takeAbove(keep int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return 0, fmt.Errorf("take tokens from %s: %w", f.path, os.ErrClosed)
	}
	recovered, err := f.recover()
	if err != nil {
		return recovered, err
	}
	taken, err := f.drain(f.granted - keep)
	f.granted -= taken
	f.collected += taken
	return recovered + taken, err
}
