package jobserver

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, f *FIFO) *Client {
	t.Helper()
	c, err := Dial(FIFOAuth(f.Path()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func acquire(t *testing.T, c *Client) Slot {
	t.Helper()
	s, err := c.Acquire(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestClientImplicitSlotFirst(t *testing.T) {
	t.Parallel()
	f := newFIFO(t, 2)
	c := dial(t, f)
	s0 := acquire(t, c)
	if !s0.Implicit() {
		t.Fatal("first slot is not the implicit one")
	}
	wantCounts(t, f, 2, 2)
	s1, s2 := acquire(t, c), acquire(t, c)
	if s1.Implicit() || s2.Implicit() {
		t.Fatal("second and third slots should be tokens")
	}
	wantCounts(t, f, 0, 2)
	for _, s := range []Slot{s2, s0, s1} {
		if err := c.Release(s); err != nil {
			t.Fatal(err)
		}
	}
	wantCounts(t, f, 2, 2)
	if err := c.Release(s0); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("releasing the implicit slot twice: %v", err)
	}
	// The implicit slot is free again: the next Acquire takes it, not a token.
	if s := acquire(t, c); !s.Implicit() {
		t.Error("implicit slot did not come back")
	}
	wantCounts(t, f, 2, 2)
}

// The byte read is the byte written back: gcc writes 'G', make '+'.
func TestClientEchoesByte(t *testing.T) {
	t.Parallel()
	f := newFIFO(t, 0)
	w, err := os.OpenFile(f.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte("G")); err != nil {
		t.Fatal(err)
	}
	c := dial(t, f)
	acquire(t, c) // implicit
	s := acquire(t, c)
	if err := c.Release(s); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if n, err := w.Read(b); err != nil || string(b[:n]) != "G" {
		t.Errorf("pipe holds %q, %v; want G", b[:n], err)
	}
}

func TestAcquireCancelWhileBlocked(t *testing.T) {
	t.Parallel()
	f := newFIFO(t, 0)
	c := dial(t, f)
	acquire(t, c) // implicit; the pool is empty now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var started atomic.Bool
	go func() {
		started.Store(true)
		_, err := c.Acquire(ctx)
		done <- err
	}()
	for !started.Load() {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let it block in the read; not needed for correctness
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Acquire after cancel: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Acquire did not return after its context was cancelled")
	}
	// The client still works: a token added now is read.
	if err := f.Add(1); err != nil {
		t.Fatal(err)
	}
	if s := acquire(t, c); s.Implicit() {
		t.Error("got the implicit slot, which is held")
	}
	wantCounts(t, f, 0, 1)
	// An already cancelled context never reads a token.
	if _, err := c.Acquire(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Acquire with a cancelled context: %v", err)
	}
}

func TestImplicitReleaseWakesAcquire(t *testing.T) {
	t.Parallel()
	f := newFIFO(t, 0)
	c := dial(t, f)
	s0 := acquire(t, c)
	got := make(chan Slot, 1)
	go func() {
		s, err := c.Acquire(testCtx(t))
		if err != nil {
			t.Error(err)
		}
		got <- s
	}()
	time.Sleep(20 * time.Millisecond) // let it block in the read; not needed for correctness
	if err := c.Release(s0); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if !s.Implicit() {
			t.Error("woken Acquire did not get the implicit slot")
		}
	case <-time.After(time.Minute):
		t.Fatal("releasing the implicit slot did not wake Acquire")
	}
	wantCounts(t, f, 0, 0)
}

func TestTokenWakesAcquire(t *testing.T) {
	t.Parallel()
	f := newFIFO(t, 0)
	c := dial(t, f)
	acquire(t, c)
	got := make(chan Slot, 1)
	go func() {
		s, err := c.Acquire(testCtx(t))
		if err != nil {
			t.Error(err)
		}
		got <- s
	}()
	time.Sleep(20 * time.Millisecond)
	if err := f.Add(1); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s.Implicit() {
			t.Error("got the implicit slot, which is held")
		}
	case <-time.After(time.Minute):
		t.Fatal("a new token did not wake Acquire")
	}
	wantCounts(t, f, 0, 1)
}

// Many goroutines share one client: never more than N+1 slots are out, and
// every token comes back.
func TestClientConcurrent(t *testing.T) {
	t.Parallel()
	const tokens, workers, rounds = 3, 8, 200
	f := newFIFO(t, tokens)
	c := dial(t, f)
	var held, peak atomic.Int32
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				s, err := c.Acquire(testCtx(t))
				if err != nil {
					t.Error(err)
					return
				}
				n := held.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				held.Add(-1)
				if err := c.Release(s); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > tokens+1 {
		t.Errorf("%d slots out at once, want at most %d", p, tokens+1)
	}
	wantCounts(t, f, tokens, tokens)
}

func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, nil, 0o600)
	for _, c := range []struct {
		a     Auth
		parts []string
	}{
		{FIFOAuth(filepath.Join(dir, "missing")), []string{"missing", "no such file", "broker running"}},
		{FIFOAuth(regular), []string{regular, "not a FIFO"}},
		{PipeAuth(1000, 1001), []string{"descriptor 1000 is not open", "'+'"}},
		{PipeAuth(-2, -2), []string{"-2,-2", "withheld", "'+'"}},
		{Auth{}, []string{"unknown style"}},
	} {
		cl, err := Dial(c.a)
		if err == nil {
			cl.Close()
		}
		wantErr(t, err, c.parts...)
	}
}

// FromEnv takes the first of CARGO_MAKEFLAGS, MAKEFLAGS and MFLAGS that is
// set, even if it is empty, as jobserver-rs does. Not parallel: it changes
// the environment.
func TestFromEnvPrecedence(t *testing.T) {
	pools := map[string]*FIFO{"cargo": newFIFO(t, 1), "make": newFIFO(t, 1), "mflags": newFIFO(t, 1)}
	flag := func(name string) string { return WithAuth("", FIFOAuth(pools[name].Path())) }
	unset := "<unset>"
	for _, c := range []struct {
		cargo, make, mflags string
		want                string // pool name, or "" for ErrNoJobserver
	}{
		{flag("cargo"), flag("make"), flag("mflags"), "cargo"},
		{unset, flag("make"), flag("mflags"), "make"},
		{unset, unset, flag("mflags"), "mflags"},
		{"", flag("make"), flag("mflags"), ""},
		{unset, "", flag("mflags"), ""},
		{unset, " -j4", flag("mflags"), ""},
		{unset, unset, unset, ""},
	} {
		for name, v := range map[string]string{"CARGO_MAKEFLAGS": c.cargo, "MAKEFLAGS": c.make, "MFLAGS": c.mflags} {
			t.Setenv(name, "")
			if v == unset {
				os.Unsetenv(name)
			} else {
				os.Setenv(name, v)
			}
		}
		cl, err := FromEnv()
		if c.want == "" {
			if !errors.Is(err, ErrNoJobserver) {
				t.Errorf("%+v: FromEnv() error = %v, want ErrNoJobserver", c, err)
			}
			if err == nil {
				cl.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("%+v: %v", c, err)
			continue
		}
		acquire(t, cl) // implicit
		s := acquire(t, cl)
		for name, f := range pools {
			want := 1
			if name == c.want {
				want = 0
			}
			if got := mustFree(t, f); got != want {
				t.Errorf("%+v: pool %s has %d free, want %d", c, name, got, want)
			}
		}
		cl.Release(s)
		cl.Close()
	}
	t.Setenv("MAKEFLAGS", "--jobserver-auth=bogus")
	os.Unsetenv("CARGO_MAKEFLAGS")
	if _, err := FromEnv(); err == nil || !strings.Contains(err.Error(), "MAKEFLAGS") {
		t.Errorf("FromEnv with a bad auth: %v", err)
	}
}

// A client in another process joins through inherited descriptors, the
// way make 4.3 and gcc 12 do: the FIFO opened afresh, R and W passed as
// descriptors 3 and 4, MAKEFLAGS naming them.
func TestPipeClientInheritedFDs(t *testing.T) {
	t.Parallel()
	const tokens = 3
	f := newFIFO(t, tokens)
	r, w := openPipeEnds(t, f.Path())
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(),
		"JOBSERVER_TEST_CHILD=hold",
		"JOBSERVER_TEST_SLOTS="+strconv.Itoa(tokens+1),
		"MAKEFLAGS="+WithAuth(" -j8", PipeAuth(3, 4)),
	)
	cmd.ExtraFiles = []*os.File{r, w}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	r.Close()
	w.Close()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "held 4 implicit=true" {
		t.Fatalf("child said %q, want held 4 implicit=true", lines.Text())
	}
	wantCounts(t, f, 0, tokens)
	stdin.Close()
	if !lines.Scan() || lines.Text() != "released" {
		t.Fatalf("child said %q, want released", lines.Text())
	}
	io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, f, tokens, tokens)
}

// openPipeEnds opens a FIFO the way a parent passes a pipe-style jobserver:
// a fresh read end and write end, blocking, not close-on-exec in the child.
func openPipeEnds(t testing.TB, path string) (r, w *os.File) {
	t.Helper()
	rfd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	wfd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(rfd), "jobserver-r"), os.NewFile(uintptr(wfd), "jobserver-w")
}

// Descriptors that are open but are not the two ends of one jobserver pipe
// are refused: after a parent closed the jobserver the numbers get reused
// (a Go program's runtime keeps cgroup files open on them).
func TestDialPipeChecksDescriptors(t *testing.T) {
	file, err := os.Open("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	r1, w1, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	defer w1.Close()
	r2, w2, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	defer w2.Close()
	fd := func(f *os.File) int { return int(f.Fd()) }
	for _, c := range []struct {
		r, w  int
		parts []string
	}{
		{fd(file), fd(w1), []string{"not a pipe", "'+'"}},
		{fd(r1), fd(file), []string{"not a pipe"}},
		{fd(r1), fd(w2), []string{"not two ends of one pipe"}},
		{fd(w1), fd(r1), []string{"not open for reading"}},
		{fd(r1), fd(r1), []string{"not open for writing"}},
	} {
		cl, err := Dial(PipeAuth(c.r, c.w))
		if err == nil {
			cl.Close()
		}
		wantErr(t, err, c.parts...)
	}
}
