package memory

import (
	"context"
	"github.com/tokend/tokend/internal/buildtest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/cgtest"
)

// These tests read this host's real files.

func TestLiveHost(t *testing.T) {
	d, err := NewDomain(Config{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := d.Read()
	if err != nil {
		t.Fatal(err)
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		t.Fatal(err)
	}
	// meminfo and sysinfo(2) report the same page count two ways.
	if want := si.Totalram * uint64(si.Unit); a.MemTotal != want {
		t.Errorf("MemTotal = %d, sysinfo says %d", a.MemTotal, want)
	}
	if a.MemAvailable == 0 || a.MemAvailable > a.MemTotal {
		t.Errorf("MemAvailable = %d, want 0 < it <= MemTotal %d", a.MemAvailable, a.MemTotal)
	}
	if a.Cgroup != nil || a.Headroom() != a.MemAvailable {
		t.Errorf("host reading %+v: want no cgroup and Headroom = MemAvailable", a)
	}
	time.Sleep(10 * time.Millisecond)
	b, err := d.Read()
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.StallSince(a)
	if err != nil {
		t.Fatal(err)
	}
	if st.Interval < 10*time.Millisecond || st.Some < 0 || st.Full > st.Some {
		t.Errorf("stall between two host readings = %+v", st)
	}
}

// startThrash runs this test binary as the thrash workload (see TestMain)
// inside groups, and kills it when the test ends.
func startThrash(t *testing.T, file string, anonMiB int, groups ...cgtest.Group) *exec.Cmd {
	t.Helper()
	cmd := cgtest.Command(groups, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), thrashEnv+"="+file+":"+strconv.Itoa(anonMiB))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// comm is the name the kernel gives a process running path: its base
// name, cut to 15 bytes.
func comm(path string) string {
	name := filepath.Base(path)
	return name[:min(15, len(name))]
}

// smallFile is a file of n MiB on disk, none of it in the page cache, so
// that whoever reads it next is charged for its pages.
func smallFile(t *testing.T, mib int) string {
	t.Helper()
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type == unix.TMPFS_MAGIC {
		t.Fatalf("%s is on tmpfs, whose pages cannot be evicted without swap: set TMPDIR to a disk-backed directory", dir)
	}
	path := filepath.Join(dir, "thrash")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for i := range mib {
		for j := range chunk {
			chunk[j] = byte(i + j)
		}
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	// Dirty pages cannot be dropped: write them back first.
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLiveV1Memcg(t *testing.T) {
	m := cgtest.Need(t)
	const limit = 256 << 20
	v1 := cgtest.MakeT(t, m.V1Memory, limit)
	v2 := cgtest.MakeT(t, m.V2, 0)
	d, err := NewDomain(Config{Cgroup: string(v1), Pressure: v2.File("memory.pressure")})
	if err != nil {
		t.Fatal(err)
	}
	empty, err := d.Read()
	if err != nil {
		t.Fatal(err)
	}
	if c := empty.Cgroup; c == nil || c.Version != 1 || c.Max != limit || c.High != Unlimited || c.Usage != 0 {
		t.Fatalf("new group reads %+v, want v1, limit %d, nothing used", c, limit)
	}
	if h := empty.Headroom(); h != min(limit, empty.MemAvailable) {
		t.Errorf("empty group's Headroom = %d, want its limit %d", h, limit)
	}

	const anonMiB = 96
	cmd := startThrash(t, smallFile(t, 16), anonMiB, v1, v2)
	var r Reading
	// A bound for a wedged workload, not a speed: on a host at load 40
	// the ramp took longer than 10 s.
	deadline := time.Now().Add(time.Minute)
	for r.Cgroup == nil || r.Cgroup.Anon < anonMiB<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("workload never reached %d MiB of anon: %+v", anonMiB, r.Cgroup)
		}
		time.Sleep(20 * time.Millisecond)
		if r, err = d.Read(); err != nil {
			t.Fatal(err)
		}
	}
	c := r.Cgroup
	if c.WorkingSet() < c.Anon || c.WorkingSet() > c.Usage || c.Usage > limit {
		t.Errorf("anon %d <= working set %d <= usage %d <= limit %d does not hold", c.Anon, c.WorkingSet(), c.Usage, uint64(limit))
	}
	if h := r.Headroom(); h != limit-c.WorkingSet() {
		t.Errorf("Headroom = %d, want limit - working set = %d", h, limit-c.WorkingSet())
	}

	s, err := NewSampler("")
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []cgtest.Group{v1, v2} {
		procs, err := s.Cgroup(string(g))
		if err != nil {
			t.Fatal(err)
		}
		if len(procs) != 1 || procs[0].PID != cmd.Process.Pid || procs[0].Name != comm(os.Args[0]) ||
			procs[0].RSS < anonMiB<<20 || procs[0].Peak < procs[0].RSS {
			t.Errorf("processes of %s = %+v, want the workload %d with RSS >= %d MiB", g, procs, cmd.Process.Pid, anonMiB)
		}
	}

	// A process that has exited is left out, not an error.
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if procs, err := s.PIDs(cmd.Process.Pid); err != nil || len(procs) != 0 {
		t.Errorf("PIDs of an exited process = %+v, %v; want none, no error", procs, err)
	}
}

func TestLiveTree(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "sleep 60 & sleep 60 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	s, err := NewSampler("")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		procs, err := tree(t, s, cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		names = names[:0]
		for _, p := range procs {
			names = append(names, p.Name)
			if p.RSS == 0 || p.Peak < p.RSS {
				t.Errorf("%+v: want RSS > 0 and Peak >= RSS", p)
			}
		}
		if slices.Equal(names, []string{"sh", "sleep", "sleep"}) {
			break
		}
	}
	if !slices.Equal(names, []string{"sh", "sleep", "sleep"}) {
		t.Errorf("Tree = %v, want sh with two sleeps", names)
	}
	if procs, err := tree(t, s, 1<<22); err != nil || len(procs) != 0 {
		t.Errorf("Tree of a PID above pid_max = %+v, %v; want none, no error", procs, err)
	}
}

// A nix build runs confined to its sandbox directory: its processes are
// found by the directory their root is, here a chroot of our own.
func TestLiveRooted(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root, to chroot a process")
	busybox, err := os.ReadFile("/bin/busybox") // static, from busybox-static (.ci/tools.sh)
	buildtest.Require(t, err == nil, "a static busybox at /bin/busybox (busybox-static)")
	sandbox, elsewhere := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(sandbox, "busybox"), busybox, 0o755); err != nil {
		t.Fatal(err)
	}
	var pids []int
	for range 2 {
		cmd := exec.Command("/busybox", "sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: sandbox}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		pids = append(pids, cmd.Process.Pid)
	}
	s, err := NewSampler("")
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.Forest()
	if err != nil {
		t.Fatal(err)
	}
	procs, err := f.Rooted(sandbox)
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, p := range procs {
		got = append(got, p.PID)
	}
	slices.Sort(pids)
	if !slices.Equal(got, pids) {
		t.Errorf("Rooted(sandbox) = %v, want the two chrooted processes %v", got, pids)
	}
	if procs, err := f.Rooted(elsewhere); err != nil || len(procs) != 0 {
		t.Errorf("Rooted of a directory no process is confined to = %+v, %v; want none", procs, err)
	}
	if procs, err := f.Rooted(filepath.Join(elsewhere, "gone")); err != nil || len(procs) != 0 {
		t.Errorf("Rooted of a removed sandbox = %+v, %v; want none, no error", procs, err)
	}
}

// Processes start and exit while Tree scans /proc: none of that may be
// reported as an error.
func TestLiveTreeChurn(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	churned := make(chan int)
	go func() {
		n := 0
		for ctx.Err() == nil {
			if exec.Command("/bin/true").Run() == nil {
				n++
			}
		}
		churned <- n
	}()
	s, err := NewSampler("")
	if err != nil {
		t.Fatal(err)
	}
	scans := 0
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); scans++ {
		procs, err := tree(t, s, os.Getpid())
		if err != nil {
			t.Fatalf("scan %d: %v", scans, err)
		}
		if len(procs) == 0 || procs[0].PID != os.Getpid() {
			t.Fatalf("scan %d: tree %+v does not start at this process", scans, procs)
		}
	}
	cancel()
	if n := <-churned; n == 0 {
		t.Errorf("no process started during %d scans", scans)
	}
}
