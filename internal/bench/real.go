package bench

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// nlohmannJSON is the header-heavy C++ code base of the real scenarios:
// nlohmann-json's unit tests, each translation unit the whole library's
// templates instantiated over and over.
var nlohmannJSON = DebSource{Name: "nlohmann-json3", Version: "3.11.2-2", Suite: "bookworm"}

// tuCost is one translation unit's peak memory and CPU time compiled alone
// by g++ 12.2 on the 2-core benchmark machine (cc1plus's max RSS and user
// time from /usr/bin/time; load 1 to 2 from other work): -O2 for a plain
// object, -O2 -flto for an LTO object (no code generation: that moves to
// the link).
type tuCost struct {
	PeakMiB, CPU       int
	LTOPeakMiB, LTOCPU int // 0: not measured, not used in an LTO package
}

// nlohmannTUs are the measured units of tests/src; the scenarios pick
// among them by size.
var nlohmannTUs = map[string]tuCost{
	"unit.cpp":                 {210, 5, 168, 2}, // doctest's main, in every test binary
	"unit-deserialization.cpp": {765, 46, 592, 14},
	"unit-bjdata.cpp":          {671, 30, 465, 10},
	"unit-conversions.cpp":     {668, 27, 489, 10},
	"unit-regression1.cpp":     {631, 31, 503, 12},
	"unit-regression2.cpp":     {605, 31, 476, 10},
	"unit-ubjson.cpp":          {554, 35, 0, 0},
	"unit-element_access2.cpp": {546, 37, 389, 8},
	"unit-cbor.cpp":            {540, 32, 418, 9},
	"unit-class_parser.cpp":    {522, 28, 365, 7},
	"unit-constructor1.cpp":    {507, 21, 0, 0},
	"unit-msgpack.cpp":         {473, 27, 375, 7},
	"unit-udt.cpp":             {415, 11, 365, 7},
	"unit-modifiers.cpp":       {394, 18, 0, 0},
	"unit-json_patch.cpp":      {382, 14, 0, 0},
	"unit-iterators2.cpp":      {358, 9, 0, 0},
	"unit-udt_macro.cpp":       {321, 11, 0, 0},
	"unit-algorithms.cpp":      {321, 7, 0, 0},
	"unit-unicode1.cpp":        {320, 8, 0, 0},
	"unit-testsuites.cpp":      {319, 10, 0, 0},
	"unit-items.cpp":           {317, 8, 0, 0},
	"unit-comparison.cpp":      {288, 5, 0, 0},
}

// The LTO link of the units measured here: 11 objects (96 CPU-s of -flto
// compiles) linked in 125 CPU-seconds at a 567 MiB peak of the whole
// link's cgroup; 5 objects (41 CPU-s) in 60 CPU-seconds at 498 MiB. The
// link does the code generation its compiles skipped.
// A plain link is small: 6 of the -O2 objects linked in 0.15 s at 31 MiB.
const (
	plainLinkPeakMiB = 31
	plainLinkCPU     = 0.15
	ltoLinkPeakMiB   = 550
	ltoLinkCPUPer    = 1.4 // CPU-seconds of link per CPU-second of -flto compile
)

// RealPackage is one package of real code: translation units of the
// scenario's source, compiled by g++, linked into one program; or, in a
// cargo build, one build of the whole source tree.
type RealPackage struct {
	Name  string
	Units []string // files under tests/src; none in a cargo build
	// LTO compiles with -flto and links with -flto=auto: the link does the
	// code generation, in parallel ltrans jobs that take the jobserver's
	// tokens where GCC can read them, one per CPU where it cannot.
	LTO bool
}

// RealBuild is the real code a scenario builds.
type RealBuild struct {
	Source   DebSource
	Packages []RealPackage
	// Cargo, if set, builds every package with cargo from Source; Debs
	// are the Debian packages of its crates.
	Cargo *CargoBuild
	Debs  []string
}

// includeDir holds the test_data.hpp the tests include (CMake writes it);
// the tests are only compiled here, never run, so it names no data.
const includeDir = "tokend-bench-include"

// cxxFlags are those nlohmann-json's tests/CMakeLists.txt gives every unit
// test with g++, on the single-header library.
func cxxFlags(src string) string {
	inc := []string{"tests/thirdparty/doctest", "tests/thirdparty/fifo_map", includeDir, "single_include"}
	var b strings.Builder
	b.WriteString("-std=c++11 -DDOCTEST_CONFIG_SUPER_FAST_ASSERTS -DJSON_TEST_KEEP_MACROS -DJSON_TEST_USING_MULTIPLE_HEADERS=0 -Wno-deprecated -Wno-float-equal -Wno-deprecated-declarations")
	for _, d := range inc {
		b.WriteString(" -I" + filepath.Join(src, d))
	}
	return b.String()
}

// realPackages turns b into build graphs whose commands compile the tree
// at src; each job carries its measured peak and CPU time.
func realPackages(b *RealBuild, src string) []Package {
	if b.Cargo != nil {
		return cargoPackages(b, src)
	}
	flags := cxxFlags(src)
	var out []Package
	for _, rp := range b.Packages {
		p := Package{Name: rp.Name}
		opt := "-O2"
		if rp.LTO {
			opt = "-O2 -flto"
		}
		var objs []string
		var compileCPU float64
		for _, u := range rp.Units {
			c := nlohmannTUs[u]
			peak, cpu := c.PeakMiB, c.CPU
			if rp.LTO {
				peak, cpu = c.LTOPeakMiB, c.LTOCPU
			}
			obj := strings.TrimSuffix(u, ".cpp") + ".o"
			objs = append(objs, obj)
			compileCPU += float64(cpu)
			p.Jobs = append(p.Jobs, Job{
				Name: obj, PeakMiB: peak, CPU: float64(cpu),
				Cmd: fmt.Sprintf("g++ %s %s -c %s", opt, flags, filepath.Join(src, "tests", "src", u)),
			})
		}
		link := Job{Name: strings.TrimPrefix(rp.Name, "json-") + "-tests", Link: true, Deps: objs,
			PeakMiB: plainLinkPeakMiB, CPU: plainLinkCPU, Cmd: "g++ -O2 " + strings.Join(objs, " ")}
		if rp.LTO {
			link.PeakMiB, link.CPU = ltoLinkPeakMiB, round2(ltoLinkCPUPer*compileCPU)
			link.Cmd = "g++ -O2 -flto=auto " + strings.Join(objs, " ")
			link.Jobserver = true
		}
		p.Jobs = append(p.Jobs, link)
		out = append(out, p)
	}
	return out
}

// realScenarios are builds of real code with g++, sized so that one run of
// a good strategy takes about a minute on 2 cores. Static -jN runs that
// thrash for want of memory make no progress, so every one has a timeout.
func realScenarios() []Scenario {
	return []Scenario{
		{
			Name: "gcc-pkgs",
			About: "three packages of nlohmann-json unit tests (g++ -O2, 0.3 to 0.77 GiB a unit) at once in 2 GiB: " +
				"at -j2 each, six compiles reached 2.45 GiB in a 2.5 GiB limit, so here they thrash or are OOM-killed; two at a time peaked at 1.4 GiB",
			Real: &RealBuild{Source: nlohmannJSON, Packages: []RealPackage{
				{Name: "json-a", Units: []string{"unit-deserialization.cpp", "unit-udt.cpp", "unit.cpp"}},
				{Name: "json-b", Units: []string{"unit-bjdata.cpp", "unit-json_patch.cpp", "unit.cpp"}},
				{Name: "json-c", Units: []string{"unit-conversions.cpp", "unit-modifiers.cpp", "unit.cpp"}},
			}},
			MaxJobs: 3, LimitMiB: 2048, MaxStaticJ: 4, Timeout: 300 * time.Second,
		},
		{
			Name: "gcc-lto-hog",
			About: "two LTO packages of nlohmann-json unit tests (g++ -O2 -flto, then -flto=auto links of about 0.55 GiB and 40 CPU-s each) in 3.5 GiB; " +
				"10 s in, a program outside the builds grows to 2 GiB at 500 MiB/s and stays to the end",
			Real: &RealBuild{Source: nlohmannJSON, Packages: []RealPackage{
				{Name: "json-lto-a", LTO: true, Units: []string{"unit-regression1.cpp", "unit-bjdata.cpp", "unit-udt.cpp", "unit.cpp"}},
				{Name: "json-lto-b", LTO: true, Units: []string{"unit-conversions.cpp", "unit-cbor.cpp", "unit-class_parser.cpp", "unit.cpp"}},
			}},
			MaxJobs: 2, LimitMiB: 3584, MaxStaticJ: 4, Timeout: 300 * time.Second,
			Hog: &Hog{After: 10 * time.Second, PeakMiB: 2048, RampMiBs: 500},
		},
		{
			Name: "gcc-small",
			About: "a 1 GiB machine: two packages of small nlohmann-json units (g++ -O2, 0.29 to 0.42 GiB a unit), " +
				"tokend and everything else inside 1 GiB; two compiles fit, four do not",
			Real: &RealBuild{Source: nlohmannJSON, Packages: []RealPackage{
				{Name: "json-small-a", Units: []string{"unit-algorithms.cpp", "unit-iterators2.cpp", "unit-unicode1.cpp", "unit-items.cpp", "unit-comparison.cpp", "unit.cpp"}},
				{Name: "json-small-b", Units: []string{"unit-testsuites.cpp", "unit-udt_macro.cpp", "unit-json_patch.cpp", "unit-udt.cpp", "unit-modifiers.cpp", "unit.cpp"}},
			}},
			MaxJobs: 2, LimitMiB: 1024, MaxStaticJ: 4, Timeout: 300 * time.Second, TokendInside: true,
		},
		{
			Name: "gcc-thrash",
			About: "two packages of large nlohmann-json units (g++ -O2, 0.51 to 0.66 GiB a unit) in 1.5 GiB, the page cache emptied before each run " +
				"so that the compiler's text and the headers are charged to the run's group: two compiles at once peaked at 1.2 GiB; " +
				"four (-j2 each) thrash: in 1792 MiB they sat at the limit at 45% memory stall for a minute with no kill and no unit done",
			Real: &RealBuild{Source: nlohmannJSON, Packages: []RealPackage{
				{Name: "json-thrash-a", Units: []string{"unit-conversions.cpp", "unit-regression1.cpp", "unit.cpp"}},
				{Name: "json-thrash-b", Units: []string{"unit-bjdata.cpp", "unit-class_parser.cpp", "unit.cpp"}},
			}},
			MaxJobs: 2, LimitMiB: 1536, MaxStaticJ: 4, Timeout: 150 * time.Second, DropCaches: true,
		},
		{
			Name: "cargo-pkgs",
			About: "two release builds of ripgrep 13 at once (cargo, 92 rustc runs each, 0.15 to 0.3 GiB a rustc), " +
				"each in its own target directory, in 768 MiB: one build at -j2 peaked at 483 MiB with its page cache; " +
				"-j2 each runs four rustc, the same large crates at the same time (about 1.1 GiB of RSS less their shared text); two rustc fit",
			Real: &RealBuild{Source: ripgrep, Cargo: &ripgrepBuild, Debs: ripgrepCrates, Packages: []RealPackage{
				{Name: "ripgrep-a"}, {Name: "ripgrep-b"},
			}},
			MaxJobs: 2, LimitMiB: 768, MaxStaticJ: 4, Timeout: 600 * time.Second,
		},
	}
}
