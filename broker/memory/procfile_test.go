package memory

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/prometheus/procfs"
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
