package memory

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/cgtest"
)

// TestLiveProcFilesAgreeWithProcfs reads every process of this host with
// the sampler's own parsers and with procfs's, the well-kept library they
// replace on the hot path: names, parents and flags must agree, and so
// must memory for a process that is not running.
func TestLiveProcFilesAgreeWithProcfs(t *testing.T) {
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })
	pfs, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSampler("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	all, err := pfs.AllProcs()
	if err != nil {
		t.Fatal(err)
	}
	compared, kernelThreads := 0, 0
	for _, p := range all {
		want, err1 := p.NewStatus()
		wantStat, err2 := p.Stat()
		got, err3 := s.PIDs(p.PID)
		gotStat, err4 := s.stat(p.PID)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || len(got) != 1 {
			continue // exited while read
		}
		compared++
		if got[0].Name != want.Name || gotStat.ppid != wantStat.PPID || gotStat.flags != uint64(wantStat.Flags) {
			t.Errorf("process %d: ours name %q ppid %d flags %#x, procfs %q %d %#x",
				p.PID, got[0].Name, gotStat.ppid, gotStat.flags, want.Name, wantStat.PPID, wantStat.Flags)
		}
		if got[0].Peak < want.VmHWM {
			t.Errorf("process %d: peak %d read after procfs's %d is smaller", p.PID, got[0].Peak, want.VmHWM)
		}
		if want.VmRSS == 0 && got[0].RSS == 0 {
			kernelThreads++
		}
		if p.PID == sleeper.Process.Pid && (got[0].RSS != want.VmRSS || got[0].Peak != want.VmHWM || got[0].RSS == 0) {
			t.Errorf("sleeping process %d: ours RSS %d peak %d, procfs %d %d", p.PID, got[0].RSS, got[0].Peak, want.VmRSS, want.VmHWM)
		}
	}
	if compared < 10 || kernelThreads == 0 {
		t.Errorf("compared %d processes, %d of them kernel threads: want a host's worth, kernel threads included", compared, kernelThreads)
	}
}

func TestParseStatRejects(t *testing.T) {
	for _, in := range []string{
		"",
		"1 (init S 0 1 1 0 -1 4194560",
		"1 (init) S 0 1 1 0 -1",
		"1 (init) S x 1 1 0 -1 4194560",
		"1 (init) S 0 1 1 0 -1 -4",
	} {
		if st, err := parseStat([]byte(in)); err == nil {
			t.Errorf("parseStat(%q) = %+v, want an error", in, st)
		}
	}
	// A command name may hold ") S 7": the fields are counted from the last ')'.
	st, err := parseStat([]byte("42 (a) S 7 (b)) R 9 1 1 0 -1 4 0 0"))
	if err != nil || st.ppid != 9 || st.flags != pfExiting {
		t.Errorf("parseStat with ')' in the name = %+v, %v; want ppid 9, flags PF_EXITING", st, err)
	}
}

func TestParseStatusRejects(t *testing.T) {
	for _, in := range []string{
		"",
		"Umask:\t0022\nVmRSS:\t 12 kB\n",
		"Name:\tcc1plus\nVmRSS:\t 12 MB\n",
		"Name:\tcc1plus\nVmHWM:\t x kB\n",
	} {
		if st, err := parseStatus([]byte(in)); err == nil {
			t.Errorf("parseStatus(%q) = %+v, want an error", in, st)
		}
	}
	st, err := parseStatus([]byte("Name:\tkthreadd\nState:\tS (sleeping)\n"))
	if err != nil || st != (statusFields{name: "kthreadd"}) {
		t.Errorf("a kernel thread's status = %+v, %v; want its name and no memory", st, err)
	}
}

// FuzzParseStat: stat lines never panic the parser, and an accepted one
// had a ')' followed by at least seven fields.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte("19848 (cc1plus) R 19847 19847 1 0 -1 4194304 72000 0 0 0 2500 120 0 0 20 0 1 0 9000 400000000 76963 0\n"))
	f.Add([]byte("1 (a) b)) S 0 1 1 0 -1 4\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := parseStat(data); err == nil {
			i := strings.LastIndexByte(string(data), ')')
			if i < 0 || len(strings.Fields(string(data[i+1:]))) < 7 {
				t.Fatalf("accepted %q", data)
			}
		}
	})
}

// FuzzParseStatus: status files never panic the parser, and an accepted
// one named its process.
func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("Name:\tcc1plus\nUmask:\t0022\nVmHWM:\t  307852 kB\nVmRSS:\t  307852 kB\n"))
	f.Add([]byte("Name:\nVmRSS: kB\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := parseStatus(data); err == nil && !strings.Contains(string(data), "Name:") {
			t.Fatalf("accepted %q without a Name line", data)
		}
	})
}

// A kept descriptor is read again from offset 0, and the kernel writes the
// file anew each time: a changed limit reads changed through the same
// descriptor, a cgroup made again under the same name reads as the new
// group, and one removed reads as gone.
func TestLiveKeptFilesFollowTheKernel(t *testing.T) {
	m := cgtest.Need(t)
	dir := filepath.Join(m.V1Memory, cgtest.Name("tokend-test"))
	g, err := cgtest.Make(dir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := os.Stat(dir); err == nil {
			_ = g.Remove()
		}
	})
	k := newKernelFiles()
	t.Cleanup(func() { _ = k.close() })
	limit := g.File("memory.limit_in_bytes")
	read := func(want uint64) {
		t.Helper()
		if v, err := k.readUint(limit); err != nil || v != want {
			t.Fatalf("limit = %d, %v; want %d", v, err, want)
		}
	}
	read(64 << 20)
	fd := k.kept[limit].fd
	if err := os.WriteFile(limit, []byte("134217728"), 0); err != nil {
		t.Fatal(err)
	}
	read(128 << 20)
	if k.kept[limit].fd != fd {
		t.Errorf("the changed limit was read through descriptor %d, want the kept %d", k.kept[limit].fd, fd)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if g, err = cgtest.Make(dir, 32<<20); err != nil {
		t.Fatal(err)
	}
	read(32 << 20)
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if v, err := k.readUint(limit); !isGone(err) {
		t.Errorf("limit of a removed cgroup = %d, %v; want an error isGone accepts", v, err)
	}
	if _, kept := k.kept[limit]; kept {
		t.Error("the removed cgroup's file is still kept open")
	}
}

// The status file of a process that exited reads as gone, through a kept
// descriptor as through a path, and is no longer kept.
func TestLiveKeptStatusOfExitedProcess(t *testing.T) {
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	s, err := NewSampler("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	pid := sleeper.Process.Pid
	if procs, err := s.PIDs(pid); err != nil || len(procs) != 1 || procs[0].Name != "sleep" {
		t.Fatalf("PIDs(%d) = %+v, %v; want the sleep", pid, procs, err)
	}
	_ = sleeper.Process.Kill()
	_ = sleeper.Wait()
	if procs, err := s.PIDs(pid); err != nil || len(procs) != 0 {
		t.Errorf("PIDs of the exited sleep = %+v, %v; want none, no error", procs, err)
	}
	if _, kept := s.files.kept[s.file(pid, "status")]; kept {
		t.Error("the exited process's status file is still kept open")
	}
}

// A file left unread for keptIdle is closed by the next sweep; after
// close, reads still work and keep nothing open.
func TestKeptFilesSweepAndClose(t *testing.T) {
	k := newKernelFiles()
	idle, busy := "/proc/self/status", "/proc/meminfo"
	for _, path := range []string{idle, busy} {
		if _, err := k.readTrimmed(path); err != nil {
			t.Fatal(err)
		}
	}
	fd := k.kept[idle].fd
	k.kept[idle].used = time.Now().Add(-2 * keptIdle)
	k.swept = time.Time{}
	if _, err := k.readTrimmed(busy); err != nil {
		t.Fatal(err)
	}
	if _, kept := k.kept[idle]; kept {
		t.Errorf("%s unread for %v is still kept", idle, 2*keptIdle)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Errorf("descriptor %d of the swept file: fcntl = %v, want EBADF", fd, err)
	}
	if err := k.close(); err != nil {
		t.Fatal(err)
	}
	if s, err := k.readTrimmed(busy); err != nil || !strings.HasPrefix(s, "MemTotal:") {
		t.Errorf("read after close = %.20q, %v; want meminfo", s, err)
	}
	if len(k.kept) != 0 {
		t.Errorf("after close %d files are kept open", len(k.kept))
	}
}

// Processes in a cgroup's child groups count as the cgroup's, as its memory
// accounting counts them; the listing of children is skipped only when the
// directory's link count says it has none.
func TestLiveCgroupIncludesChildGroups(t *testing.T) {
	m := cgtest.Need(t)
	parent := cgtest.MakeT(t, m.V1Memory, 0)
	child, err := cgtest.Make(parent.File("child"), 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := cgtest.Command([]cgtest.Group{child}, "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	s, err := NewSampler("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	var procs []Proc
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if procs, err = s.Cgroup(string(parent)); err != nil {
			t.Fatal(err)
		}
		if len(procs) == 1 && procs[0].Name == "sleep" {
			break
		}
	}
	if len(procs) != 1 || procs[0].Name != "sleep" {
		t.Errorf("processes of %s = %+v, want the sleep in its child group", parent, procs)
	}
}

// A kept status file reads the process's memory as it is now: this test's
// own RSS, read through one descriptor before and after it touches 64 MiB.
func TestKeptStatusFollowsMemory(t *testing.T) {
	s, err := NewSampler("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	pid := os.Getpid()
	before, err := s.PIDs(pid)
	if err != nil || len(before) != 1 {
		t.Fatalf("PIDs(self) = %+v, %v", before, err)
	}
	fd := s.files.kept[s.file(pid, "status")].fd
	// Fresh anonymous pages, resident only once touched: a Go heap
	// allocation could reuse pages a test before left resident.
	mem, err := unix.Mmap(-1, 0, 64<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Munmap(mem) })
	for i := 0; i < len(mem); i += os.Getpagesize() {
		mem[i] = 1
	}
	after, err := s.PIDs(pid)
	if err != nil || len(after) != 1 {
		t.Fatalf("PIDs(self) = %+v, %v", after, err)
	}
	if s.files.kept[s.file(pid, "status")].fd != fd {
		t.Error("the second read did not go through the kept descriptor")
	}
	if after[0].RSS < before[0].RSS+48<<20 {
		t.Errorf("RSS %d MiB after touching 64 MiB, %d MiB before: want at least 48 MiB more", after[0].RSS>>20, before[0].RSS>>20)
	}
}
