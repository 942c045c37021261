package control

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker/memory"
)

// oomEngine is an engine on a host reading with 6 of 8 GiB available,
// stepped by hand; its log is returned too.
func oomEngine(t *testing.T) (*History, *strings.Builder, func(in tickInput) decision) {
	t.Helper()
	h := newTestHistory(t)
	var logs strings.Builder
	e := newEngine(Params{}.withDefaults(), 2, "host", "", h, hclog.New(&hclog.LoggerOptions{Output: &logs}))
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	step := func(in tickInput) decision {
		at = at.Add(250 * time.Millisecond)
		in.Reading = memory.Reading{At: at, MemTotal: 8 << 30, MemAvailable: 6 << 30}
		return e.step(in)
	}
	return h, &logs, step
}

func cc(pid int, rss uint64) proc {
	return proc{Proc: memory.Proc{PID: pid, Name: "cc1plus", RSS: rss, Peak: rss}, class: classCompile}
}

// A kill the kernel log reports is laid on the lease whose process it
// took, by pid: counted in its status and the total, logged with the
// size, remembered in the history of its user and name at once (at
// twice that size), and
// the lease's own estimate is never less than that size from then on.
func TestOOMKillFromTheKernelLog(t *testing.T) {
	h, logs, step := oomEngine(t)
	lease := leaseInput{ID: "a", Name: "llvm", UID: 1000, Admitted: true, Procs: []proc{cc(100, 400*mib), cc(101, 300*mib)}}
	step(tickInput{Leases: []leaseInput{lease}})
	lease.Procs = []proc{cc(101, 310*mib)}
	d := step(tickInput{Leases: []leaseInput{lease}, OOMKills: []memory.OOMKill{
		{PID: 100, Task: "cc1plus", RSS: 650 * mib},
		{PID: 999, Task: "firefox", RSS: 2 << 30},
	}})
	m := d.Leases["a"]
	if m.OOMKills != 1 || m.OOMKilled != 650*mib || m.Estimates.Compile != 650*mib {
		t.Errorf("lease after the kill: %d kills, killed at %d MiB, compile estimate %d MiB; want 1, 650, 650",
			m.OOMKills, m.OOMKilled/mib, m.Estimates.Compile/mib)
	}
	if len(d.OOMKills) != 1 || d.OOMKills[0].Kind != api.EventOOMKill || d.OOMKills[0].Lease != "a" || d.OOMKills[0].Kills != 1 ||
		!strings.Contains(d.OOMKills[0].Detail, "650MiB") {
		t.Errorf("events %+v, want one oom-kill of lease a at 650 MiB", d.OOMKills)
	}
	if d.Status.OOMKills != 1 || d.Status.OOMKillsOutside != 1 {
		t.Errorf("status counts %d kills in leases and %d outside, want 1 and 1", d.Status.OOMKills, d.Status.OOMKillsOutside)
	}
	if got := h.seed(1000, "llvm", classCompile); got != 1300*mib {
		t.Errorf("history of uid 1000's llvm: %d MiB, want twice the 650 the killed job reached", got/mib)
	}
	if h.seed(0, "llvm", classCompile) != 0 {
		t.Error("root's llvm learned from uid 1000's kill")
	}
	if !strings.Contains(logs.String(), "OOM-killed") || !strings.Contains(logs.String(), "size=650MiB") || !strings.Contains(logs.String(), "pid=100") {
		t.Errorf("log does not report the kill with its size:\n%s", logs)
	}
	// A kill counts once: later ticks do not count it again.
	if d := step(tickInput{Leases: []leaseInput{lease}}); d.Leases["a"].OOMKills != 1 {
		t.Errorf("%d kills a tick later, want 1", d.Leases["a"].OOMKills)
	}
}

// A kill whose victim was never sampled (it lived less than a tick) is
// still laid on the lease whose cgroup holds the memory cgroup it names.
func TestOOMKillByCgroup(t *testing.T) {
	_, _, step := oomEngine(t)
	lease := leaseInput{ID: "n", Name: "webkitgtk", Admitted: true, Cgroup: "/sys/fs/cgroup/system.slice/nix-daemon.service/nix-build-uid-30001"}
	step(tickInput{Leases: []leaseInput{lease}})
	d := step(tickInput{Leases: []leaseInput{lease}, OOMKills: []memory.OOMKill{
		{PID: 5, Task: "ld.lld", RSS: 3 << 30, Memcg: "/system.slice/nix-daemon.service/nix-build-uid-30001/build"},
		{PID: 6, Task: "cc1plus", RSS: 1 << 30, Memcg: "/system.slice/nix-daemon.service"},
	}})
	if m := d.Leases["n"]; m.OOMKills != 1 || m.Estimates.Link != 3<<30 {
		t.Errorf("lease: %d kills, link estimate %d MiB; want the link killed in its group at 3072", m.OOMKills, m.Estimates.Link/mib)
	}
	if d.Status.OOMKillsOutside != 1 {
		t.Errorf("%d kills outside, want the one in nix-daemon's own group", d.Status.OOMKillsOutside)
	}
}

// Without the kernel log, a kill the domain's counter shows goes to the
// largest job that ended at that moment: the one the OOM killer picks.
// A counted kill no lease's job explains within a second is outside.
func TestOOMKillFromCounters(t *testing.T) {
	h, _, step := oomEngine(t)
	a := leaseInput{ID: "a", Name: "a", Admitted: true, Procs: []proc{cc(10, 200*mib)}}
	b := leaseInput{ID: "b", Name: "b", Admitted: true, Procs: []proc{cc(20, 700*mib), cc(21, 100*mib)}}
	step(tickInput{Leases: []leaseInput{a, b}})
	a.Procs, b.Procs = nil, []proc{cc(21, 100*mib)}
	d := step(tickInput{Leases: []leaseInput{a, b}, OOMCountedDomain: 1})
	if d.Leases["b"].OOMKills != 1 || d.Leases["a"].OOMKills != 0 || d.Leases["b"].OOMKilled != 700*mib {
		t.Errorf("kills a %d, b %d (at %d MiB); want the 700 MiB job of b", d.Leases["a"].OOMKills, d.Leases["b"].OOMKills, d.Leases["b"].OOMKilled/mib)
	}
	if h.seed(0, "b", classCompile) != 1400*mib {
		t.Errorf("history of b: %d MiB, want twice the 700 its killed job reached", h.seed(0, "b", classCompile)/mib)
	}
	// The counter moves before the victim is gone: it counts once the
	// victim leaves, within the second.
	b.Procs = []proc{cc(21, 100*mib), cc(22, 500*mib)}
	step(tickInput{Leases: []leaseInput{a, b}})
	d = step(tickInput{Leases: []leaseInput{a, b}, OOMCountedDomain: 1})
	if d.Leases["b"].OOMKills != 1 {
		t.Fatalf("counted before a victim left: %d kills", d.Leases["b"].OOMKills)
	}
	b.Procs = []proc{cc(21, 100*mib)}
	if d = step(tickInput{Leases: []leaseInput{a, b}}); d.Leases["b"].OOMKills != 2 || d.Status.OOMKillsOutside != 0 {
		t.Errorf("after the victim left: %d kills of b, %d outside; want 2 and 0", d.Leases["b"].OOMKills, d.Status.OOMKillsOutside)
	}
	step(tickInput{Leases: []leaseInput{a, b}, OOMCountedDomain: 1})
	for range 4 {
		d = step(tickInput{Leases: []leaseInput{a, b}})
	}
	if d.Status.OOMKillsOutside != 1 || d.Status.OOMKills != 2 {
		t.Errorf("a count no job explains: %d outside, %d in leases; want 1 and 2", d.Status.OOMKillsOutside, d.Status.OOMKills)
	}
}
