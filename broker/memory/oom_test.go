package memory

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/tokend/tokend/internal/cgtest"
)

// kmsgRecords splits a recording of /dev/kmsg into its records: each
// starts with "prio,seq,usec,flags;", continuation lines with a space.
func kmsgRecords(t *testing.T, path string) [][]byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var recs [][]byte
	for _, line := range bytes.SplitAfter(raw, []byte("\n")) {
		switch {
		case len(line) == 0:
		case line[0] == ' ' && len(recs) > 0:
			recs[len(recs)-1] = append(recs[len(recs)-1], line...)
		default:
			recs = append(recs, line)
		}
	}
	return recs
}

// The kernel's report of a real OOM kill (testdata/memory/kmsg, recorded
// here: fakecc touching 256 MiB in a 64 MiB v1 group) is one kill, with
// the task, pid, uid and memcg of its "oom-kill:" line and the sizes of
// its "Killed process" line; the 78 other records of the report are not.
func TestOOMKillRecorded(t *testing.T) {
	recs := kmsgRecords(t, fixture("kmsg", "memcg-oom"))
	if len(recs) < 10 {
		t.Fatalf("fixture has %d records", len(recs))
	}
	k := &KernelLog{reported: map[int]bool{}}
	kills := k.parse(recs)
	want := OOMKill{PID: 10004, Task: "fakecc", UID: 0, Memcg: "/tokend-record-9924-1", RSS: (64896 + 1708 + 0) * kiB}
	if len(kills) != 1 || kills[0] != want {
		t.Fatalf("kills %+v, want [%+v]", kills, want)
	}
	// The two lines of one kill may come in two reads: still one kill.
	k = &KernelLog{reported: map[int]bool{}}
	n := len(recs) - 1
	first, second := k.parse(recs[:n]), k.parse(recs[n:])
	if len(first) != 1 || first[0].PID != want.PID || len(second) != 0 {
		t.Errorf("split across reads: %+v then %+v, want one kill of %d", first, second, want.PID)
	}
}

// Lines written from the kernel's format strings (mm/oom_kill.c) for
// what cannot be recorded here: a host-wide OOM, which would take the
// test host down, and a kernel before 4.19, which prints no "oom-kill:"
// line. Task names may hold anything, parentheses and commas too.
func TestOOMKillFormats(t *testing.T) {
	for _, tt := range []struct {
		name, msg string
		want      OOMKill
	}{
		{"host-wide", "3,812,90817263,-;Out of memory: Killed process 4242 (cc1plus) total-vm:2100000kB, anon-rss:1048576kB, file-rss:2048kB, shmem-rss:0kB, UID:1000 pgtables:2200kB oom_score_adj:500\n",
			OOMKill{PID: 4242, Task: "cc1plus", UID: 1000, RSS: (1048576 + 2048) * kiB}},
		{"odd task name", "3,813,90817264,-;Memory cgroup out of memory: Killed process 77 (a) b, (c) total-vm:10kB, anon-rss:100kB, file-rss:0kB, shmem-rss:4kB, UID:0 pgtables:1kB oom_score_adj:0\n",
			OOMKill{PID: 77, Task: "a) b, (c", RSS: 104 * kiB}},
		{"oom-kill line alone", "6,814,90817265,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0-1,oom_memcg=/,task_memcg=/system.slice/nix-daemon.service/nix-build-uid-30001,task=ld.lld,pid=31337,uid=30001\n",
			OOMKill{PID: 31337, Task: "ld.lld", UID: 30001, Memcg: "/system.slice/nix-daemon.service/nix-build-uid-30001"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k := &KernelLog{reported: map[int]bool{}}
			kills := k.parse([][]byte{[]byte(tt.msg)})
			if len(kills) != 1 || kills[0] != tt.want {
				t.Errorf("kills %+v, want [%+v]", kills, tt.want)
			}
		})
	}
	k := &KernelLog{reported: map[int]bool{}}
	for _, msg := range []string{
		"4,815,1,-;cc1plus invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n",
		"6,816,2,-;oom_reaper: reaped process 4242 (cc1plus), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB\n",
		"6,817,3,-;oom-kill:constraint=CONSTRAINT_MEMCG,task=x,pid=notanumber,uid=0\n",
	} {
		if kills := k.parse([][]byte{[]byte(msg)}); len(kills) != 0 {
			t.Errorf("%q parsed as kills %+v", msg, kills)
		}
	}
}

// The OOM kill counters: v1 memory.oom_control (recorded: none), v2
// memory.events (hand-written: 2), and a cgroup2 group without the memory
// controller, which has no count.
func TestOOMKillCounters(t *testing.T) {
	for _, tt := range []struct {
		cgroup string
		want   uint64
	}{{"memcg-v1", 0}, {"cgroup2-memory", 2}} {
		d, err := NewDomain(Config{Proc: fixture("proc"), Cgroup: fixture(tt.cgroup), Pressure: fixture("proc", "pressure", "memory")})
		if err != nil {
			t.Fatal(err)
		}
		if n, err := d.OOMKills(); err != nil || n != tt.want {
			t.Errorf("%s: %d OOM kills (%v), want %d", tt.cgroup, n, err, tt.want)
		}
	}
	if n, ok, err := GroupOOMKills(fixture("cgroup2-memory")); n != 2 || !ok || err != nil {
		t.Errorf("v2 group: %d, %v, %v; want 2 kills", n, ok, err)
	}
	if _, ok, err := GroupOOMKills(fixture("cgroup2")); ok || err != nil {
		t.Errorf("group without the memory controller: ok %v, %v; want no count", ok, err)
	}
}

// A real OOM kill in a v1 memory group: the kernel log reports it with
// the victim's pid and group, the group's counter and the host's count it.
func TestOOMKillLive(t *testing.T) {
	m := cgtest.Need(t)
	host, err := NewDomain(Config{})
	if err != nil {
		t.Fatal(err)
	}
	before, err := host.OOMKills()
	if err != nil {
		t.Fatal(err)
	}
	klog, err := OpenKernelLog("")
	if err != nil {
		t.Fatal(err)
	}
	defer klog.Close()
	g := cgtest.MakeT(t, m.V1Memory, 64<<20)
	cmd := cgtest.Command([]cgtest.Group{g}, os.Args[0])
	cmd.Env = append(os.Environ(), allocEnv+"=256")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The shell execs the test binary: the victim has the command's pid.
	victim := cmd.Process.Pid
	if err := cmd.Wait(); err == nil {
		t.Fatal("touching 256 MiB in a 64 MiB group was not killed")
	}
	kills, lost, err := klog.OOMKills()
	if err != nil {
		t.Fatal(err)
	}
	var got *OOMKill
	for i, k := range kills {
		if k.PID == victim {
			got = &kills[i]
		}
	}
	if got == nil {
		t.Fatalf("no report of pid %d among %+v (%d records lost)", victim, kills, lost)
	}
	name := filepath.Base(os.Args[0])
	if got.Memcg != "/"+filepath.Base(string(g)) || got.Task != name[:min(15, len(name))] ||
		got.RSS < 32<<20 || got.RSS > 80<<20 {
		t.Errorf("kill %+v: want memcg /%s, the test binary's name, and about 64 MiB", got, filepath.Base(string(g)))
	}
	d, err := NewDomain(Config{Cgroup: string(g)})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := d.OOMKills(); err != nil || n != 1 {
		t.Errorf("the group counts %d OOM kills (%v), want 1", n, err)
	}
	if after, err := host.OOMKills(); err != nil || after <= before {
		t.Errorf("the host counts %d OOM kills after, %d before (%v)", after, before, err)
	}
	t.Logf("pid %d killed at %d MiB in %s", victim, got.RSS>>20, got.Memcg)
}
