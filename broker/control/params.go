package control

import (
	"fmt"
	"math"
	"time"

	"github.com/tokend/tokend/api"
)

// Params tune the controller. A zero field means its default; README's
// "Memory control" section gives the reasoning behind each.
type Params struct {
	// Reserve is headroom never handed out, for what estimates miss and
	// for growth between two ticks. Zero means DefaultReserve, but no
	// more than an eighth of the domain.
	Reserve uint64
	// Tick is how often the controller samples memory and decides.
	Tick time.Duration
	// GrowthInterval is the least time between two budget increases,
	// between two thaws, and after pressure before the budget grows again.
	GrowthInterval time.Duration
	// CPUMultiple caps the budget at this many jobs per usable CPU.
	CPUMultiple float64
	// JobEstimate is the expected peak of a compile nothing is known about
	// yet; a link is expected at twice that.
	JobEstimate uint64
}

// The defaults.
const (
	// DefaultReserve covers about one tick of growth of a handful of jobs
	// at the ramp rates measured here (cc1plus up to 431 MiB/s, the Go
	// linker 861 MiB/s) plus what estimates miss.
	DefaultReserve = 512 << 20
	// DefaultTick: a compile ramping at 431 MiB/s grows about 100 MiB in
	// 250 ms, well inside the reserve; Buck2 polls every 300 ms. One tick
	// reads a few small files and the lease processes' status.
	DefaultTick = 250 * time.Millisecond
	// DefaultGrowthInterval gives a job admitted by the last increase time
	// to show its size (compiles reach most of their peak in 1 to 3 s) and
	// covers one 2 s PSI window; Buck2 wakes one action at most every 3 s.
	DefaultGrowthInterval = 3 * time.Second
	// DefaultCPUMultiple: the budget counts the implicit slots of builds
	// whose make sits waiting for a dependency, and jobs blocked on I/O, so
	// one job per CPU leaves CPUs idle when several builds share a host;
	// much more only adds memory and context switches.
	DefaultCPUMultiple = 1.5
	// DefaultJobEstimate is the expected peak of an unknown compile: above
	// g++ -O2 cc1plus measured here (0.64 to 0.72 GiB), near Gentoo's
	// advice of one job per 2 GB counting its link, and learned away
	// after the first jobs finish.
	DefaultJobEstimate = 1 << 30
)

// The bounds of Params, which New and Reconfigure check, and tokend's
// configuration before them, so that the two never disagree.
const (
	MinTick, MaxTick  = 10 * time.Millisecond, 10 * time.Second
	MaxGrowthInterval = time.Hour
	MaxCPUMultiple    = 64
	// MinJobEstimate: no job is expected below the size at which a
	// process counts as a job at all.
	MinJobEstimate = heavyFloor
)

// Fixed behaviour, documented with Params in README.
const (
	// pressureWindow is what stall rates are measured over: the shortest
	// window a PSI trigger accepts without CAP_SYS_RESOURCE, and about
	// the refresh period of the kernel's own averages.
	pressureWindow = 2 * time.Second
	// pressureThreshold: some-stall above 10% of the window is pressure,
	// as in Buck2's resource control.
	pressureThreshold = 0.10
	// triggerStall asks the kernel for an early wake-up at half the
	// threshold, so a long tick still reacts within one window.
	triggerStall = 100 * time.Millisecond
	// decreaseNum/decreaseDen is the multiplicative decrease on sustained
	// pressure, at most once per window.
	decreaseNum, decreaseDen = 3, 4
	// capRelaxDen: the soft cap relaxes by 1/capRelaxDen of the domain per
	// growth interval (2% per 3 s by default; Senpai loosens 1% per 6 s).
	capRelaxDen = 50
)

// featureScale is how much larger than the default a build's first
// estimates are when it requires a system feature: compile, then link.
// nixpkgs asks for big-parallel on the packages Hydra sends to its largest
// builders (chromium, firefox, webkitgtk, llvm, gcc, the kernel): their
// translation units are among the largest (0.5 to 1.5 GiB for LLVM's,
// more for unity builds) and their links take several GiB, LTO more. A
// big-memory feature, set by derivations that say they need a lot of
// memory, gets twice that again. Starting them at the generic estimate
// would admit too many of their first jobs at once; starting higher costs
// only concurrency until their first jobs finish and show their size.
var featureScale = map[string][2]uint64{
	"big-parallel": {2, 4},
	"big-memory":   {4, 8},
}

// firstEstimates are the estimates per class of a lease nothing is known
// about yet, and where they come from: the default, a compile at
// JobEstimate and a link at twice that, or, for a build that requires
// big-parallel or big-memory, the largest scale of those it requires.
func (p Params) firstEstimates(features []string) (seed [3]uint64, source string) {
	seed[classCompile], seed[classLink] = p.JobEstimate, 2*p.JobEstimate
	source = api.EstimateDefault
	for _, f := range features {
		if s, ok := featureScale[f]; ok {
			seed[classCompile] = max(seed[classCompile], s[0]*p.JobEstimate)
			seed[classLink] = max(seed[classLink], s[1]*p.JobEstimate)
			source = api.EstimateFeatures
		}
	}
	return seed, source
}

// withDefaults fills zero fields with the defaults, except Reserve, whose
// default depends on the domain's size.
func (p Params) withDefaults() Params {
	if p.Tick == 0 {
		p.Tick = DefaultTick
	}
	if p.GrowthInterval == 0 {
		p.GrowthInterval = DefaultGrowthInterval
	}
	if p.CPUMultiple == 0 {
		p.CPUMultiple = DefaultCPUMultiple
	}
	if p.JobEstimate == 0 {
		p.JobEstimate = DefaultJobEstimate
	}
	return p
}

// validate checks params that already have their defaults.
func (p Params) validate() error {
	switch {
	case p.Tick < MinTick || p.Tick > MaxTick:
		return fmt.Errorf("controller tick %v: want %v to %v", p.Tick, MinTick, MaxTick)
	case p.GrowthInterval < 0 || p.GrowthInterval > MaxGrowthInterval:
		return fmt.Errorf("growth interval %v: want 0 to %v", p.GrowthInterval, MaxGrowthInterval)
	case !(p.CPUMultiple > 0 && p.CPUMultiple <= MaxCPUMultiple):
		return fmt.Errorf("cpu multiple %v: want more than 0, up to %d", p.CPUMultiple, MaxCPUMultiple)
	case p.JobEstimate < MinJobEstimate:
		return fmt.Errorf("job estimate %d bytes: want at least %d MiB", p.JobEstimate, MinJobEstimate>>20)
	}
	return nil
}

// reserve is the reserve for a domain of the given size: the configured
// one, else the default but at most an eighth of the domain, so that a
// small cgroup is not mostly reserve.
func (p Params) reserve(limit uint64) uint64 {
	if p.Reserve != 0 {
		return p.Reserve
	}
	return min(DefaultReserve, limit/8)
}

// cpuCap is the most jobs the CPUs justify.
func (p Params) cpuCap(cpus int) int {
	return max(1, int(math.Ceil(p.CPUMultiple*float64(cpus))))
}
