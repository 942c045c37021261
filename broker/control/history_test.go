package control

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/broker/memory"
)

// run is a leaseRun of one compile peak and one link peak (0: none),
// started from the default estimates.
func run(compile, link uint64) leaseRun {
	return leaseRun{peak: [3]uint64{classCompile: compile, classLink: link}, prior: [3]uint64{classCompile: 1 << 30, classLink: 2 << 30}}
}

func TestHistoryRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.json")
	h := newTestHistoryAt(t, path)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	h.record(0, "llvm-19.1.7", run(900*mib, 3<<30), now)
	// A lease that ran no link keeps the link estimate of the one before.
	h.record(0, "llvm-19.1.7", run(950*mib, 0), now.Add(time.Hour))
	if err := h.Save(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("state dir holds %d files after an atomic save, want only history.json", len(entries))
	}
	got := newTestHistoryAt(t, path)
	if c, l := got.seed(0, "llvm-19.1.7", classCompile), got.seed(0, "llvm-19.1.7", classLink); c != 950*mib || l != 3<<30 {
		t.Errorf("seeds %d and %d MiB, want 950 (the upper median of 900 and 950) and 3072", c/mib, l/mib)
	}
	if p := got.users[0]["llvm-19.1.7"]; p.Runs != 2 || !p.Updated.Equal(now.Add(time.Hour)) {
		t.Errorf("entry %+v, want 2 runs updated an hour later", p)
	}
	if got.seed(0, "unknown", classCompile) != 0 {
		t.Error("an unknown name has a seed")
	}
}

// One odd run among ordinary ones does not move an estimate: it follows
// the upper median of the last runs, moved by at most a factor of two a
// run. The first whole run sets it, whatever the default it started from.
func TestHistoryOneOddRunCannotSwingIt(t *testing.T) {
	h := newTestHistory(t)
	now := time.Now()
	for range 3 {
		h.record(0, "chromium", run(1500*mib, 0), now)
	}
	for _, odd := range []uint64{64 << 30, 64 * mib} {
		h.record(0, "chromium", run(odd, 0), now)
		if got := h.seed(0, "chromium", classCompile); got != 1500*mib {
			t.Errorf("after an odd %d MiB run: %d MiB, want 1500", odd/mib, got/mib)
		}
	}
	// Two more make three small runs of the last five: they are the
	// build now, and the estimate follows them, at most halving per run.
	for range 2 {
		h.record(0, "chromium", run(64*mib, 0), now)
	}
	if got := h.seed(0, "chromium", classCompile); got != 750*mib {
		t.Errorf("after three small runs of the last five: %d MiB, want 750, half of 1500: one run moves it at most that far", got/mib)
	}

	for _, tt := range []struct {
		peak, want uint64
	}{{64 << 30, 64 << 30}, {64 * mib, 64 * mib}, {313 * mib, 313 * mib}} {
		h := newTestHistory(t)
		h.record(0, "first", run(tt.peak, 0), now)
		if got := h.seed(0, "first", classCompile); got != tt.want {
			t.Errorf("first run at %d MiB, started from 1 GiB: %d MiB, want %d", tt.peak/mib, got/mib, tt.want/mib)
		}
	}
}

// Each user learns from their own runs only: a member's small "chromium"
// changes neither root's estimate nor another member's.
func TestHistoryIsPerUser(t *testing.T) {
	h := newTestHistory(t)
	now := time.Now()
	h.record(0, "chromium", run(1800*mib, 0), now)
	for range historyRuns {
		h.record(1000, "chromium", run(64*mib, 0), now)
	}
	if got := h.seed(0, "chromium", classCompile); got != 1800*mib {
		t.Errorf("root's estimate %d MiB after a member's runs, want its own 1800", got/mib)
	}
	if got := h.seed(1001, "chromium", classCompile); got != 0 {
		t.Errorf("another member starts from %d MiB, want nothing: no run of theirs", got/mib)
	}
	if got := h.seed(1000, "chromium", classCompile); got >= 1<<30 {
		t.Errorf("the member's own estimate %d MiB did not follow their runs", got/mib)
	}
}

// A history of version 1, kept for everyone in the runtime directory by an
// older tokend, is read as root's.
func TestHistoryVersion1IsRoots(t *testing.T) {
	path := filepath.Join(t.TempDir(), HistoryFile)
	v1 := `{"version": 1, "names": {"llvm": {"compile": 943718400, "link": 3221225472, "runs": 4, "updated": "2026-01-02T03:04:05Z"}}}`
	if err := os.WriteFile(path, []byte(v1), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newTestHistoryAt(t, path)
	if c, l := h.seed(0, "llvm", classCompile), h.seed(0, "llvm", classLink); c != 900*mib || l != 3<<30 {
		t.Errorf("root's seeds %d and %d MiB, want 900 and 3072", c/mib, l/mib)
	}
	if h.users[0]["llvm"].Runs != 4 {
		t.Errorf("entry %+v, want its 4 runs", h.users[0]["llvm"])
	}
}

// History is only a prediction: a file it cannot read is set aside under
// a new name, reported, and tokend starts with an empty history; the next
// save writes a new file and leaves the set-aside one alone.
func TestHistoryUnreadableIsSetAside(t *testing.T) {
	for name, content := range map[string]string{
		"garbage":       "{not json",
		"other version": `{"version": 99, "names": {"x": {"compile": 1}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, HistoryFile)
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			var logs strings.Builder
			h, err := OpenHistory(dir, "", hclog.New(&hclog.LoggerOptions{Output: &logs}))
			if err != nil {
				t.Fatal(err)
			}
			if len(h.users) != 0 {
				t.Fatalf("history %+v, want an empty one", h.users)
			}
			aside, err := filepath.Glob(path + ".corrupt-*")
			if err != nil || len(aside) != 1 {
				t.Fatalf("set-aside files %v (%v), want one %s.corrupt-<time>", aside, err, path)
			}
			if b, err := os.ReadFile(aside[0]); err != nil || string(b) != content {
				t.Errorf("set-aside file holds %q (%v), want the unreadable content", b, err)
			}
			if !strings.Contains(logs.String(), "job history unreadable") || !strings.Contains(logs.String(), aside[0]) {
				t.Errorf("log %q does not report the file set aside at %s", logs.String(), aside[0])
			}
			h.record(0, "x", run(100*mib, 0), time.Now())
			if err := h.Save(); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadHistory(path); err != nil {
				t.Errorf("the file saved after it does not load: %v", err)
			}
			if b, _ := os.ReadFile(aside[0]); string(b) != content {
				t.Error("saving touched the set-aside file")
			}
		})
	}
}

// A history left in the runtime directory by an older tokend is moved
// into the state directory once, and logged; a later start finds nothing
// to take over.
func TestHistoryTakenOverFromTheRuntimeDir(t *testing.T) {
	runtime, state := t.TempDir(), filepath.Join(t.TempDir(), "state")
	v1 := `{"version": 1, "names": {"llvm": {"compile": 943718400, "link": 3221225472, "runs": 1}}}`
	if err := os.WriteFile(filepath.Join(runtime, HistoryFile), []byte(v1), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	log := hclog.New(&hclog.LoggerOptions{Output: &logs})
	h, err := OpenHistory(state, runtime, log)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.seed(0, "llvm", classLink); got != 3<<30 {
		t.Errorf("link seed %d MiB after the take-over, want 3072", got/mib)
	}
	if _, err := os.Stat(filepath.Join(runtime, HistoryFile)); !os.IsNotExist(err) {
		t.Errorf("the runtime directory's history is still there (%v): it must be moved, not copied", err)
	}
	if !strings.Contains(logs.String(), "took over the job history") {
		t.Errorf("log %q does not report the take-over", logs.String())
	}
	logs.Reset()
	if _, err := OpenHistory(state, runtime, log); err != nil {
		t.Fatal(err)
	}
	if logs.Len() != 0 {
		t.Errorf("second start logged %q, want nothing to take over", logs.String())
	}
}

// A job the OOM killer took is remembered at once at twice the size it
// reached, above what the lease's finished jobs showed, and the lease's
// run, when it ends, does not bring the estimate back below it; a later
// run that finishes brings it down toward what that run shows.
func TestHistoryRemembersOOMKills(t *testing.T) {
	h := newTestHistory(t)
	now := time.Now()
	for range 3 {
		h.record(0, "chromium", run(800*mib, 0), now)
	}
	h.recordOOM(0, "chromium", classCompile, 1500*mib, now)
	if got, p := h.seed(0, "chromium", classCompile), h.users[0]["chromium"]; got != 3000*mib || p.OOMKills != 1 {
		t.Errorf("seed %d MiB, %d OOM kills; want 3000 MiB and 1", got/mib, p.OOMKills)
	}
	killed := run(800*mib, 0)
	killed.oom[classCompile] = 1500 * mib
	h.record(0, "chromium", killed, now)
	if got := h.seed(0, "chromium", classCompile); got != 3000*mib {
		t.Errorf("after the killed lease ended: %d MiB, want twice the 1500 it reached", got/mib)
	}
	h.record(0, "chromium", run(1700*mib, 0), now)
	if got := h.seed(0, "chromium", classCompile); got != 1500*mib {
		t.Errorf("after a run that finished at 1700 MiB: %d MiB, want 1500, half the 3000 (the median of the runs is 800)", got/mib)
	}
}

func TestHistoryForgetsTheOldest(t *testing.T) {
	h := newTestHistoryAt(t, filepath.Join(t.TempDir(), "history.json"))
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h.record(0, "root-pkg", run(100*mib, 0), start)
	for i := range historyLimit + 5 {
		h.record(1000, fmt.Sprintf("pkg-%d", i), run(100*mib, 0), start.Add(time.Duration(i+1)*time.Minute))
	}
	if n := len(h.users[1000]); n != historyLimit {
		t.Fatalf("%d names kept, want %d", n, historyLimit)
	}
	for i := range 5 {
		if _, ok := h.users[1000][fmt.Sprintf("pkg-%d", i)]; ok {
			t.Errorf("pkg-%d, among the oldest, was kept", i)
		}
	}
	if h.seed(0, "root-pkg", classCompile) == 0 {
		t.Error("a member's names pushed out root's, older, entry")
	}
}

func newTestHistoryAt(t *testing.T, path string) *History {
	t.Helper()
	h, err := LoadHistory(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// leaseTicks steps e through leases, each running one compile of its
// peak in MiB, for ticks ticks from t0, as live ticks would see them.
func leaseTicks(e *engine, peaks map[string]uint64, ticks int) time.Time {
	var now time.Time
	for i := range ticks {
		now = t0.Add(time.Duration(i) * DefaultTick)
		var in []leaseInput
		for _, name := range slices.Sorted(maps.Keys(peaks)) {
			job := proc{Proc: memory.Proc{PID: 7 + len(in), Name: "cc1plus", RSS: peaks[name] * mib, Peak: peaks[name] * mib}, class: classCompile}
			in = append(in, leaseInput{ID: name, Name: name, Admitted: true, Procs: []proc{job}})
		}
		e.step(tickInput{Reading: hostReading(now), Leases: in})
	}
	return now
}

// hostReading is a quiet 24 GiB host at now.
func hostReading(now time.Time) memory.Reading {
	return memory.Reading{At: now, MemTotal: 24 << 30, MemAvailable: 20 << 30}
}

// A lease is recorded in the history at the tick that sees it end, its
// jobs done, not once the broker has let it go: a tokend stopped between
// the two kept nothing of it.
func TestHistoryRecordsALeaseAsItEnds(t *testing.T) {
	h := newTestHistory(t)
	e := newEngine(Params{}.withDefaults(), 2, "host", "", h, hclog.NewNullLogger())
	now := leaseTicks(e, map[string]uint64{"pkg": 700}, 8)
	e.step(tickInput{Reading: hostReading(now.Add(DefaultTick)), Leases: []leaseInput{{ID: "pkg", Name: "pkg", Admitted: true, Ending: true}}})
	if got := h.seed(0, "pkg", classCompile); got != 700*mib {
		t.Fatalf("after the tick that saw it end: %d MiB, want its 700 MiB compile", got/mib)
	}
	e.step(tickInput{Reading: hostReading(now.Add(2 * DefaultTick))})
	if got := h.Entries(); len(got) != 1 || got[0].Runs != 1 {
		t.Errorf("once it is gone too: %+v, want the one run recorded once", got)
	}
}

// As tokend stops, a lease still running is recorded as a part of a run:
// its jobs so far are a lower bound of what the whole run would show, so
// they raise an estimate, or the default the lease started from, and
// never lower one, and count as no run.
func TestHistoryRecordsRunningLeasesOnStop(t *testing.T) {
	h := newTestHistory(t)
	h.record(0, "known", run(700*mib, 0), t0)
	e := newEngine(Params{}.withDefaults(), 2, "host", "", h, hclog.NewNullLogger())
	now := leaseTicks(e, map[string]uint64{"known": 300, "big": 1500, "small": 300}, 4)
	e.recordLive(map[string]bool{}, now)
	for name, want := range map[string]uint64{"known": 700, "big": 1500, "small": 0} {
		if got := h.seed(0, name, classCompile); got != want*mib {
			t.Errorf("%s: %d MiB after a partial run, want %d", name, got/mib, want)
		}
	}
	for _, en := range h.Entries() {
		if en.Runs != map[string]int{"known": 1}[en.Name] {
			t.Errorf("%s: %d runs; a partial run counts as none", en.Name, en.Runs)
		}
	}
}
