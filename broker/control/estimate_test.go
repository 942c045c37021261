package control

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/broker/memory"
)

func TestClassify(t *testing.T) {
	for _, tt := range []struct {
		name, argv0 string
		want        class
	}{
		{"cc1plus", "/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus", classCompile},
		{"rustc", "rustc", classCompile},
		{"ld", "/usr/bin/ld", classLink},
		{"ld.gold", "", classLink},
		{"mold", "", classLink},
		{"collect2", "", classLink},
		{"lto1", "", classLink},
		{"ld.lld-19", "", classLink},
		{"ld-linux-x86-64", "/lib64/ld-linux-x86-64.so.2", classCompile},
		// /proc/PID/status cuts names to 15 bytes: the first argument
		// tells a cross linker from a cross compiler driver.
		{"x86_64-linux-gn", "/usr/bin/x86_64-linux-gnu-ld.bfd", classLink},
		{"x86_64-linux-gn", "/usr/bin/x86_64-linux-gnu-gcc-12", classCompile},
		{"make", "make", classDriver},
		{"make-4.3", "make-4.3", classDriver},
		{"ninja", "ninja", classDriver},
		{"cargo", "cargo", classDriver},
	} {
		if got := classify(tt.name, tt.argv0); got != tt.want {
			t.Errorf("classify(%q, %q) = %v, want %v", tt.name, tt.argv0, got, tt.want)
		}
	}
}

// The estimate of a lease is the largest peak of its last finished jobs,
// seeded until then; a process that reads zero while exiting keeps the
// peak it had.
func TestEstimateLearnsFromFinishedJobs(t *testing.T) {
	l := &leaseState{seed: [3]uint64{classCompile: 1 << 30, classLink: 2 << 30}, source: "default"}
	job := func(pid int, peak uint64) proc {
		return proc{Proc: memory.Proc{PID: pid, Name: "cc1plus", RSS: peak, Peak: peak}, class: classCompile}
	}
	l.observe([]proc{job(1, 300*mib), job(2, 500*mib)})
	if got := l.estimate(classCompile); got != 1<<30 {
		t.Errorf("before any job finished: %d MiB, want the 1 GiB seed", got/mib)
	}
	// Job 2 exits: its last sample reads no memory, then it is gone.
	l.observe([]proc{job(1, 310*mib), {Proc: memory.Proc{PID: 2, Name: "cc1plus"}, class: classCompile}})
	l.observe([]proc{job(1, 320*mib)})
	if got, src := l.estimate(classCompile), l.estimateSource(); got != 500*mib || src != "observed" {
		t.Errorf("after a 500 MiB job finished: %d MiB from %s", got/mib, src)
	}
	for pid := 10; pid < 10+estimateWindow; pid++ {
		l.observe([]proc{job(pid, 200*mib)})
	}
	l.observe(nil)
	if got := l.estimate(classCompile); got != 200*mib {
		t.Errorf("after %d more jobs of 200 MiB: %d MiB, want 200: the bigger ones left the window", estimateWindow, got/mib)
	}
	if got := l.estimate(classLink); got != 2<<30 {
		t.Errorf("no link seen: %d MiB, want the seed", got/mib)
	}
	// A link at 600 MiB that reached 700 grows to the 2 GiB link seed; a
	// job with no heavy process yet grows from nothing to 200 MiB.
	link := proc{Proc: memory.Proc{PID: 99, Name: "ld", RSS: 600 * mib, Peak: 700 * mib}, class: classLink}
	l.observe([]proc{link})
	if _, _, g, back, live := l.usage(2); g != (2<<30-600*mib)+200*mib || back != 0 || live != 600*mib {
		t.Errorf("growth %d, back %d, live %d MiB; want 2048 - 600 + 200, 0 and 600", g/mib, back/mib, live/mib)
	}
	// Once it exits, reading zero while the kernel frees its memory, the
	// next job starts in its place: that one grows 200 MiB, and the
	// link's 600 MiB are coming back.
	link.exiting, link.RSS, link.Peak = true, 0, 0
	l.observe([]proc{link})
	if _, _, g, back, live := l.usage(1); g != 200*mib || back != 600*mib || live != 0 {
		t.Errorf("growth %d, back %d, live %d MiB; want 200, 600 and 0", g/mib, back/mib, live/mib)
	}
	if got := l.estimate(classLink); got != 2<<30 {
		t.Errorf("link estimate %d MiB while its process exits, want the seed", got/mib)
	}
}

// A lease whose jobs all stay under the floor is expected to stay there.
func TestEstimateOfSmallJobs(t *testing.T) {
	l := &leaseState{seed: [3]uint64{classCompile: 1 << 30}, source: "default"}
	for pid := 1; pid <= estimateWindow; pid++ {
		l.observe([]proc{{Proc: memory.Proc{PID: pid, Name: "cc1", RSS: 20 * mib, Peak: 20 * mib}, class: classCompile}})
	}
	l.observe(nil)
	if got := l.estimate(classCompile); got != heavyFloor {
		t.Errorf("after %d small jobs: %d MiB, want the %d MiB floor", estimateWindow, got/mib, heavyFloor/mib)
	}
}

// This host has no cgroup v2 memory controller, so the v2 memory files
// here are hand-written (testdata/memory/cgroup2-memory, see its README):
// a group limited to 4 GiB using 3 GiB, 640 MiB of it inactive file. The
// processes are the recorded g++ compile (testdata/memory/proc), whose
// cc1plus holds 300 MiB.
func TestV2DomainHandWritten(t *testing.T) {
	fixture := filepath.Join("..", "..", "testdata", "memory")
	cfg := memory.Config{Proc: filepath.Join(fixture, "proc"), Cgroup: filepath.Join(fixture, "cgroup2-memory")}
	d, err := memory.NewDomain(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.Read()
	if err != nil {
		t.Fatal(err)
	}
	s, err := newSampler(cfg.Proc)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := s.mem.PIDs(19847, 19848, 19849)
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(Params{}.withDefaults(), 2, cfg.Cgroup, d.PressureFile(), newTestHistory(t), hclog.NewNullLogger())
	dec := e.step(tickInput{Reading: r, Leases: []leaseInput{{
		ID: "gxx", Name: "g++", Created: time.Now(), Admitted: true, Freezable: true, Procs: s.classify(ps),
	}}})
	m := dec.Status
	if m.Limit != 4<<30 || m.WorkingSet != 3<<30-640*mib || m.Headroom != 4<<30-m.WorkingSet || m.Reserve != 512*mib {
		t.Errorf("v2 domain reads limit %d, working set %d, headroom %d, reserve %d MiB; want 4096, 2432, 1664, 512",
			m.Limit/mib, m.WorkingSet/mib, m.Headroom/mib, m.Reserve/mib)
	}
	// cc1plus at 300 MiB is expected to reach the 1 GiB default: 1664 -
	// 512 - 724 leaves 428 MiB, not a whole job; without that growth
	// 1152 MiB would fit one more.
	if dec.Budget != 1 || dec.Reason != ReasonGrowth {
		t.Errorf("decided %d (%s), want 1 (%s): %s", dec.Budget, dec.Reason, ReasonGrowth, m.Detail)
	}
}

// A build that requires big-parallel or big-memory starts from larger
// estimates than the default until its history or its own jobs say more;
// other features change nothing, and history wins over features.
func TestFeaturesShapeTheFirstEstimate(t *testing.T) {
	h := newTestHistory(t)
	h.record(0, "llvm", run(700*mib, 0), time.Now())
	e := newEngine(Params{}.withDefaults(), 2, "host", "", h, hclog.NewNullLogger())
	in := []leaseInput{
		{ID: "plain", Name: "hello"},
		{ID: "kvm", Name: "nixos-test", Features: []string{"kvm", "nixos-test"}},
		{ID: "big", Name: "chromium", Features: []string{"big-parallel"}},
		{ID: "huge", Name: "chromium", Features: []string{"big-parallel", "big-memory"}},
		{ID: "known", Name: "llvm", Features: []string{"big-parallel"}},
	}
	e.track(in, 64<<30, time.Now())
	for _, tt := range []struct {
		id            string
		compile, link uint64
		source        string
	}{
		{"plain", 1 << 30, 2 << 30, "default"},
		{"kvm", 1 << 30, 2 << 30, "default"},
		{"big", 2 << 30, 4 << 30, "features"},
		{"huge", 4 << 30, 8 << 30, "features"},
		{"known", 700 * mib, 4 << 30, "history"},
	} {
		l := e.leases[tt.id]
		if c, k, s := l.estimate(classCompile), l.estimate(classLink), l.estimateSource(); c != tt.compile || k != tt.link || s != tt.source {
			t.Errorf("%s: compile %d, link %d MiB from %s; want %d, %d from %s",
				tt.id, c/mib, k/mib, s, tt.compile/mib, tt.link/mib, tt.source)
		}
	}
}

// t0 is the time of samples in tests that take them all at one instant.
var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
