package control

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/broker/control/internal/rawtrace"
	"github.com/tokend/tokend/broker/memory"
)

// traceFile is a recorded trace in testdata/control (see its README).
func traceFile(name string) string {
	return filepath.Join("..", "..", "testdata", "control", name+".jsonl.gz")
}

// replayed is one step of a replay: what the engine decided.
type replayed struct {
	step int
	decision
}

// String is the decision as the expectation tables write it.
func (r replayed) String() string {
	s := fmt.Sprintf("step %d: budget %d (%s)", r.step, r.Budget, r.Reason)
	if len(r.Actions) > 0 {
		s += ", " + r.actions()
	}
	return s
}

// replay feeds a recorded trace through an engine, one step at a time:
// each step's files are written back into a directory laid out like /proc
// and the memory cgroup, and read with package memory's readers, exactly
// as live ticks read the real files.
func replay(t *testing.T, trace string, p Params, cpus int, hist *History) []replayed {
	t.Helper()
	steps, err := rawtrace.Read(traceFile(trace))
	if err != nil {
		t.Fatal(err)
	}
	p = p.withDefaults()
	if err := p.validate(); err != nil {
		t.Fatal(err)
	}
	e := newEngine(p, cpus, trace, "", hist, hclog.NewNullLogger())
	dir := scratchDir(t)
	var out []replayed
	for i, st := range steps {
		if err := st.Materialize(dir); err != nil {
			t.Fatal(err)
		}
		cfg := memory.Config{Proc: filepath.Join(dir, rawtrace.Proc)}
		if _, err := os.Stat(filepath.Join(dir, rawtrace.Memcg)); err == nil {
			cfg.Cgroup = filepath.Join(dir, rawtrace.Memcg)
			cfg.Pressure = filepath.Join(dir, rawtrace.PSI, "memory.pressure")
		}
		d, err := memory.NewDomain(cfg)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		r, err := d.Read()
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		r.At = st.At
		s, err := newSampler(cfg.Proc)
		if err != nil {
			t.Fatal(err)
		}
		in := tickInput{Reading: r}
		for _, l := range st.Leases {
			ps, err := s.mem.PIDs(l.PIDs...)
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			in.Leases = append(in.Leases, leaseInput{
				ID: l.ID, Name: l.Name, Created: l.Created, Admitted: l.Admitted, Hungry: l.Hungry,
				Held: l.Held, Freezable: true, Procs: s.classify(ps),
			})
		}
		out = append(out, replayed{step: i, decision: e.step(in)})
	}
	return out
}

// scratchDir is a directory removed when t ends, in memory (/dev/shm)
// where there is one: a replay writes a few thousand small files.
func scratchDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "tokend-replay-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// actions renders the decision's actions, such as "freeze a, thaw b".
func (d decision) actions() string {
	parts := make([]string, len(d.Actions))
	for i, a := range d.Actions {
		verb := "thaw"
		if a.Freeze {
			verb = "freeze"
		}
		parts[i] = verb + " " + a.Lease
	}
	return strings.Join(parts, ", ")
}

// checkEveryStep checks what must hold at every step, whatever the
// numbers: the budget stays between 1 and the CPU cap, a budget memory
// decided never exceeds what memory fits, and the published arithmetic
// adds up.
func checkEveryStep(t *testing.T, rs []replayed) {
	t.Helper()
	for _, r := range rs {
		m := r.Status
		if r.Budget < 1 || r.Budget > m.CPUCap {
			t.Errorf("%v: outside 1..cpu cap %d", r, m.CPUCap)
		}
		if r.Changed && r.Reason != ReasonCPU && r.Budget > max(m.Fit, 1) {
			t.Errorf("%v: memory fits only %d", r, m.Fit)
		}
		room := int64(m.Headroom) - int64(m.Reserve)
		if m.SoftCap > 0 {
			room = min(room, int64(m.SoftCap)-int64(m.WorkingSet))
		}
		if want := m.Jobs + floorDiv(room-int64(m.Growth), m.NextJob); m.Fit != want {
			t.Errorf("%v: fit %d, but its status works out to %d: %+v", r, m.Fit, want, m)
		}
	}
}

// changes lists the steps where the budget, its reason or a cgroup's
// frozen state changed.
func changes(rs []replayed) []string {
	var out []string
	for _, r := range rs {
		if r.Changed || len(r.Actions) > 0 {
			out = append(out, r.String())
		}
	}
	return out
}

// wantChanges fails t unless the replay changed the budget, its reason or
// a lease's frozen state exactly at the steps listed.
func wantChanges(t *testing.T, rs []replayed, want []string) {
	t.Helper()
	got := changes(rs)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("decisions:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

const mib = 1 << 20

// The v1-ramp trace, with the defaults on this host (2 CPUs: cap 3; a
// 2 GiB group: reserve 256 MiB; unknown jobs expected at 1 GiB). alpha
// runs two 450 MiB jobs at a time from the start, beta one 500 MiB job at
// a time from 2 s, gamma a 350 MiB job from 4 s. The trace is open loop:
// its builds ran whatever the budget, which is what the engine judges.
func TestReplayV1RampDefaults(t *testing.T) {
	rs := replay(t, "v1-ramp", Params{}, 2, newTestHistory(t))
	checkEveryStep(t, rs)
	wantChanges(t, rs, []string{
		// alpha's two jobs are at 0 MiB and expected at 1 GiB each:
		// 2048 headroom - 256 reserve - 2048 growth leaves -256 MiB, so
		// memory fits 2 - 1 = 1 job, though without the growth still to
		// come it would fit 3.
		"step 0: budget 1 (growth reserve)",
		// alpha's first two jobs ended at 452 MiB, which is now its
		// estimate; 3 s after the last change, with alpha still hungry,
		// there is room for one more job: grow by one.
		"step 13: budget 2 (headroom)",
		// gamma started at step 16 with nothing of its own to go by: it
		// expects its job at what the other leases showed, alpha's 452
		// MiB compiles and beta's job still growing (to 502 MiB), not at
		// the 1 GiB default, and alpha ending at step 22 does not take
		// that away. (Before, from step 22 on gamma's job counted at the
		// default and the budget fell to 1.)
		// Every build is done: idle, the budget is set outright to what
		// memory allows for one unknown job (1791 / 1024).
		"step 38: budget 1 (headroom)",
	})
	for _, r := range rs[16:24] {
		if l := r.Leases["gamma"]; l.Source != "run" || l.Estimates.Compile/mib < 452 || l.Estimates.Compile/mib > 502 {
			t.Errorf("step %d: gamma's estimate %d MiB from %s, want 452 to 502 from run", r.step, l.Estimates.Compile/mib, l.Source)
		}
	}
	// At step 0 the files say: limit 2048 MiB, nothing charged yet.
	if m := rs[0].Status; m.Limit != 2048*mib || m.Headroom != 2048*mib || m.Reserve != 256*mib || m.CPUCap != 3 {
		t.Errorf("step 0 reads %+v", m)
	}
}

// Replays of v1-ramp learn each lease's jobs: the first, whose jobs
// peaked at about 452, 502 and 352 MiB, sets every estimate to its own
// peak (the 1 GiB they started from was a default), and the second,
// agreeing, keeps them. The third replay starts every lease from them.
func TestReplayHistorySeedsEstimates(t *testing.T) {
	h := newTestHistory(t)
	for i, want := range []map[string]uint64{
		{"alpha": 452, "beta": 502, "gamma": 352},
		{"alpha": 452, "beta": 502, "gamma": 352},
	} {
		replay(t, "v1-ramp", Params{}, 2, h)
		if err := h.Save(); err != nil {
			t.Fatal(err)
		}
		var err error
		if h, err = LoadHistory(h.path); err != nil {
			t.Fatal(err)
		}
		for name, want := range want {
			if got := h.seed(0, name, classCompile) / mib; got != want {
				t.Errorf("history of %s after replay %d: %d MiB, want %d", name, i+1, got, want)
			}
		}
	}
	rs := replay(t, "v1-ramp", Params{}, 2, h)
	checkEveryStep(t, rs)
	wantChanges(t, rs, []string{
		// alpha's two jobs expected at 452 MiB: 2048 - 256 - 904 leaves
		// 888 MiB, one more job; 3 fit, the CPU cap. Without growth 5
		// would fit, so the growth still to come is what binds.
		"step 0: budget 3 (growth reserve)",
		"step 38: budget 1 (headroom)",
	})
	if l := rs[0].Leases["alpha"]; l.Source != "history" || l.Estimates.Compile/mib != 452 {
		t.Errorf("alpha at step 0: %+v, want its 452 MiB estimate from history", l)
	}
}

// The v1-brake trace: in a 1 GiB group old holds 250 MiB, mid 400 MiB,
// and young creeps up at 40 MiB/s to 320 MiB, leaving 49 MiB of headroom;
// then mid ends. With a 160 MiB reserve the brake point is 80 MiB.
func TestReplayV1Brake(t *testing.T) {
	rs := replay(t, "v1-brake", Params{Reserve: 160 * mib, JobEstimate: 256 * mib}, 4, newTestHistory(t))
	checkEveryStep(t, rs)
	wantChanges(t, rs, []string{
		// old starts at 0 MiB, expected at 256: 1024 - 160 - 256 leaves
		// 608 MiB, two more jobs.
		"step 0: budget 3 (growth reserve)",
		// old and mid have grown past their estimates (peaks 252 and
		// 347 MiB): 425 - 160 leaves 261 MiB, less than a 347 MiB job.
		"step 9: budget 2 (headroom)",
		// Headroom 71 MiB, under half the reserve and down from 81:
		// freeze the youngest lease. old, the oldest, is never frozen.
		"step 42: budget 2 (headroom), freeze young",
		// Still falling (61 MiB; in the recording young was not really
		// frozen): freeze the next youngest.
		"step 43: budget 2 (headroom), freeze mid",
		// mid ended at step 49: 451 MiB of headroom covers the reserve
		// and all growth to come; after a growth interval (3 s) of
		// recovery, thaw the oldest frozen lease left.
		"step 61: budget 2 (headroom), thaw young",
		"step 65: budget 3 (headroom)",
	})
	for _, r := range rs[42:61] {
		if l := r.Leases["young"]; !l.Frozen {
			t.Errorf("step %d: young not shown frozen: %+v", r.step, l)
		}
		if l := r.Leases["old"]; l.Frozen {
			t.Errorf("step %d: the oldest lease frozen", r.step)
		}
	}
}

// The v1-thrash trace: a 350 MiB job reads a 600 MiB file in a 768 MiB
// group, next to a build of 100 MiB jobs. Headroom stays above 300 MiB
// (the file's pages are inactive, not working set) while PSI stalls climb
// to 10 to 30%: only pressure can tell.
func TestReplayV1Thrash(t *testing.T) {
	rs := replay(t, "v1-thrash", Params{JobEstimate: 64 * mib}, 4, newTestHistory(t))
	checkEveryStep(t, rs)
	wantChanges(t, rs, []string{
		// 768 - 96 - 128 leaves 544 MiB: 8 more 64 MiB jobs; the CPU
		// cap (1.5 x 4) binds.
		"step 0: budget 6 (cpu cap)",
		"step 1: budget 5 (growth reserve)",
		"step 2: budget 4 (headroom)",
		// some-stall over the last 2 s crosses 10%: the budget drops by
		// a quarter, and the working set (455 MiB) becomes a soft cap
		// that leaves no room: 1 job. A lower budget stops no job that
		// runs, so the brake freezes the youngest lease, steady; thrash,
		// the oldest, goes on.
		"step 7: budget 1 (pressure), freeze steady",
		// Pressure stays (some 13 to 28%), so steady stays frozen until
		// thrash ends and steady is the oldest lease, which must make
		// progress. (In the recording it ran on: the builds were open
		// loop.)
		"step 36: budget 1 (pressure), thaw steady",
		// Idle again: the budget is set outright, up to the CPU cap.
		"step 45: budget 6 (cpu cap)",
	})
	if m := rs[7].Status; m.SoftCap/mib != 455 || m.PressureSome < pressureThreshold || m.Headroom/mib != 312 {
		t.Errorf("step 7: %+v, want pressure over 10%%, a 455 MiB soft cap and 312 MiB of headroom", m)
	}
	for _, r := range rs[7:36] {
		if !r.Leases["steady"].Frozen || r.Leases["thrash"].Frozen {
			t.Errorf("step %d: steady frozen %v, thrash frozen %v; want steady alone frozen", r.step, r.Leases["steady"].Frozen, r.Leases["thrash"].Frozen)
		}
	}
	// The soft cap relaxes by 2% of the domain per growth interval once
	// pressure is gone (the last window above 10% ended at step 40).
	if c := rs[52].Status.SoftCap; c <= rs[51].Status.SoftCap {
		t.Errorf("soft cap did not relax: %d then %d", rs[51].Status.SoftCap, c)
	}
}

// The host trace: the host's MemAvailable (about 22 GiB) is the domain; a
// 3 GiB job twice beside a build of eighteen 200 MiB jobs, three at a time.
// Jobs are expected at 8 GiB until seen; 2 CPUs cap the budget at 3.
func TestReplayHost(t *testing.T) {
	rs := replay(t, "host", Params{JobEstimate: 8 << 30}, 2, newTestHistory(t))
	checkEveryStep(t, rs)
	wantChanges(t, rs, []string{
		// 22.5 GiB - 0.5 - 8 GiB of growth for big: one more 8 GiB job.
		"step 0: budget 2 (growth reserve)",
		// small's first jobs ended at 202 MiB; big's estimate is its own
		// peak. Room for more, small hungry, 3 s since the last change:
		// one more, which reaches the CPU cap.
		"step 12: budget 3 (headroom)",
		"step 46: budget 2 (headroom)",
	})
	if m := rs[0].Status; m.Domain != "host" || m.Limit == 0 || m.Headroom != m.Limit-m.WorkingSet {
		t.Errorf("host domain at step 0: %+v", m)
	}
}

func newTestHistory(t *testing.T) *History {
	t.Helper()
	return newTestHistoryAt(t, filepath.Join(t.TempDir(), "history.json"))
}

// The v1-hog trace: two builds of 250 MiB compiles, two at a time, each
// ending in a 1 GiB link (a program named ld), in a 3 GiB group (reserve
// 384 MiB); from 4 s a program outside both grows to 1200 MiB and stays.
// Recorded on a loaded host (load 9 to 14 on 2 CPUs), so everything grew
// slower than scripted: the outside program at about 70 MiB/s (1200 MiB
// from step 17 to step 87), the links at about 150 MiB/s.
func TestReplayV1Hog(t *testing.T) {
	rs := replay(t, "v1-hog", Params{}, 2, newTestHistory(t))
	checkEveryStep(t, rs)
	wantChanges(t, rs, []string{
		"step 0: budget 2 (growth reserve)",
		// The first compiles ended at 252 MiB.
		"step 15: budget 3 (headroom)",
		// a's link appears, expected at the 2 GiB default.
		"step 64: budget 1 (growth reserve)",
		// b's link too: two links of unknown size, and memory does not
		// fit their growth to come (1955 MiB of headroom, 3936 of growth
		// with the outside program's): b, the younger, waits frozen.
		"step 73: budget 1 (growth reserve), freeze b",
	})
	for _, r := range rs {
		m := r.Status
		switch {
		case r.Leases["a"].Frozen:
			t.Errorf("step %d: the oldest lease was frozen", r.step)
		case r.step < 25 && m.OutsideGrowth > 0:
			// Before the outside program had grown 64 MiB over a window
			// at both of its ends.
			t.Errorf("step %d: outside growth %d MiB forecast with the outside at %d MiB", r.step, m.OutsideGrowth/mib, m.Outside/mib)
		case r.step >= 25 && r.step <= 30 && (m.OutsideGrowth < 150*mib || m.OutsideGrowth > 260*mib):
			// About 60 MiB/s over the window at first, held for 3 s.
			t.Errorf("step %d: outside growth %d MiB, want 150 to 260 MiB as it starts", r.step, m.OutsideGrowth/mib)
		case r.step >= 92 && m.OutsideGrowth != 0:
			// The outside program has held still since step 87, longer
			// than a window.
			t.Errorf("step %d: outside growth %d MiB after it stopped growing", r.step, m.OutsideGrowth/mib)
		}
	}
	if g := rs[86].Status; g.OutsideGrowth < 250*mib || !strings.Contains(g.Detail, "outside the leases") {
		t.Errorf("step 86, the outside program growing at its fastest: %d MiB forecast; detail %q", g.OutsideGrowth/mib, g.Detail)
	}

	// With the links' size known from an earlier build of each, none
	// waits: growth to come is their own.
	h := newTestHistory(t)
	for _, name := range []string{"a", "b"} {
		h.record(0, name, run(252*mib, 1100*mib), time.Now())
	}
	for _, r := range replay(t, "v1-hog", Params{}, 2, h) {
		if len(r.Actions) > 0 {
			t.Errorf("warm: %v: links of known size were held back", r)
		}
	}

	// Known to differ, where memory fits the larger only alone: the lease
	// with the smaller link is the keeper, and the other waits frozen as
	// soon as its link runs, even the oldest, while it is still small.
	// The keeper's share is served first from the step on where the two
	// links no longer fit beside the outside program.
	for _, tt := range []struct {
		aLink, bLink uint64
		want         string
		keeper       string
	}{
		{2000 * mib, 1100 * mib, "step 64: budget 1 (growth reserve), freeze a", "b"},
		{1100 * mib, 2000 * mib, "step 73: budget 1 (outside growth), freeze b", "a"},
	} {
		h := newTestHistory(t)
		h.record(0, "a", run(252*mib, tt.aLink), time.Now())
		h.record(0, "b", run(252*mib, tt.bLink), time.Now())
		rs := replay(t, "v1-hog", Params{}, 2, h)
		var froze []string
		for _, r := range rs {
			if len(r.Actions) > 0 {
				froze = append(froze, r.String())
			}
		}
		if len(froze) != 1 || froze[0] != tt.want {
			t.Errorf("links of a %d MiB, b %d MiB: brake %q, want %q", tt.aLink/mib, tt.bLink/mib, froze, tt.want)
		}
		checkServedFirst(t, rs, tt.aLink+tt.bLink, tt.keeper)
	}
}

// checkServedFirst checks that a replay served the keeper's share first
// from the first step at which links of the given total did not fit
// beside the memory outside the leases, and on while both leases ran, and
// at no step before.
func checkServedFirst(t *testing.T, rs []replayed, links uint64, keeper string) {
	t.Helper()
	from := -1
	for _, r := range rs {
		m := r.Status
		short := links > m.Limit-min(m.Limit, m.Reserve+m.Outside+m.OutsideGrowth)
		both := r.Leases["a"].Jobs > 0 && r.Leases["b"].Jobs > 0
		if from < 0 && short && both {
			from = r.step
		}
		switch {
		case r.First != "" && r.First != keeper:
			t.Errorf("step %d: %q served first, want the keeper %q", r.step, r.First, keeper)
		case r.First != "" && from < 0:
			t.Errorf("step %d: %q served first while links of %d MiB fit", r.step, r.First, links/mib)
		case r.First == "" && from >= 0 && both:
			t.Errorf("step %d: nothing served first since step %d, where links of %d MiB stopped fitting", r.step, from, links/mib)
		}
	}
	if from < 0 {
		t.Errorf("links of %d MiB fit at every step: the test shows nothing", links/mib)
	}
}

// Traces with nothing growing outside the leases forecast no outside
// growth at any step: a job not sampled yet, the page cache and slab
// moving are not an outside program.
func TestReplayNoOutsideGrowth(t *testing.T) {
	for _, trace := range []string{"v1-ramp", "v1-brake", "v1-thrash"} {
		for _, r := range replay(t, trace, Params{}, 2, newTestHistory(t)) {
			if r.Status.OutsideGrowth != 0 {
				t.Errorf("%s step %d: %d MiB of outside growth, outside at %d MiB", trace, r.step, r.Status.OutsideGrowth/mib, r.Status.Outside/mib)
			}
		}
	}
}
