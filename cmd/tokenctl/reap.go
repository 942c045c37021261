package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// becomeSubreaper makes tokenctl the parent of every process of its build
// that double-forks away from its parent (a daemon, a `(cmd &)` in a
// shell): such an orphan would go to PID 1 and leave the owner's process
// tree, from which tokend samples the build and moves it into its lease
// cgroup. Orphans it gets are reaped by reapOrphans.
func becomeSubreaper() {
	_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// reapOrphans reaps the exited orphans tokenctl was given as a subreaper
// until ctx ends, never the command it waits for itself (main).
func reapOrphans(ctx context.Context, main int) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		}
		for _, pid := range children() {
			if pid == main {
				continue
			}
			var ws syscall.WaitStatus
			syscall.Wait4(pid, &ws, syscall.WNOHANG, nil) // reaps it if it has exited
		}
	}
}

// children lists this process's children, from every thread's list.
func children() []int {
	lists, _ := filepath.Glob("/proc/self/task/*/children")
	var out []int
	for _, l := range lists {
		raw, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(raw)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}
