package bench

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Hog is a memory hog outside the builds, in the same memory limit: it
// starts After the builds, grows to PeakMiB at RampMiBs and holds until
// the builds are done. It is never the OOM killer's victim
// (oom_score_adj -1000): it stands for the user's own program, and the
// builds must make room for it.
type Hog struct {
	After    time.Duration
	PeakMiB  int
	RampMiBs float64
}

// Scenario is one workload: packages built MaxJobs at a time (Nix's
// max-jobs), and maybe a hog.
type Scenario struct {
	Name  string
	About string
	// Graph and Seed generate stand-in packages; Real, if set, are real
	// packages instead.
	Graph   GraphSpec
	Seed    uint64
	Real    *RealBuild
	MaxJobs int
	Hog     *Hog
	// LimitMiB is the scenario's own memory limit; 0 is the invocation's.
	LimitMiB int
	// MaxStaticJ leaves out static -jN above it, where more jobs only
	// thrash longer; 0 keeps them all.
	MaxStaticJ int
	// Timeout ends a run that has not finished, its unfinished packages
	// failed; 0 is none.
	Timeout time.Duration
	// TokendInside runs tokend inside the run's memory limit, as on a
	// small machine where the limit is the whole machine.
	TokendInside bool
	// DropCaches empties the host's page cache before each run, so that
	// the compiler's text and the headers are read afresh and charged to
	// the run's memory cgroup, as for the first build on a host to use a
	// toolchain. A group charged for its own file pages thrashes near its
	// limit; one whose file pages were charged to a group before it has
	// little to reclaim and is OOM-killed instead (measured: see the
	// gcc-thrash scenario).
	DropCaches bool
}

// Packages are the scenario's builds; src is the unpacked source tree of
// a real scenario.
func (sc Scenario) Packages(src string) []Package {
	if sc.Real != nil {
		return realPackages(sc.Real, src)
	}
	return Generate(sc.Graph, sc.Seed)
}

// limit is the scenario's memory limit in MiB, given the invocation's.
func (sc Scenario) limit(def int) int {
	if sc.LimitMiB > 0 {
		return sc.LimitMiB
	}
	return def
}

// runs reports whether st is run in sc. Cargo has no load limit (-l), so
// a cargo scenario has no Load strategy.
func (sc Scenario) runs(st Strategy) bool {
	if st.Kind == Load && sc.Real != nil && sc.Real.Cargo != nil {
		return false
	}
	return sc.MaxStaticJ == 0 || st.Kind != Static || st.N <= sc.MaxStaticJ
}

// The compile and link shapes below follow memory-pressure.md's
// measurements (g++ cc1plus peaks near 350-700 MiB and ramps 244 to 431
// MiB/s; links reach 1.5 to 3 GiB at ~800 MiB/s). To fit a 2-core host,
// compiles ramp at 400 MiB/s, the fast end of the measured range, and burn
// 0.3-0.6 CPU-seconds rather than a real compile's several: a compile's
// CPU time is mostly its ramp, about 0.9 s.
var (
	compileUniform = Dist{Min: 200, Max: 400}
	compileHeavy   = Dist{Min: 120, Max: 2048, Median: 350, Sigma: 0.6}
	link           = Dist{Min: 1536, Max: 3072}
)

// Scenarios returns the scenarios: the stand-in ones, then the real ones.
// Quick ones are the stand-ins shrunk to run in seconds each, for a smoke
// test of the harness; real code is neither fetched nor compiled then.
func Scenarios(quick bool) []Scenario {
	s := []Scenario{
		{
			Name:  "light",
			About: "uniform compiles of 200-400 MiB, one 1.5-3 GiB link per package",
			Graph: GraphSpec{Packages: 2, UnitsMin: 20, UnitsMax: 20, UnitPeak: compileUniform, UnitRampMiBs: 400,
				UnitCPUMin: 0.3, UnitCPUMax: 0.6, LinksMin: 1, LinksMax: 1, LinkPeak: link, LinkRampMiBs: 800, Hold: 0.05},
			Seed: 1, MaxJobs: 2,
		},
		{
			Name:  "heavy",
			About: "heavy-tailed compiles (log-normal, median 350 MiB, up to 2 GiB), two 1.5-3 GiB links per package colliding across packages, a 256 MiB file-backed working set read by every job",
			Graph: GraphSpec{Packages: 2, UnitsMin: 20, UnitsMax: 20, UnitPeak: compileHeavy, UnitRampMiBs: 400,
				UnitCPUMin: 0.3, UnitCPUMax: 0.6, LinksMin: 2, LinksMax: 2, LinkPeak: link, LinkRampMiBs: 800, Hold: 0.05,
				WorkingSetMiB: 256},
			Seed: 2, MaxJobs: 2,
		},
		{
			Name:  "hog",
			About: "as light; 5 s in, a program outside the builds grows to 3 GiB at 500 MiB/s and stays to the end",
			Graph: GraphSpec{Packages: 2, UnitsMin: 20, UnitsMax: 20, UnitPeak: compileUniform, UnitRampMiBs: 400,
				UnitCPUMin: 0.3, UnitCPUMax: 0.6, LinksMin: 1, LinksMax: 1, LinkPeak: link, LinkRampMiBs: 800, Hold: 0.05},
			Seed: 3, MaxJobs: 2,
			Hog: &Hog{After: 5 * time.Second, PeakMiB: 3072, RampMiBs: 500},
		},
		{
			Name:  "burst",
			About: "six packages of 6 compiles (300-500 MiB at 431 MiB/s), no links, all started at the same instant, every second package built by ninja",
			Graph: GraphSpec{Packages: 6, UnitsMin: 6, UnitsMax: 6, UnitPeak: Dist{Min: 300, Max: 500}, UnitRampMiBs: 431,
				UnitCPUMin: 0.3, UnitCPUMax: 0.6, LinksMin: 0, LinksMax: 0, Hold: 0.05, NinjaEvery: 2},
			Seed: 4, MaxJobs: 6,
		},
	}
	if !quick {
		return append(s, realScenarios()...)
	}
	for i := range s {
		g := &s[i].Graph
		g.UnitsMin, g.UnitsMax = 4, 4
		g.UnitCPUMin, g.UnitCPUMax = 0.05, 0.1
		g.UnitPeak = Dist{Min: 40, Max: 80}
		g.LinkPeak = Dist{Min: 150, Max: 200}
		g.WorkingSetMiB = min(g.WorkingSetMiB, 16)
		if g.Packages > 3 {
			g.Packages = 3
			s[i].MaxJobs = 3
		}
		if h := s[i].Hog; h != nil {
			s[i].Hog = &Hog{After: 500 * time.Millisecond, PeakMiB: 200, RampMiBs: 500}
		}
	}
	return s
}

// SelectScenarios keeps the scenarios named in the comma-separated list,
// where "real" stands for every real scenario and "standin" for every
// stand-in one; "" or "all" keeps them all.
func SelectScenarios(all []Scenario, list string) ([]Scenario, error) {
	if list == "" || list == "all" {
		return all, nil
	}
	var out []Scenario
	add := func(s Scenario) {
		if !slices.ContainsFunc(out, func(o Scenario) bool { return o.Name == s.Name }) {
			out = append(out, s)
		}
	}
	for _, name := range strings.Split(list, ",") {
		if name == "real" || name == "standin" {
			for _, s := range all {
				if (s.Real != nil) == (name == "real") {
					add(s)
				}
			}
			continue
		}
		i := slices.IndexFunc(all, func(s Scenario) bool { return s.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown scenario %q (--quick has only the stand-in scenarios)", name)
		}
		add(all[i])
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no scenario in %q (--quick has only the stand-in scenarios)", list)
	}
	return out, nil
}

// Kind is how a strategy limits the builds.
type Kind int

// The strategies people use today, and tokend.
const (
	Serial Kind = iota + 1 // one package at a time, -j1
	Static                 // -jN per build, MaxJobs builds at once
	Load                   // -jN -lL per build
	Shared                 // one FIFO of N tokens shared by every build
	Retry                  // -jN, a failed package is built again from scratch
	Tokend                 // tokenctl run under tokend's defaults
)

// Strategy is one way to run the builds of a scenario.
type Strategy struct {
	Name string
	Kind Kind
	N    int // -j, or tokens of the shared jobserver
	L    int // -l for Load
	// Warm gives tokend the history its cold run of the same scenario and
	// repetition left: a tokend that has built these packages before.
	Warm bool
	// JobEstimateMiB is tokend's --job-estimate; 0 leaves its default.
	JobEstimateMiB int
}

// ColdName is the strategy whose history a warm tokend starts from.
const ColdName = "tokend"

// MaxAttempts is how often Retry builds a package before giving up.
const MaxAttempts = 3

// Strategies is the sweep for a host of cpus CPUs.
func Strategies(cpus int, quick bool) []Strategy {
	s := []Strategy{{Name: "serial", Kind: Serial, N: 1}}
	sweep := []int{1, 2, 4, 8}
	if quick {
		sweep = []int{4}
	}
	for _, n := range sweep {
		s = append(s, Strategy{Name: fmt.Sprintf("static-j%d", n), Kind: Static, N: n})
	}
	s = append(s,
		Strategy{Name: fmt.Sprintf("load-j8-l%d", cpus), Kind: Load, N: 8, L: cpus},
		Strategy{Name: fmt.Sprintf("shared-%d", cpus), Kind: Shared, N: cpus},
		Strategy{Name: "retry-j4", Kind: Retry, N: 4},
		Strategy{Name: ColdName, Kind: Tokend},
		Strategy{Name: "tokend-warm", Kind: Tokend, Warm: true},
	)
	return s
}

// underestimate is tokend told to expect far smaller jobs than a build
// has: a wrong setting that admits too many, so that the run shows what
// the controller does in the thrash or the OOM kills that follow. It is
// run only when named.
var underestimate = Strategy{Name: "tokend-est128", Kind: Tokend, JobEstimateMiB: 128}

// SelectStrategies keeps the strategies named in the comma-separated list;
// "" or "all" keeps them all, which leaves out underestimate.
func SelectStrategies(all []Strategy, list string) ([]Strategy, error) {
	if list == "" || list == "all" {
		return all, nil
	}
	known := append(slices.Clip(all), underestimate)
	var out []Strategy
	for _, name := range strings.Split(list, ",") {
		i := slices.IndexFunc(known, func(s Strategy) bool { return s.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown strategy %q", name)
		}
		out = append(out, known[i])
	}
	for _, st := range out {
		if st.Warm && !slices.ContainsFunc(out, func(o Strategy) bool { return o.Name == ColdName }) {
			return nil, fmt.Errorf("strategy %s starts from the history of %s's run: add %s to --strategies", st.Name, ColdName, ColdName)
		}
	}
	return out, nil
}
