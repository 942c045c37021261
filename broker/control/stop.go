package control

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/tokend/tokend/broker"
	"github.com/tokend/tokend/broker/memory"
)

// A nix build without use-cgroups has no group to freeze: the brake stops
// it instead, SIGSTOP to every process confined to its sandbox, and
// resumes it with SIGCONT. A stopped job keeps its memory and its tokens,
// as a frozen one does; its parents (make, the nix worker) do not wait for
// stops, so nothing notices but the clock.

// stopRounds bounds how often stopping looks again for processes forked
// while it stopped the others. A stopped process forks no more, so each
// round can only find children started in the round before.
const stopRounds = 4

// sandboxProcs lists the processes confined to a sandbox directory, read
// afresh: a cached forest would miss what forked since.
type sandboxProcs func(dir string) ([]memory.Proc, error)

// stopSandbox stops every process confined to dir, never tokend itself.
func stopSandbox(list sandboxProcs, dir string) (int, error) {
	stopped := map[int]bool{}
	for range stopRounds {
		ps, err := list(dir)
		if err != nil {
			return len(stopped), fmt.Errorf("stop the build in %s: %w", dir, err)
		}
		fresh := 0
		for _, p := range ps {
			// A sandbox lease is root's (only root owns a lease by a
			// directory): it reaches the build users, never tokend,
			// its ancestors or PID 1.
			if stopped[p.PID] || broker.Reachable(0, p.PID) != nil {
				continue
			}
			if err := syscall.Kill(p.PID, syscall.SIGSTOP); err != nil && !errors.Is(err, syscall.ESRCH) {
				return len(stopped), fmt.Errorf("stop process %d of the build in %s: %w", p.PID, dir, err)
			}
			stopped[p.PID] = true
			fresh++
		}
		if fresh == 0 {
			break
		}
	}
	return len(stopped), nil
}

// resumeSandbox resumes every process confined to dir. SIGCONT to a
// process that is not stopped does nothing, so it is safe to send to a
// build a previous tokend may or may not have stopped.
func resumeSandbox(list sandboxProcs, dir string) (int, error) {
	ps, err := list(dir)
	if err != nil {
		return 0, fmt.Errorf("resume the build in %s: %w", dir, err)
	}
	n := 0
	var errs error
	for _, p := range ps {
		if p.PID == os.Getpid() || p.PID <= 1 {
			continue
		}
		if err := syscall.Kill(p.PID, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = errors.Join(errs, fmt.Errorf("resume process %d of the build in %s: %w", p.PID, dir, err))
			continue
		}
		n++
	}
	return n, errs
}
