package bench

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strings"
)

// Dist is a distribution of job peaks in MiB: uniform in [Min, Max] when
// Sigma is 0, else log-normal with median Median and shape Sigma, clipped to
// [Min, Max] (a heavy tail).
type Dist struct {
	Min, Max, Median int
	Sigma            float64
}

func (d Dist) draw(r *rand.Rand) int {
	if d.Sigma == 0 {
		return d.Min + r.IntN(d.Max-d.Min+1)
	}
	v := int(float64(d.Median) * math.Exp(d.Sigma*r.NormFloat64()))
	return min(max(v, d.Min), d.Max)
}

// GraphSpec describes the packages of one scenario; Generate turns it into
// concrete jobs from a seed.
type GraphSpec struct {
	Packages           int
	UnitsMin, UnitsMax int
	UnitPeak           Dist
	UnitRampMiBs       float64
	UnitCPUMin         float64 // CPU-seconds, uniform in [UnitCPUMin, UnitCPUMax]
	UnitCPUMax         float64
	LinksMin, LinksMax int
	LinkPeak           Dist
	LinkRampMiBs       float64
	Hold               float64 // wall seconds each job holds its peak
	// NinjaEvery builds every NinjaEvery-th package with ninja instead of
	// make; 0 means make only.
	NinjaEvery int
	// WorkingSetMiB, if not 0, gives every job a shared file-backed
	// working set of this size.
	WorkingSetMiB int
}

// Job is one compile or link: the stand-in compiler's shape, or, for real
// code, its command and its measured peak and CPU time.
type Job struct {
	Name    string
	Link    bool
	PeakMiB int
	RampMiB float64
	CPU     float64
	Hold    float64
	Deps    []string
	// Cmd is a real job's command, less its output; "" runs the stand-in.
	Cmd string `json:",omitempty"`
	// Jobserver marks a job that runs jobs of its own under the build's
	// jobserver (make's + recipe): a link with -flto=auto.
	Jobserver bool `json:",omitempty"`
}

// Package is one build: its own Makefile or build.ninja, built by one make
// or ninja, like one Nix derivation; or a Rust package built by cargo.
type Package struct {
	Name  string
	Ninja bool
	Jobs  []Job
	// Cargo, if set, is built by cargo and has no Jobs: cargo runs one
	// rustc per crate.
	Cargo *CargoBuild `json:",omitempty"`
}

// Generate draws the packages of spec from seed; the same spec and seed
// always give the same packages.
func Generate(spec GraphSpec, seed uint64) []Package {
	r := rand.New(rand.NewPCG(seed, 0x746f6b656e64))
	pkgs := make([]Package, spec.Packages)
	for p := range pkgs {
		pkg := Package{
			Name:  fmt.Sprintf("pkg%02d", p+1),
			Ninja: spec.NinjaEvery > 0 && (p+1)%spec.NinjaEvery == 0,
		}
		n := spec.UnitsMin + r.IntN(spec.UnitsMax-spec.UnitsMin+1)
		var units []string
		for u := range n {
			j := Job{
				Name:    fmt.Sprintf("u%03d.o", u+1),
				PeakMiB: spec.UnitPeak.draw(r),
				RampMiB: spec.UnitRampMiBs,
				CPU:     round2(spec.UnitCPUMin + r.Float64()*(spec.UnitCPUMax-spec.UnitCPUMin)),
				Hold:    spec.Hold,
			}
			units = append(units, j.Name)
			pkg.Jobs = append(pkg.Jobs, j)
		}
		links := spec.LinksMin + r.IntN(spec.LinksMax-spec.LinksMin+1)
		for l := range links {
			// The first of two links (a library) needs only the first
			// half of the units, so it can overlap compiles.
			deps := units
			if links > 1 && l == 0 {
				deps = units[:len(units)/2]
			}
			pkg.Jobs = append(pkg.Jobs, Job{
				Name:    fmt.Sprintf("link%d", l+1),
				Link:    true,
				PeakMiB: spec.LinkPeak.draw(r),
				RampMiB: spec.LinkRampMiBs,
				Hold:    spec.Hold,
				Deps:    deps,
			})
		}
		pkgs[p] = pkg
	}
	return pkgs
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

// Tools are the stand-in compiler's paths in the generated build files: the
// same binary under the names cc1 and ld, so that the sampler can tell
// running jobs by their names.
type Tools struct {
	CC, LD     string
	WorkingSet string // file-backed working set; "" for none
}

func (t Tools) command(j Job) string {
	if j.Cmd != "" {
		return j.Cmd
	}
	exe := t.CC
	if j.Link {
		exe = t.LD
	}
	s := fmt.Sprintf("%s --peak %d --ramp %g --cpu %g --hold %g", exe, j.PeakMiB, j.RampMiB, burnCPU(j.CPU, j.PeakMiB, j.RampMiB), j.Hold)
	if t.WorkingSet != "" {
		s += " --file " + t.WorkingSet
	}
	return s
}

// burnCPU is the -cpu to give fakecc for a job that burns at least cpu
// CPU-seconds and grows at ramp MiB per CPU-second to peak: it grows only
// while it burns, so it burns at least until it reaches its peak.
func burnCPU(cpu float64, peakMiB int, rampMiBs float64) float64 {
	if rampMiBs <= 0 {
		return cpu
	}
	return max(cpu, float64(peakMiB)/rampMiBs)
}

// targets are the package's links, or its compiles if it links nothing.
func (p Package) targets() []string {
	var links, units []string
	for _, j := range p.Jobs {
		if j.Link {
			links = append(links, j.Name)
		} else {
			units = append(units, j.Name)
		}
	}
	if len(links) > 0 {
		return links
	}
	return units
}

// WriteMakefile writes p as a Makefile for GNU make.
func WriteMakefile(w io.Writer, p Package, t Tools) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: generated by tokend-bench\n.PHONY: all\nall: %s\n", p.Name, strings.Join(p.targets(), " "))
	for _, j := range p.Jobs {
		fmt.Fprintf(&b, "\n%s:", j.Name)
		for _, d := range j.Deps {
			b.WriteString(" " + d)
		}
		plus := ""
		if j.Jobserver {
			plus = "+"
		}
		fmt.Fprintf(&b, "\n\t%s%s -o $@\n", plus, t.command(j))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteNinja writes p as a build.ninja.
func WriteNinja(w io.Writer, p Package, t Tools) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: generated by tokend-bench\nrule job\n  command = $cmd -o $out\n", p.Name)
	for _, j := range p.Jobs {
		fmt.Fprintf(&b, "\nbuild %s: job", j.Name)
		for _, d := range j.Deps {
			b.WriteString(" " + d)
		}
		fmt.Fprintf(&b, "\n  cmd = %s\n", t.command(j))
	}
	fmt.Fprintf(&b, "\ndefault %s\n", strings.Join(p.targets(), " "))
	_, err := io.WriteString(w, b.String())
	return err
}

// CPUSeconds is the least CPU time p's jobs burn: each at least its --cpu
// and at least the time to ramp to its peak; a real job's or a cargo
// build's, as measured.
func (p Package) CPUSeconds() float64 {
	if p.Cargo != nil {
		return p.Cargo.CPU
	}
	var s float64
	for _, j := range p.Jobs {
		s += burnCPU(j.CPU, j.PeakMiB, j.RampMiB)
	}
	return s
}
