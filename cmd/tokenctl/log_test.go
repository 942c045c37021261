package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
)

// logLine waits until tokend's output has a line containing want and
// returns the last such line.
func (d *daemon) logLine(t *testing.T, want string) string {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for {
		lines := strings.Split(d.proc.Output(), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			if strings.Contains(lines[i], want) {
				return lines[i]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tokend never logged %q; output:\n%s", want, d.proc.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Issue 12: with a fixed budget (--tokens 6), tokend's log says what
// memory would allow, and never that the memory controller set a budget
// it did not set. Without one, it says the controller set the budget it
// did set.
func TestLogSaysWhatTheControllerDid(t *testing.T) {
	fixed := startDaemon(t, t.TempDir(), 6)
	st, _ := fixed.waitStatus(t, "the memory controller's first decision", func(st api.Status) bool { return st.Memory != nil })
	line := fixed.logLine(t, "memory would allow")
	t.Logf("fixed budget: %s", line)
	for _, want := range []string{
		fmt.Sprintf("memory would allow %d; the budget stays fixed", st.Memory.Target),
		"budget=6 ", "fixed_by=config ", fmt.Sprintf("reason=%q", st.Memory.Reason),
	} {
		if !strings.Contains(line, want) {
			t.Errorf("log line lacks %q: %s", want, line)
		}
	}
	if st.Budget != 6 || st.BudgetReason != "config" {
		t.Errorf("budget %d (%s), want 6 (config)", st.Budget, st.BudgetReason)
	}
	if out := fixed.proc.Output(); strings.Contains(out, "memory controller set the budget") {
		t.Errorf("with a fixed budget, tokend logged that the memory controller set it:\n%s", out)
	}

	steered := startDaemonArgs(t, t.TempDir())
	steered.waitStatus(t, "the memory controller's first decision", func(st api.Status) bool { return st.Memory != nil })
	line = steered.logLine(t, "memory controller set the budget")
	st = steered.status(t)
	t.Logf("steered budget: %s", line)
	if want := fmt.Sprintf("budget=%d reason=%q", st.Budget, st.BudgetReason); !strings.Contains(line, want) || st.Budget != st.Memory.Target {
		t.Errorf("log line lacks %q, or the budget %d is not the controller's %d: %s", want, st.Budget, st.Memory.Target, line)
	}
	if out := steered.proc.Output(); strings.Contains(out, "memory would allow") {
		t.Errorf("with a steered budget, tokend logged what memory would allow as if fixed:\n%s", out)
	}
}
