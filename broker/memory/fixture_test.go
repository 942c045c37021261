package memory

import (
	"os"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

// The expected numbers below were worked out by hand from the files in
// testdata/memory (see its README); re-recording means redoing them.

const kiB = 1024

// From proc/meminfo: MemTotal 24684084 kB, MemAvailable 23934256 kB.
const (
	fixtureMemTotal     = 24684084 * kiB // 25276502016
	fixtureMemAvailable = 23934256 * kiB // 24508678144
)

// readFixture reads the domain c names under testdata/memory, and checks
// the host numbers and which pressure file it read.
func readFixture(t *testing.T, c Config, pressure string) Reading {
	t.Helper()
	c.Proc = fixture("proc")
	d, err := NewDomain(c)
	if err != nil {
		t.Fatal(err)
	}
	if d.PressureFile() != pressure {
		t.Errorf("PressureFile = %s, want %s", d.PressureFile(), pressure)
	}
	r, err := d.Read()
	if err != nil {
		t.Fatal(err)
	}
	if r.MemTotal != fixtureMemTotal || r.MemAvailable != fixtureMemAvailable {
		t.Errorf("MemTotal, MemAvailable = %d, %d; want %d, %d", r.MemTotal, r.MemAvailable, fixtureMemTotal, fixtureMemAvailable)
	}
	return r
}

func TestFixtureHost(t *testing.T) {
	r := readFixture(t, Config{}, fixture("proc", "pressure", "memory"))
	if r.Cgroup != nil {
		t.Errorf("host domain has a cgroup: %+v", r.Cgroup)
	}
	// proc/pressure/memory: some total=1274891, full total=1192039 (µs).
	want := Pressure{Some: 1274891 * time.Microsecond, Full: 1192039 * time.Microsecond}
	if r.Pressure != want {
		t.Errorf("Pressure = %+v, want %+v", r.Pressure, want)
	}
	if h := r.Headroom(); h != fixtureMemAvailable {
		t.Errorf("Headroom = %d, want MemAvailable %d", h, uint64(fixtureMemAvailable))
	}
}

// The host's pressure file read through procfs (the default) and through
// this package's own cgroup parser (when named explicitly) must agree.
// procfs parses PSI files too; it is the oracle for our own parser, which
// the hot path uses because it reads without the runtime's poller.
func TestFixturePressureParsersAgree(t *testing.T) {
	fs, err := procfs.NewFS(fixture("proc"))
	if err != nil {
		t.Fatal(err)
	}
	stats, err := fs.PSIStatsForResource("memory")
	if err != nil {
		t.Fatal(err)
	}
	want := Pressure{
		Some: time.Duration(stats.Some.Total) * time.Microsecond,
		Full: time.Duration(stats.Full.Total) * time.Microsecond,
	}
	got, err := uncached.readPressure(fixture("proc", "pressure", "memory"))
	if err != nil {
		t.Fatal(err)
	}
	if got != want || want == (Pressure{}) {
		t.Errorf("own parser read %+v, procfs %+v (must agree and not be zero)", got, want)
	}
}

func TestFixtureV1(t *testing.T) {
	r := readFixture(t, Config{Cgroup: fixture("memcg-v1"), Pressure: fixture("cgroup2", "memory.pressure")}, fixture("cgroup2", "memory.pressure"))
	want := Memcg{
		Version:      1,
		Max:          536870912, // memory.limit_in_bytes
		High:         Unlimited,
		Usage:        304041984, // memory.usage_in_bytes
		InactiveFile: 335872,    // total_inactive_file
		ActiveFile:   6103040,   // total_active_file
		Anon:         296214528, // total_rss
		File:         6438912,   // total_cache
	}
	if r.Cgroup == nil || *r.Cgroup != want {
		t.Fatalf("Cgroup = %+v, want %+v", r.Cgroup, want)
	}
	// 304041984 - 335872
	if ws := r.Cgroup.WorkingSet(); ws != 303706112 {
		t.Errorf("WorkingSet = %d, want 303706112", ws)
	}
	// min(24508678144, 536870912 - 303706112)
	if h := r.Headroom(); h != 233164800 {
		t.Errorf("Headroom = %d, want 233164800", h)
	}
	// The compile had not stalled yet when the snapshot was taken.
	if r.Pressure != (Pressure{}) {
		t.Errorf("Pressure = %+v, want zero totals as recorded", r.Pressure)
	}
}

func TestFixtureV2(t *testing.T) {
	// A v2 domain reads its own memory.pressure unless told otherwise.
	r := readFixture(t, Config{Cgroup: fixture("cgroup2-memory")}, fixture("cgroup2-memory", "memory.pressure"))
	want := Memcg{
		Version:      2,
		Max:          4294967296, // memory.max
		High:         Unlimited,  // memory.high "max"
		Usage:        3221225472, // memory.current
		InactiveFile: 671088640,
		ActiveFile:   268435456,
		Anon:         2147483648,
		File:         1006632960,
		LimitHits:    37, // memory.events max
		OOMKills:     2,  // memory.events oom_kill
	}
	if r.Cgroup == nil || *r.Cgroup != want {
		t.Fatalf("Cgroup = %+v, want %+v", r.Cgroup, want)
	}
	// 3221225472 - 671088640
	if ws := r.Cgroup.WorkingSet(); ws != 2550136832 {
		t.Errorf("WorkingSet = %d, want 2550136832", ws)
	}
	// min(24508678144, 4294967296 - 2550136832)
	if h := r.Headroom(); h != 1744830464 {
		t.Errorf("Headroom = %d, want 1744830464", h)
	}
	wantP := Pressure{Some: 8734211 * time.Microsecond, Full: 5120833 * time.Microsecond}
	if r.Pressure != wantP {
		t.Errorf("Pressure = %+v, want %+v", r.Pressure, wantP)
	}
}

func TestHeadroomEdges(t *testing.T) {
	const gib = 1 << 30
	for _, c := range []struct {
		name      string
		available uint64
		m         Memcg
		want      uint64
	}{
		{"high below max caps", 20 * gib, Memcg{Max: 8 * gib, High: 6 * gib, Usage: 4 * gib, InactiveFile: gib}, 3 * gib},
		{"host scarcer than the group", gib, Memcg{Max: 8 * gib, High: Unlimited, Usage: 2 * gib}, gib},
		{"working set past the limit", 20 * gib, Memcg{Max: 2 * gib, High: Unlimited, Usage: 3 * gib}, 0},
		{"stat ahead of usage", 20 * gib, Memcg{Max: 2 * gib, High: Unlimited, Usage: gib, InactiveFile: 2 * gib}, 2 * gib},
		{"v1 unlimited", 5 * gib, Memcg{Max: 9223372036854771712, High: Unlimited, Usage: gib}, 5 * gib},
	} {
		r := Reading{MemAvailable: c.available, Cgroup: &c.m}
		if got := r.Headroom(); got != c.want {
			t.Errorf("%s: Headroom = %d, want %d", c.name, got, c.want)
		}
	}
}

func loadTrace(t *testing.T) []Snapshot {
	t.Helper()
	f, err := os.Open(fixture("trace-v1-compile.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	trace, err := ReadTrace(f)
	if err != nil {
		t.Fatal(err)
	}
	return trace
}

func TestFixtureTrace(t *testing.T) {
	trace := loadTrace(t)
	if len(trace) != 57 {
		t.Fatalf("trace has %d snapshots, want the 57 recorded", len(trace))
	}
	for i, s := range trace {
		c := s.Reading.Cgroup
		if c == nil || c.Version != 1 || c.Max != 640<<20 {
			t.Fatalf("snapshot %d: cgroup %+v, want v1 with the 640 MiB limit", i, c)
		}
		if c.Usage > c.Max {
			t.Errorf("snapshot %d: usage %d above limit %d", i, c.Usage, c.Max)
		}
		if i == 0 {
			continue
		}
		st, err := s.Reading.StallSince(trace[i-1].Reading)
		if err != nil {
			t.Fatalf("snapshot %d: %v", i, err)
		}
		if st.Some < 0 || st.Some > 1 || st.Full < 0 || st.Full > st.Some {
			t.Errorf("snapshot %d: stall %+v out of range", i, st)
		}
	}
	// Snapshots 15 and 16 straddle the OOM kill of one of the two compilers:
	// usage 646299648 -> 373735424, limit_hits 0 -> 137, oom_kills 0 -> 1,
	// PSI some and full 0 -> 1803 µs over 20:21.024034162 - 20:20.822466615.
	before, after := trace[15], trace[16]
	if before.Reading.Cgroup.OOMKills != 0 || after.Reading.Cgroup.OOMKills != 1 || after.Reading.Cgroup.LimitHits != 137 {
		t.Errorf("OOM kill not where recorded: %+v -> %+v", before.Reading.Cgroup, after.Reading.Cgroup)
	}
	st, err := after.Reading.StallSince(before.Reading)
	if err != nil {
		t.Fatal(err)
	}
	const interval = 201567547 * time.Nanosecond
	want := 1803000.0 / 201567547.0 // about 0.89%: the kill came with almost no warning
	if st.Interval != interval || st.Some != want || st.Full != want {
		t.Errorf("stall = %+v, want some = full = %v over %v", st, want, interval)
	}
	// The killed cc1plus, 19968, lingers with no memory until reaped.
	var killed []Proc
	for _, p := range after.Procs {
		if p.Name == "cc1plus" && p.RSS == 0 {
			killed = append(killed, p)
		}
	}
	if len(killed) != 1 || killed[0].PID != 19968 {
		t.Errorf("killed compilers = %+v, want cc1plus 19968 with RSS 0", killed)
	}
}

func TestFixtureProcs(t *testing.T) {
	s, err := NewSampler(fixture("proc"))
	if err != nil {
		t.Fatal(err)
	}
	// From proc/*/status: VmRSS and VmHWM in kB.
	gxx := Proc{PID: 19847, Name: "g++", RSS: 2660 * kiB, Peak: 2660 * kiB}
	cc1plus := Proc{PID: 19848, Name: "cc1plus", RSS: 307852 * kiB, Peak: 307852 * kiB}
	as := Proc{PID: 19849, Name: "as", RSS: 3780 * kiB, Peak: 3780 * kiB}

	got, err := s.PIDs(19848, 4194303) // the second never existed: left out
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []Proc{cc1plus}) {
		t.Errorf("PIDs = %+v, want %+v", got, cc1plus)
	}
	// proc/*/stat: 19848 and 19849 have parent 19847.
	if got, err = tree(t, s, 19847); err != nil {
		t.Fatal(err)
	}
	if want := []Proc{gxx, cc1plus, as}; !slices.Equal(got, want) {
		t.Errorf("Tree = %+v, want %+v", got, want)
	}
	if got, err = tree(t, s, 19848); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []Proc{cc1plus}) {
		t.Errorf("Tree of a leaf = %+v, want %+v", got, cc1plus)
	}
	// memcg-v1/cgroup.procs lists all three.
	if got, err = s.Cgroup(fixture("memcg-v1")); err != nil {
		t.Fatal(err)
	}
	if want := []Proc{gxx, cc1plus, as}; !slices.Equal(got, want) {
		t.Errorf("Cgroup = %+v, want %+v", got, want)
	}
}
