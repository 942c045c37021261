package buildtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// jobserverVars are the variables through which a jobserver or a build
// configuration would leak from the test's own environment into a build.
var jobserverVars = []string{
	"MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "MAKEOVERRIDES",
	"MAKE_TERMOUT", "MAKE_TERMERR", "GNUMAKEFLAGS", "RUSTC_WRAPPER",
	"RUSTC_WORKSPACE_WRAPPER", "CARGO_TARGET_DIR", "CARGO_BUILD_JOBS",
	"CARGO_BUILD_TARGET_DIR", "NINJA_STATUS",
}

// CleanEnv is this process's environment without any jobserver or build
// variables, plus extra ("NAME=value"; later entries win).
func CleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, v := range jobserverVars {
			if name == v {
				drop = true
				break
			}
		}
		if !drop {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// markerVar marks every process a Proc starts: descendants inherit it, so
// Kill finds them even when they left the process group (ninja starts each
// job in a group of its own).
const markerVar = "BUILDTEST_RUN"

var signalsOnce sync.Once

// defaultSignalsInChildren makes the builds this process starts see the
// default action of the termination signals. A signal this process was
// started ignoring (a shell's background job ignores SIGINT, nohup SIGHUP)
// would stay ignored across exec in every build, and a client that ignores
// SIGINT cannot be measured dying of it. Catching such a signal instead, and
// dropping it as ignoring would, lets exec reset it to the default.
func defaultSignalsInChildren() {
	signalsOnce.Do(func() {
		var ignored []os.Signal
		for _, s := range []os.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM} {
			if signal.Ignored(s) {
				ignored = append(ignored, s)
			}
		}
		if len(ignored) > 0 {
			signal.Notify(make(chan os.Signal, 1), ignored...)
		}
	})
}

// Proc is a build started by Start.
type Proc struct {
	Cmd *exec.Cmd

	marker string
	out    *lockedBuffer
	done   chan struct{}
	err    error
}

// Start starts cmd in a process group of its own. A nil cmd.Env means
// CleanEnv(). Output not redirected by the caller is collected for Output.
// When t ends, everything the build started is killed.
func Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	defaultSignalsInChildren()
	var id [8]byte
	rand.Read(id[:])
	p := &Proc{Cmd: cmd, marker: hex.EncodeToString(id[:]), out: &lockedBuffer{}, done: make(chan struct{})}
	if cmd.Env == nil {
		cmd.Env = CleanEnv()
	}
	cmd.Env = append(cmd.Env, markerVar+"="+p.marker)
	if cmd.Stdout == nil {
		cmd.Stdout = p.out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = p.out
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.Kill)
	return p
}

// MustRun starts cmd, waits for it, and fails t if it does not end before ctx
// or fails.
func MustRun(ctx context.Context, t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := Start(t, cmd)
	if err := p.Wait(ctx, t); err != nil {
		t.Fatalf("%s: %v; output:\n%s", cmd, err, p.Output())
	}
	return p
}

// Wait waits for the process to exit and returns how it ended. If ctx ends
// first, it kills the build and fails t.
func (p *Proc) Wait(ctx context.Context, t testing.TB) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		p.Kill()
		t.Fatalf("%s did not exit: %v; output:\n%s", p.Cmd, ctx.Err(), p.Output())
		return nil
	}
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is how the process ended; valid once Done is closed.
func (p *Proc) Err() error { return p.err }

// Output is what the build printed so far, unless its output was
// redirected by the caller.
func (p *Proc) Output() string { return p.out.String() }

// Signal sends sig to the process only, not to its group.
func (p *Proc) Signal(sig syscall.Signal) error {
	return p.Cmd.Process.Signal(sig)
}

// Pids lists the live processes of the build: the process and every
// descendant still running, wherever it was reparented. Zombies are not
// counted: they hold no descriptors.
func (p *Proc) Pids() []int {
	needle := []byte(markerVar + "=" + p.marker)
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, needle) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// WaitGone waits until no process of the build is left and reports
// whether that happened before ctx ended.
func (p *Proc) WaitGone(ctx context.Context) bool {
	for {
		select {
		case <-p.done:
			if len(p.Pids()) == 0 {
				return true
			}
		default:
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Kill kills the process, its process group and every descendant with
// SIGKILL and waits (up to a minute) until they are all gone.
func (p *Proc) Kill() {
	deadline := time.Now().Add(time.Minute)
	for {
		syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
		pids := p.Pids()
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-p.done:
			if len(pids) == 0 {
				return
			}
		default:
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
