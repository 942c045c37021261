package control

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker"
	"github.com/tokend/tokend/broker/memory"
	"github.com/tokend/tokend/internal/cgtest"
)

// frozenState reads cgroup.events' frozen line: whether the kernel has
// finished freezing the group.
func frozenState(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), "frozen 1")
}

// waitUntil polls cond every 20 ms for up to 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Lease cgroups on the real cgroup2 mount: made, frozen and thawed with a
// process inside, and removed only once that process is gone.
func TestCgroupsLive(t *testing.T) {
	m := cgtest.Need(t)
	parent := cgtest.MakeT(t, m.V2, 0)
	c, err := NewCgroups(string(parent), false, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	dir, err := c.Make("0123456789ab")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Owns(dir) || c.Owns(string(parent)) {
		t.Errorf("Owns(%s) = %v, Owns(parent) = %v", dir, c.Owns(dir), c.Owns(string(parent)))
	}
	cmd := cgtest.Command([]cgtest.Group{cgtest.Group(dir)}, "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-waited
	})
	waitUntil(t, "sleep to enter its group", func() bool {
		in, err := members(dir)
		return err == nil && in[cmd.Process.Pid]
	})

	if err := setFrozen(dir, true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the group to freeze", func() bool { return frozenState(t, dir) })
	if on, err := isFrozen(dir); err != nil || !on {
		t.Errorf("isFrozen = %v, %v after freezing", on, err)
	}
	if err := setFrozen(dir, false); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the group to thaw", func() bool { return !frozenState(t, dir) })

	// Removing a group that still holds a process never kills it: the
	// group goes once the process has.
	if err := setFrozen(dir, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("group removed while its process ran: %v", err)
	}
	if frozenState(t, dir) {
		t.Error("Remove left the group frozen")
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the pending group to be removed", func() bool {
		c.Retry()
		_, err := os.Stat(dir)
		return errors.Is(err, os.ErrNotExist)
	})
}

// The controller on a live broker with the host as the domain: it steers
// the budget with a reason, publishes what it sees, and a configured
// budget overrides it while it keeps deciding.
func TestControllerOnLiveBroker(t *testing.T) {
	b, err := broker.New(broker.Options{RuntimeDir: t.TempDir(), Tick: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := New(b, Config{
		Params:  Params{Tick: 20 * time.Millisecond},
		History: newTestHistory(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	runLive(t, b, ctl)
	l, err := b.Register(broker.LeaseRequest{Name: "self", Owner: api.Owner{PID: os.Getpid()}})
	if err != nil {
		t.Fatal(err)
	}
	var st api.Status
	waitUntil(t, "the controller to see the lease", func() bool {
		st = b.Status()
		return st.Memory != nil && len(st.Leases) == 1 && st.Leases[0].Memory != nil
	})
	m := st.Memory
	if m.Domain != "host" || m.PressureFile != "/proc/pressure/memory" || m.Headroom == 0 || m.Limit < m.Headroom {
		t.Errorf("memory status %+v", m)
	}
	if st.Budget != m.Target || st.BudgetReason != m.Reason {
		t.Errorf("budget %d (%s), but the controller wants %d (%s)", st.Budget, st.BudgetReason, m.Target, m.Reason)
	}
	switch st.BudgetReason {
	case ReasonHeadroom, ReasonGrowth, ReasonCPU:
	default:
		t.Errorf("budget reason %q, want one of the controller's", st.BudgetReason)
	}
	if lm := st.Leases[0].Memory; lm.Jobs != 1 || lm.Estimates.Compile != DefaultJobEstimate || lm.Source != "default" {
		t.Errorf("lease memory %+v, want one job estimated at the default", lm)
	}

	if err := b.Configure(5); err != nil {
		t.Fatal(err)
	}
	if st := b.Status(); st.Budget != 5 || st.BudgetReason != "config" || st.Memory == nil {
		t.Errorf("configured budget: %d (%s), memory %v", st.Budget, st.BudgetReason, st.Memory)
	}
	if err := b.Configure(0); err != nil {
		t.Fatal(err)
	}
	if st := b.Status(); st.BudgetReason == "config" || st.Budget != st.Memory.Target {
		t.Errorf("after the configured budget was lifted: %d (%s), controller wants %d", st.Budget, st.BudgetReason, st.Memory.Target)
	}
	if err := b.End(0, l.ID, "test over"); err != nil {
		t.Fatal(err)
	}
	if v := b.Status().InvariantViolations; v != 0 {
		t.Errorf("%d accounting invariant violations", v)
	}
}

// A misconfigured domain stops the controller at start, naming the fix.
func TestControllerRejectsBadDomain(t *testing.T) {
	b, err := broker.New(broker.Options{RuntimeDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(b, Config{Memory: memory.Config{Cgroup: t.TempDir()}})
	if err == nil || !strings.Contains(err.Error(), "memory.limit_in_bytes") {
		t.Errorf("error %v, want one naming the missing memory controller files", err)
	}
	_, err = New(b, Config{Params: Params{CPUMultiple: -1}})
	if err == nil || !strings.Contains(err.Error(), "cpu multiple") {
		t.Errorf("error %v, want one about the cpu multiple", err)
	}
}

// Sweep removes only empty groups named like leases that no adopted lease
// owns; Close removes a parent tokend owns once it is empty.
func TestCgroupsSweepAndClose(t *testing.T) {
	m := cgtest.Need(t)
	parent := cgtest.MakeT(t, m.V2, 0)
	c, err := NewCgroups(filepath.Join(string(parent), "tokend"), true, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	stale, err := c.Make("aaaaaaaaaaaa")
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := c.Make("bbbbbbbbbbbb")
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(c.Parent(), "operator-group")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	c.Sweep(map[string]bool{adopted: true})
	for dir, want := range map[string]bool{stale: false, adopted: true, other: true} {
		if _, err := os.Stat(dir); (err == nil) != want {
			t.Errorf("%s exists: %v, want %v", dir, err == nil, want)
		}
	}
	c.Close()
	if _, err := os.Stat(c.Parent()); err != nil {
		t.Errorf("Close removed a parent that still holds groups: %v", err)
	}
	for _, dir := range []string{adopted, other} {
		if err := os.Remove(dir); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if _, err := os.Stat(c.Parent()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left the empty parent tokend owns: %v", err)
	}
}

// The end of a lease wakes the controller, so that the lease is recorded
// in the history at once, not at the next tick: with ticks 10 s apart,
// the tick after an end comes long before the next one is due.
func TestLeaseEndWakesTheController(t *testing.T) {
	b, err := broker.New(broker.Options{RuntimeDir: t.TempDir(), Tick: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := New(b, Config{Params: Params{Tick: MaxTick}, History: newTestHistory(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the controller runs, so that its first tick,
	// as it starts, sees the lease.
	l, err := b.Register(broker.LeaseRequest{Name: "self", Owner: api.Owner{PID: os.Getpid()}})
	if err != nil {
		t.Fatal(err)
	}
	runLive(t, b, ctl)
	var first time.Time
	waitUntil(t, "the controller to see the lease", func() bool {
		st := b.Status()
		if st.Memory == nil || len(st.Leases) != 1 || st.Leases[0].Memory == nil {
			return false
		}
		first = st.Memory.Updated
		return true
	})
	ended := time.Now()
	if err := b.End(0, l.ID, "test over"); err != nil {
		t.Fatal(err)
	}
	var next time.Time
	waitUntil(t, "a tick after the end", func() bool {
		next = b.Status().Memory.Updated
		return next.After(ended)
	})
	// Half a tick: the periodic tick comes a few microseconds short of a
	// whole one after the first tick's reading.
	if half := first.Add(MaxTick / 2); !next.Before(half) {
		t.Errorf("the first tick after the end came %v after the first tick; want it well before the next periodic one, %v after", next.Sub(first), MaxTick)
	}
}

// runLive runs b and ctl until t ends, and fails t if either fails.
func runLive(t *testing.T, b *broker.Broker, ctl *Controller) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- b.Run(ctx) }()
	go func() { done <- ctl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	})
}
