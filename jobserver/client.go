package jobserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoJobserver means the environment names no jobserver.
var ErrNoJobserver = errors.New("no jobserver in CARGO_MAKEFLAGS, MAKEFLAGS or MFLAGS")

// Slot is one job slot taken from a jobserver: the implicit slot every
// client root owns, or a token byte read from the pipe.
type Slot struct {
	implicit bool
	b        byte
}

// Implicit reports whether s is the client's implicit slot.
func (s Slot) Implicit() bool { return s.implicit }

// Client takes job slots from a jobserver for a Go program that runs jobs,
// the way make does: one implicit slot first, then a token per extra job.
// Its methods may be called from several goroutines.
type Client struct {
	r, w *os.File

	implicit chan struct{} // holds the implicit slot while it is free
	reader   chan struct{} // one reader at a time, so a deadline poke is ours
}

// Dial opens the jobserver a names. For a pipe style jobserver the
// descriptors must have been inherited by this process.
func Dial(a Auth) (*Client, error) {
	c := &Client{implicit: make(chan struct{}, 1), reader: make(chan struct{}, 1)}
	c.implicit <- struct{}{}
	switch a.Style {
	case StyleFIFO:
		// O_RDWR, unlike make's read-only open, never waits for a writer.
		f, err := os.OpenFile(a.Path, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("open jobserver %s: %w; is the broker running and the path mapped in?", a.Path, err)
		}
		if st, err := f.Stat(); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
			f.Close()
			return nil, fmt.Errorf("open jobserver %s: not a FIFO", a.Path)
		}
		c.r, c.w = f, f
	case StylePipe:
		if a.R < 0 || a.W < 0 {
			return nil, fmt.Errorf("jobserver descriptors %d,%d: the parent make withheld its jobserver from this command (make 4.4 writes -2,-2 for recipe lines not marked with '+'); mark the line with '+'", a.R, a.W)
		}
		if err := checkPipe(a.R, a.W); err != nil {
			return nil, err
		}
		// Non-blocking descriptors make the files pollable, which is what
		// lets a context cancel a waiting read. make 4.3 sets the same flag
		// on the shared description itself.
		if err := unix.SetNonblock(a.R, true); err != nil {
			return nil, fmt.Errorf("jobserver descriptor %d: %w", a.R, err)
		}
		c.r = os.NewFile(uintptr(a.R), "jobserver-r")
		c.w = c.r
		if a.W != a.R {
			c.w = os.NewFile(uintptr(a.W), "jobserver-w")
		}
	default:
		return nil, fmt.Errorf("dial jobserver: unknown style %v", a.Style)
	}
	return c, nil
}

// checkPipe makes sure r and w are the two ends of one pipe (or FIFO), open
// for reading and for writing. Being open is not enough: when a parent make
// closes the jobserver for a recipe line not marked '+', the numbers are
// free for reuse, and a Go program's runtime reuses them at once (Go 1.25
// keeps its cgroup CPU limit files open, as descriptors 3 and 4 if free).
func checkPipe(r, w int) error {
	var sts [2]unix.Stat_t
	for i, fd := range []int{r, w} {
		if err := unix.Fstat(fd, &sts[i]); err != nil {
			return fmt.Errorf("jobserver descriptor %d is not open (a parent make that did not mark this command with '+' closes them): %w", fd, err)
		}
		if sts[i].Mode&unix.S_IFMT != unix.S_IFIFO {
			return fmt.Errorf("jobserver descriptor %d is not a pipe (mode %o): the parent closed the jobserver, as make does for a recipe line not marked with '+', and the number was reused", fd, sts[i].Mode)
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			return fmt.Errorf("jobserver descriptor %d: %w", fd, err)
		}
		acc := fl & unix.O_ACCMODE
		if acc != unix.O_RDWR && (i == 0 && acc != unix.O_RDONLY || i == 1 && acc != unix.O_WRONLY) {
			return fmt.Errorf("jobserver descriptors %d,%d: %d is not open for %s", r, w, fd, [2]string{"reading", "writing"}[i])
		}
	}
	if sts[0].Dev != sts[1].Dev || sts[0].Ino != sts[1].Ino {
		return fmt.Errorf("jobserver descriptors %d,%d are not two ends of one pipe: the parent closed the jobserver, as make does for a recipe line not marked with '+', and the numbers were reused", r, w)
	}
	return nil
}

// FromEnv opens the jobserver named in the environment, looking at
// CARGO_MAKEFLAGS, MAKEFLAGS and MFLAGS in that order and using the first
// one that is set, as cargo's jobserver crate does.
func FromEnv() (*Client, error) {
	for _, name := range []string{"CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS"} {
		v, ok := os.LookupEnv(name)
		if !ok {
			continue
		}
		m, err := ParseMakeflags(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if m.Auth == nil {
			return nil, ErrNoJobserver
		}
		return Dial(*m.Auth)
	}
	return nil, ErrNoJobserver
}

// Acquire waits for a free slot or for ctx to end.
func (c *Client) Acquire(ctx context.Context) (Slot, error) {
	select {
	case <-c.implicit:
		return Slot{implicit: true}, nil
	case c.reader <- struct{}{}:
	case <-ctx.Done():
		return Slot{}, ctx.Err()
	}
	defer func() { <-c.reader }()
	stop := context.AfterFunc(ctx, c.poke)
	defer stop()
	var b [1]byte
	for {
		// Clear the deadline before looking at the implicit slot and ctx,
		// so a poke that comes after the look still interrupts the read.
		if err := c.r.SetReadDeadline(time.Time{}); err != nil {
			return Slot{}, fmt.Errorf("jobserver read: %w", err)
		}
		select {
		case <-c.implicit:
			return Slot{implicit: true}, nil
		default:
		}
		if err := ctx.Err(); err != nil {
			return Slot{}, err
		}
		n, err := c.r.Read(b[:])
		if n == 1 {
			return Slot{b: b[0]}, nil
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue // poked: ctx ended or the implicit slot came back
		}
		if err == nil {
			err = errors.New("end of file")
		}
		return Slot{}, fmt.Errorf("jobserver read: %w", err)
	}
}

// poke wakes a reader blocked in Acquire.
func (c *Client) poke() { c.r.SetReadDeadline(time.Now()) }

// Release gives a slot back. The byte read is the byte written back.
func (c *Client) Release(s Slot) error {
	if s.implicit {
		select {
		case c.implicit <- struct{}{}:
		default:
			return errors.New("jobserver release: implicit slot released twice")
		}
		c.poke()
		return nil
	}
	if _, err := c.w.Write([]byte{s.b}); err != nil {
		return fmt.Errorf("jobserver release: %w", err)
	}
	return nil
}

// Close closes the client's descriptors. Tokens it still holds are lost to
// the jobserver, as they are when make is killed.
func (c *Client) Close() error {
	err := c.r.Close()
	if c.w != c.r {
		err = errors.Join(err, c.w.Close())
	}
	return err
}
