package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// build is one package's attempt in flight.
type build struct {
	pkg     int
	attempt int
	cmd     *exec.Cmd
}

// finished is how a build's attempt ended: ok, or failed (err is set
// only when its command could not be waited for), and the CPU it used.
type finished struct {
	b   build
	ok  bool
	cpu time.Duration
	err error
}

// builds runs a scenario's packages, a few at a time as Nix runs
// max-jobs builds, each in its own process group so that a stopped run
// leaves none of its processes behind.
type builds struct {
	pkgs  []Package
	dir   string // each package builds in dir/NAME, logging to dir/NAME.log
	tools Tools
	bin   Binaries
	st    Strategy
	// makeflags is the shared jobserver's MAKEFLAGS, or "tokend:SOCKET";
	// enter the shell command that puts a build in the run's limit.
	makeflags, enter string
	done             chan finished
	running          map[*exec.Cmd]bool
}

// run builds every package, slots at a time, until all are built or
// failed for good, ctx ends, or timeout fires (the unfinished packages
// then count as failed). Its counts go to res.
func (bs *builds) run(ctx context.Context, slots int, timeout <-chan time.Time, res *Result) error {
	bs.done, bs.running = make(chan finished), map[*exec.Cmd]bool{}
	defer bs.stopAll()
	queue := make([]build, len(bs.pkgs))
	for i := range bs.pkgs {
		queue[i] = build{pkg: i, attempt: 1}
	}
	for len(queue) > 0 || len(bs.running) > 0 {
		for len(queue) > 0 && len(bs.running) < slots {
			if err := bs.start(queue[0]); err != nil {
				return err
			}
			queue = queue[1:]
		}
		var f finished
		select {
		case f = <-bs.done:
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout:
			// A build that thrashes makes no progress: stop it, and
			// count what did not finish as failed.
			res.TimedOut = true
			res.Failed += len(queue) + len(bs.running)
			queue = nil
			res.WastedCPU += bs.stopAll()
			continue
		}
		delete(bs.running, f.b.cmd)
		again, err := bs.finished(f, res)
		if err != nil {
			return err
		}
		queue = append(queue, again...)
	}
	return nil
}

// start writes b's package and starts its build.
func (bs *builds) start(b build) error {
	p := bs.pkgs[b.pkg]
	pdir := filepath.Join(bs.dir, p.Name)
	if err := writePackage(pdir, p, bs.tools); err != nil {
		return err
	}
	b.cmd = buildCommand(bs.bin, bs.st, p, pdir, bs.makeflags, bs.enter)
	logf, err := os.OpenFile(pdir+".log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("build log: %w", err)
	}
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	bs.running[b.cmd] = true
	go func() {
		err := b.cmd.Wait()
		logf.Close()
		f := finished{b: b, ok: err == nil}
		if ps := b.cmd.ProcessState; ps != nil {
			f.cpu = ps.UserTime() + ps.SystemTime()
		}
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			f.err = err
		}
		bs.done <- f
	}()
	return nil
}

// finished counts a build that ended into res, and returns the build to
// run again, if the strategy retries it.
func (bs *builds) finished(f finished, res *Result) ([]build, error) {
	name := bs.pkgs[f.b.pkg].Name
	switch {
	case f.err != nil:
		return nil, fmt.Errorf("build %s: %w", name, f.err)
	case f.ok:
		return nil, nil
	}
	res.WastedCPU += f.cpu.Seconds()
	if bs.st.Kind == Retry && f.b.attempt < MaxAttempts {
		res.Reruns++
		// A failed Nix build starts again from nothing.
		if err := os.RemoveAll(filepath.Join(bs.dir, name)); err != nil {
			return nil, fmt.Errorf("clean %s: %w", name, err)
		}
		return []build{{pkg: f.b.pkg, attempt: f.b.attempt + 1}}, nil
	}
	res.Failed++
	return nil, nil
}

// stopAll kills every running build's process group, waits for them, and
// returns the CPU seconds they had used.
func (bs *builds) stopAll() (cpu float64) {
	for c := range bs.running {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
	}
	for len(bs.running) > 0 {
		f := <-bs.done
		delete(bs.running, f.b.cmd)
		cpu += f.cpu.Seconds()
	}
	return cpu
}

// buildCommand is the command that builds one package under st; makeflags
// is the shared jobserver's MAKEFLAGS, or "tokend:SOCKET".
func buildCommand(bin Binaries, st Strategy, p Package, dir, makeflags, enter string) *exec.Cmd {
	env := cleanEnv()
	var tool []string
	switch {
	case p.Cargo != nil:
		// Shared and Tokend give no -j: cargo takes the jobserver in
		// MAKEFLAGS (tokenctl sets CARGO_MAKEFLAGS too) and would ignore it.
		tool = append([]string{bin.Cargo}, p.Cargo.args(filepath.Join(dir, "target"))...)
		env = append(env, "CARGO_HOME="+p.Cargo.Home, "CARGO_TERM_COLOR=never")
	case p.Ninja:
		tool = []string{bin.Ninja, "-C", dir}
	default:
		tool = []string{bin.Make, "-C", dir}
	}
	switch st.Kind {
	case Serial, Static, Retry:
		tool = append(tool, "-j"+strconv.Itoa(st.N))
	case Load:
		tool = append(tool, "-j"+strconv.Itoa(st.N), "-l"+strconv.Itoa(st.L))
	case Shared:
		env = append(env, "MAKEFLAGS="+makeflags)
	case Tokend:
		socket := strings.TrimPrefix(makeflags, "tokend:")
		tool = append([]string{bin.Tokenctl, "--socket", socket, "run", "--name", p.Name, "--"}, tool...)
	}
	c := exec.Command("/bin/sh", append([]string{"-c", enter, "sh"}, tool...)...)
	c.Env = env
	return c
}

// cleanEnv is this process's environment without any jobserver in it.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "TOKEND_SOCKET":
			continue
		}
		env = append(env, kv)
	}
	return env
}

func writePackage(dir string, p Package, t Tools) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("package dir: %w", err)
	}
	if p.Cargo != nil {
		return nil
	}
	name, write := "Makefile", WriteMakefile
	if p.Ninja {
		name, write = "build.ninja", WriteNinja
	}
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := write(f, p, t); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// workingSet returns a file of mib MiB of data in dir, creating it the
// first time, with none of its pages cached: each run faults them in and
// is charged for them afresh.
func workingSet(dir string, mib int) (string, error) {
	path := filepath.Join(dir, fmt.Sprintf("workingset-%d.bin", mib))
	if st, err := os.Stat(path); err != nil || st.Size() != int64(mib)<<20 {
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = byte(i*7 + i>>9)
		}
		f, err := os.Create(path)
		if err != nil {
			return "", fmt.Errorf("working set: %w", err)
		}
		for range mib {
			if _, err := f.Write(buf); err != nil {
				f.Close()
				return "", fmt.Errorf("working set: %w", err)
			}
		}
		if err := f.Close(); err != nil {
			return "", fmt.Errorf("working set: %w", err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("working set: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("working set: sync: %w", err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return "", fmt.Errorf("working set: drop cached pages: %w", err)
	}
	return path, nil
}
