package bench

import (
	"strings"
	"testing"
)

var testTools = Tools{CC: "/b/cc1", LD: "/b/ld", WorkingSet: "/w/ws.bin"}

func render(t *testing.T, pkgs []Package) string {
	t.Helper()
	var b strings.Builder
	for _, p := range pkgs {
		if err := WriteMakefile(&b, p, testTools); err != nil {
			t.Fatal(err)
		}
		if err := WriteNinja(&b, p, testTools); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// standIns are the scenarios of generated packages.
func standIns(all []Scenario) []Scenario {
	var out []Scenario
	for _, sc := range all {
		if sc.Real == nil {
			out = append(out, sc)
		}
	}
	return out
}

func TestGenerateDeterministic(t *testing.T) {
	for _, sc := range standIns(Scenarios(false)) {
		a, b := render(t, Generate(sc.Graph, sc.Seed)), render(t, Generate(sc.Graph, sc.Seed))
		if a != b {
			t.Errorf("%s: two generations from seed %d differ", sc.Name, sc.Seed)
		}
		if c := render(t, Generate(sc.Graph, sc.Seed+1)); c == a {
			t.Errorf("%s: seeds %d and %d gave the same graph", sc.Name, sc.Seed, sc.Seed+1)
		}
	}
}

func TestGenerateShape(t *testing.T) {
	for _, sc := range standIns(Scenarios(false)) {
		g := sc.Graph
		pkgs := Generate(g, sc.Seed)
		if len(pkgs) != g.Packages {
			t.Fatalf("%s: %d packages, want %d", sc.Name, len(pkgs), g.Packages)
		}
		for _, p := range pkgs {
			var units, links int
			for _, j := range p.Jobs {
				d := g.UnitPeak
				if j.Link {
					links++
					d = g.LinkPeak
				} else {
					units++
					if j.CPU < g.UnitCPUMin || j.CPU > g.UnitCPUMax {
						t.Errorf("%s %s %s: cpu %g outside [%g, %g]", sc.Name, p.Name, j.Name, j.CPU, g.UnitCPUMin, g.UnitCPUMax)
					}
				}
				if j.PeakMiB < d.Min || j.PeakMiB > d.Max {
					t.Errorf("%s %s %s: peak %d outside [%d, %d]", sc.Name, p.Name, j.Name, j.PeakMiB, d.Min, d.Max)
				}
			}
			if units < g.UnitsMin || units > g.UnitsMax || links < g.LinksMin || links > g.LinksMax {
				t.Errorf("%s %s: %d units and %d links, want %d-%d and %d-%d", sc.Name, p.Name, units, links, g.UnitsMin, g.UnitsMax, g.LinksMin, g.LinksMax)
			}
		}
	}
}

// The heavy tail is there: the median compile is near the spec's median
// and some compiles are several times bigger.
func TestHeavyTail(t *testing.T) {
	sc, err := SelectScenarios(Scenarios(false), "heavy")
	if err != nil {
		t.Fatal(err)
	}
	var peaks []float64
	for _, p := range Generate(sc[0].Graph, sc[0].Seed) {
		for _, j := range p.Jobs {
			if !j.Link {
				peaks = append(peaks, float64(j.PeakMiB))
			}
		}
	}
	med, top := Median(peaks), 0.0
	for _, p := range peaks {
		top = max(top, p)
	}
	if med < 250 || med > 450 {
		t.Errorf("median compile peak %g MiB, want about 350", med)
	}
	if top < 2*med {
		t.Errorf("largest compile %g MiB is not a tail over the median %g", top, med)
	}
}

func TestMakefileAndNinja(t *testing.T) {
	p := Package{Name: "p", Jobs: []Job{
		{Name: "u001.o", PeakMiB: 300, RampMiB: 400, CPU: 0.5, Hold: 0.05},
		{Name: "u002.o", PeakMiB: 200, RampMiB: 400, CPU: 0.4, Hold: 0.05},
		{Name: "link1", Link: true, PeakMiB: 2000, RampMiB: 800, Hold: 0.05, Deps: []string{"u001.o", "u002.o"}},
	}}
	var mk, nj strings.Builder
	if err := WriteMakefile(&mk, p, Tools{CC: "/b/cc1", LD: "/b/ld"}); err != nil {
		t.Fatal(err)
	}
	if err := WriteNinja(&nj, p, Tools{CC: "/b/cc1", LD: "/b/ld"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"all: link1\n",
		"u001.o:\n\t/b/cc1 --peak 300 --ramp 400 --cpu 0.75 --hold 0.05 -o $@\n",
		"link1: u001.o u002.o\n\t/b/ld --peak 2000 --ramp 800 --cpu 2.5 --hold 0.05 -o $@\n",
	} {
		if !strings.Contains(mk.String(), want) {
			t.Errorf("Makefile lacks %q:\n%s", want, mk.String())
		}
	}
	for _, want := range []string{
		"rule job\n  command = $cmd -o $out\n",
		"build link1: job u001.o u002.o\n  cmd = /b/ld --peak 2000",
		"default link1\n",
	} {
		if !strings.Contains(nj.String(), want) {
			t.Errorf("build.ninja lacks %q:\n%s", want, nj.String())
		}
	}
	// 0.75 s to ramp u001, 0.5 s for u002, 2.5 s for the link.
	if got := p.CPUSeconds(); got < 3.749 || got > 3.751 {
		t.Errorf("CPUSeconds = %g, want 3.75", got)
	}
}
