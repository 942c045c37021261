package buildtest

import (
	"context"
	"math"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestParseAndPeak(t *testing.T) {
	r, err := ParseLog([]byte(`S 100 a
S 100 b
E 200 a
S 200 c
E 300 b
S 300 d
E 300 c
E 400 d
`))
	if err != nil {
		t.Fatal(err)
	}
	// At 200 a ends before c starts, at 300 b and c end before d starts.
	if got := r.Peak(); got != 2 {
		t.Errorf("Peak = %d, want 2", got)
	}
	for _, c := range []struct {
		from, to int64
		want     int
	}{
		{math.MinInt64, 99, 0},
		{math.MinInt64, 100, 2},
		{150, 160, 2}, // nothing happens inside: what ran across it
		{301, 350, 1},
		{400, math.MaxInt64, 0},
		{250, 300, 2},
	} {
		if got := r.PeakBetween(c.from, c.to); got != c.want {
			t.Errorf("PeakBetween(%d, %d) = %d, want %d", c.from, c.to, got, c.want)
		}
	}
	if got := r.RunningAt(250); got != 2 {
		t.Errorf("RunningAt(250) = %d, want 2", got)
	}
	if r.Started() != 4 || r.Ended() != 4 || r.Running() != 0 || len(r.Unfinished()) != 0 {
		t.Errorf("counts: %d started, %d ended, unfinished %v", r.Started(), r.Ended(), r.Unfinished())
	}
	r.Check(t, 4)
	if f := r.Filter(func(id string) bool { return id == "a" || id == "d" }); f.Peak() != 1 || f.Started() != 2 {
		t.Errorf("filtered: peak %d, %d started", f.Peak(), f.Started())
	}

	open, err := ParseLog([]byte("S 1 a\nS 2 b\nE 3 b\nE 4 c\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := open.Unfinished(), []string{"a(+1)", "c(-1)"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Unfinished = %v, want %v", got, want)
	}
	for _, bad := range []string{"X 1 a\n", "S x a\n", "S 1\n", "S 1 a b\n"} {
		if _, err := ParseLog([]byte(bad)); err == nil {
			t.Errorf("ParseLog(%q) accepted it", bad)
		}
	}
}

// Cut ends a killed build's jobs at the kill: those started after it are
// dropped, those running then (with or without an end logged) end then.
func TestCut(t *testing.T) {
	r, err := ParseLog([]byte(`S 100 a1
S 110 b1
S 120 a2
E 150 b1
E 300 a1
S 400 a3
E 450 a3
`))
	if err != nil {
		t.Fatal(err)
	}
	cut := r.Cut(func(id string) (int64, bool) { return 200, id[0] == 'a' })
	want := []Event{{true, 100, "a1"}, {true, 110, "b1"}, {true, 120, "a2"}, {false, 150, "b1"}, {false, 200, "a1"}, {false, 200, "a2"}}
	if !reflect.DeepEqual(cut.Events, want) {
		t.Errorf("Cut = %v, want %v", cut.Events, want)
	}
	if bad := cut.Unfinished(); len(bad) != 0 {
		t.Errorf("unfinished after the cut: %v", bad)
	}
	if bad := r.Unfinished(); !reflect.DeepEqual(bad, []string{"a2(+1)"}) {
		t.Errorf("the run itself changed: unfinished %v", bad)
	}
}

// The probe logs its jobs, and a make run with -j3 and no jobserver runs
// three at once.
func TestProbeUnderMake(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := BuildProbe(t)
	log := NewLog(t)
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	jobs := Gated(Independent("j", 5, 50*time.Millisecond), gate)
	jobs = append(jobs, Job{ID: "last", After: []string{"j1", "j2"}})
	WriteMakefile(t, dir, p, log, jobs)
	proc := Start(t, exec.Command(Make44(t), "-j3", "-C", dir))
	log.WaitFor(ctx, t, "three jobs", func(r Run) bool { return r.Running() == 3 })
	OpenGate(t, gate)
	if err := proc.Wait(ctx, t); err != nil {
		t.Fatalf("%v\n%s", err, proc.Output())
	}
	r := log.Run(t)
	r.Check(t, 6)
	if r.Peak() != 3 {
		t.Errorf("peak %d, want 3:\n%s", r.Peak(), r)
	}
	var lastStart, j1End int64
	for _, e := range r.Events {
		if e.ID == "last" && e.Start {
			lastStart = e.T
		}
		if e.ID == "j1" && !e.Start {
			j1End = e.T
		}
	}
	if lastStart < j1End {
		t.Errorf("last started before j1 ended:\n%s", r)
	}
}

// Kill finds every process of a build, even jobs ninja put in process
// groups of their own.
func TestKillFindsEveryProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := BuildProbe(t)
	log := NewLog(t)
	dir := t.TempDir()
	WriteNinja(t, dir, p, log, Gated(Independent("j", 2, 0), filepath.Join(dir, "never")))
	proc := Start(t, exec.Command(Ninja(t), "-j2", "-C", dir))
	log.WaitFor(ctx, t, "two jobs", func(r Run) bool { return r.Running() == 2 })
	if n := len(proc.Pids()); n < 3 {
		t.Errorf("found %d processes, want ninja and its two jobs at least", n)
	}
	proc.Kill()
	if pids := proc.Pids(); len(pids) != 0 {
		t.Errorf("left running: %v", pids)
	}
	if !proc.WaitGone(ctx) {
		t.Error("WaitGone after Kill")
	}
}

func TestCargoWrapperLogsCompilations(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := BuildProbe(t)
	log := NewLog(t)
	dir := t.TempDir()
	manifest := WriteCargoWorkspace(t, dir, "crate", 3)
	cmd := exec.Command(Cargo(t), append(CargoBuildArgs(manifest), "-j3")...)
	cmd.Env = CleanEnv(CargoEnv(p, log, 10*time.Millisecond, "", filepath.Join(dir, "target"))...)
	proc := MustRun(ctx, t, cmd)
	r := log.Run(t)
	r.Check(t, 3)
	for _, e := range r.Events {
		if e.ID != "rustc:crate1" && e.ID != "rustc:crate2" && e.ID != "rustc:crate3" {
			t.Errorf("unexpected job %s; output:\n%s", e.ID, proc.Output())
		}
	}
}

func TestToolsHaveVersions(t *testing.T) {
	for name, find := range map[string]func(testing.TB) string{"make 4.4": Make44, "make 4.3": Make43, "ninja": Ninja, "cargo": Cargo} {
		if p := find(t); !filepath.IsAbs(p) {
			t.Errorf("%s: %q is not absolute", name, p)
		}
	}
}
