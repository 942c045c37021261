// Package nixhook is tokend's Nix pre-build-hook: for one sandboxed build
// it reads the build's derivation, registers a lease with tokend owned by
// the build's sandbox directory, and produces the hook command that maps
// the lease's FIFO into the sandbox at SandboxFIFO, where nix/setup-hook.sh
// looks for it.
//
// It owns the contract with Nix, whose rules are strict (testdata/nix
// tests them with real Nix): Nix runs the hook synchronously for every
// sandboxed build and fails the build on a non-zero exit, on any output
// but a well-formed command, and on a mapped path that does not exist. So
// Run never fails: whenever tokend is down, slow, refusing or confused, or
// the derivation cannot be read, the answer is no output at all and the
// build runs as it would without tokend. It never waits for tokens: the
// hook stalls the nix worker that runs it, so the waiting happens on the
// build side instead. The lease comes with a gate, mapped at SandboxGate,
// that the setup hook reads until tokend admits the build.
//
// It also reads Nix's settings as Nix does (Conf), for tokenctl doctor to
// tell whether Nix will run the hook at all.
//
// cmd/tokend-nix-hook is its command. It speaks to tokend through package
// api alone, so the hook links nothing of the daemon.
package nixhook

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tokend/tokend/api"
)

// SandboxFIFO is where every build finds its lease's FIFO. Fixed, because
// the hook cannot set environment variables in the build.
const SandboxFIFO = "/run/tokend/jobserver.fifo"

// SandboxGate is where every build finds its lease's gate: the file the
// setup hook reads to wait for admission (see broker's gate).
const SandboxGate = "/run/tokend/admission"

// DefaultTimeout bounds a run of the hook. tokend answers in about a
// millisecond; the bound is for a wedged tokend, which would otherwise
// stall the nix worker that runs the hook (and the log handling of every
// build in it). Connecting needs no bound of its own: connect(2) on a
// non-blocking unix socket, as Go makes them, does not wait for tokend to
// accept; it fails with EAGAIN when tokend's backlog is full.
const DefaultTimeout = time.Second

// Options configure Run.
type Options struct {
	// Socket is tokend's control socket.
	Socket string
	// Timeout bounds the whole run. Zero means DefaultTimeout.
	Timeout time.Duration
	// NixStateDir is Nix's state directory. "" means DefaultNixStateDir.
	NixStateDir string
}

// Result is what one run of the hook prints.
type Result struct {
	// Stdout is exactly what goes to Nix: "" or Command(fifo).
	Stdout string
	// Problem is one line for stderr when something is misconfigured or
	// broken, "" when all went well or tokend simply is not running.
	Problem string
	// Lease is the lease registered for the build, if one was.
	Lease api.Registered
}

// Command is the hook output that maps the lease's FIFO into the sandbox
// at SandboxFIFO and its gate, if it has one, at SandboxGate. The blank
// line ends the command.
func Command(reg api.Registered) string {
	out := "extra-sandbox-paths\n" + SandboxFIFO + "=" + reg.FIFO + "\n"
	if reg.Gate != "" {
		out += SandboxGate + "=" + reg.Gate + "\n"
	}
	return out + "\n"
}

// Run registers a lease for the build of drvPath in sandboxDir (the hook's
// two arguments) and returns the output that maps its FIFO, or no output
// and why not.
func Run(ctx context.Context, opts Options, drvPath, sandboxDir string) Result {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.NixStateDir == "" {
		opts.NixStateDir = DefaultNixStateDir()
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	drv, err := describeBounded(ctx, opts.Timeout, drvPath, sandboxDir)
	if err != nil {
		return problem("%v", err)
	}
	if !filepath.IsAbs(sandboxDir) {
		return problem("sandbox directory %q is not an absolute path", sandboxDir)
	}
	st, err := os.Stat(sandboxDir)
	if err != nil {
		return problem("sandbox directory: %v", err)
	}
	// The build's group: nixbld for classic build users, the build's own
	// group with auto-allocate-uids. Nix makes the sandbox root 0750
	// root:<that group>.
	gid := int(st.Sys().(*syscall.Stat_t).Gid)

	c := api.NewClient(opts.Socket)
	reg, err := c.Register(ctx, api.RegisterRequest{
		Name: drv.Name, OwnerDir: sandboxDir, GID: &gid, Features: drv.Features, Gate: true,
		Cgroup: buildCgroup(opts.NixStateDir, gid),
	})
	if err != nil {
		return unreachable(opts, err)
	}
	leases := filepath.Join(filepath.Dir(opts.Socket), "leases")
	if err := checkMapped(reg.FIFO, os.ModeNamedPipe, leases); err != nil {
		// tokend ends the lease when the sandbox goes; ending it now
		// gives its slot back for the build's whole run.
		c.End(ctx, reg.ID)
		return problem("lease %s from tokend: fifo: %v", reg.ID, err)
	}
	if reg.Gate != "" {
		if err := checkMapped(reg.Gate, 0, leases); err != nil {
			c.End(ctx, reg.ID)
			return problem("lease %s from tokend: gate: %v", reg.ID, err)
		}
	}
	return Result{Stdout: Command(reg), Lease: reg}
}

// describeBounded is Describe within the hook's deadline: a slow disk or
// a huge .drv makes the hook give up on the jobserver, saying it was the
// derivation and not tokend that took the time.
func describeBounded(ctx context.Context, timeout time.Duration, drvPath, sandboxDir string) (Derivation, error) {
	type described struct {
		drv Derivation
		err error
	}
	done := make(chan described, 1)
	go func() {
		d, err := Describe(drvPath, sandboxDir)
		done <- described{d, err}
	}()
	select {
	case d := <-done:
		return d.drv, d.err
	case <-ctx.Done():
		return Derivation{}, fmt.Errorf("reading the derivation %s took longer than the hook's %v", drvPath, timeout)
	}
}

// unreachable turns a failure to talk to tokend into a Result: silence
// when there is no socket (tokend is not running), one line otherwise.
func unreachable(opts Options, err error) Result {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return Result{}
	case errors.Is(err, syscall.ECONNREFUSED):
		return problem("nothing answers on tokend's socket %s (a stale socket of a tokend that died?); start tokend or remove the socket", opts.Socket)
	case errors.Is(err, syscall.EAGAIN):
		return problem("tokend at %s accepts no connections (its backlog is full: wedged or overloaded)", opts.Socket)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		return problem("tokend at %s did not answer within %v (the hook's bound, reading the derivation included)", opts.Socket, opts.Timeout)
	}
	return problem("%v", err)
}

// checkMapped refuses a path Nix should not map into the sandbox: Nix
// fails the build on a source that does not exist here (tokend in another
// mount namespace, say), a line break or '=' would break the command, and
// whatever answers on the socket must not get any file it names mounted
// into a build. So the path must be a file of the wanted type directly in
// tokend's leases directory (leases/ beside the socket), owned by root,
// or by the hook's own user when it does not run as root.
func checkMapped(path string, want os.FileMode, leases string) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path || strings.ContainsAny(path, "\n\r\x00=") {
		return fmt.Errorf("unusable path %q", path)
	}
	if filepath.Dir(path) != leases {
		return fmt.Errorf("%s is not in tokend's leases directory %s", path, leases)
	}
	for _, p := range []string{leases, path} {
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if uid := st.Sys().(*syscall.Stat_t).Uid; uid != 0 && int(uid) != os.Geteuid() {
			return fmt.Errorf("%s is owned by uid %d, not by root", p, uid)
		}
		if p == leases && !st.IsDir() {
			return fmt.Errorf("%s is not a directory", p)
		}
		if p == path && st.Mode().Type() != want {
			kind := "regular file"
			if want == os.ModeNamedPipe {
				kind = "fifo"
			}
			return fmt.Errorf("%s is not a %s", path, kind)
		}
	}
	return nil
}

// problem is a Result with no output and one line for stderr saying that
// the build goes on without the jobserver.
func problem(format string, args ...any) Result {
	msg := strings.Join(strings.Fields(fmt.Sprintf(format, args...)), " ")
	return Result{Problem: msg + "; this build runs without tokend's jobserver"}
}
