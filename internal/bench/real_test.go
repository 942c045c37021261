package bench

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func realOnly(t *testing.T) []Scenario {
	t.Helper()
	scs, err := SelectScenarios(Scenarios(false), "real")
	if err != nil {
		t.Fatal(err)
	}
	if len(scs) != 5 {
		t.Fatalf("%d real scenarios, want 5", len(scs))
	}
	return scs
}

// Every unit a real package compiles was measured, and every scenario is
// sized from those measurements: its packages' CPU time fits a run of
// about a minute on 2 cores, static -j2 per package could need more
// memory than the limit holds, and the two largest compiles (one per
// core) fit beside the hog.
func TestRealScenariosSized(t *testing.T) {
	for _, sc := range realOnly(t) {
		if sc.Real.Cargo != nil {
			continue // TestCargoScenarioSized
		}
		pkgs := sc.Packages("/src")
		if len(pkgs) != len(sc.Real.Packages) || sc.Timeout == 0 || sc.LimitMiB == 0 {
			t.Fatalf("%s: %d packages, timeout %v, limit %d", sc.Name, len(pkgs), sc.Timeout, sc.LimitMiB)
		}
		var cpu float64
		var j2 int    // the largest compiles running at once at -j2 per package
		var all []int // every compile's peak
		for i, p := range pkgs {
			cpu += p.CPUSeconds()
			var peaks []int
			for _, j := range p.Jobs {
				if j.PeakMiB == 0 || j.CPU == 0 {
					t.Errorf("%s %s %s: not measured (peak %d MiB, %g CPU-s)", sc.Name, p.Name, j.Name, j.PeakMiB, j.CPU)
				}
				if !j.Link {
					peaks = append(peaks, j.PeakMiB)
				}
			}
			for _, u := range sc.Real.Packages[i].Units {
				c, ok := nlohmannTUs[u]
				if !ok || (sc.Real.Packages[i].LTO && c.LTOCPU == 0) {
					t.Errorf("%s: unit %s has no measurement for this build", sc.Name, u)
				}
			}
			slices.Sort(peaks)
			slices.Reverse(peaks)
			j2 += peaks[0] + peaks[1]
			all = append(all, peaks...)
		}
		hog := 0
		if sc.Hog != nil {
			hog = sc.Hog.PeakMiB
		}
		if wall := cpu / 2; wall < 45 || wall > 90 {
			t.Errorf("%s: %.0f CPU-s of jobs, %.0f s on 2 cores: want a run of about a minute", sc.Name, cpu, wall)
		}
		slices.Sort(all)
		two := all[len(all)-1] + all[len(all)-2]
		if j2+hog <= sc.LimitMiB || two+hog >= sc.LimitMiB {
			t.Errorf("%s: two compiles need up to %d MiB, -j2 %d MiB (hog %d): want the %d MiB limit between", sc.Name, two+hog, j2+hog, hog, sc.LimitMiB)
		}
	}
}

func TestRealMakefile(t *testing.T) {
	var sc Scenario
	for _, s := range realOnly(t) {
		if s.Name == "gcc-lto-hog" {
			sc = s
		}
	}
	var b strings.Builder
	p := sc.Packages("/cache/nl")[0]
	if err := WriteMakefile(&b, p, Tools{}); err != nil {
		t.Fatal(err)
	}
	mk := b.String()
	for _, want := range []string{
		"\n\tg++ -O2 -flto -std=c++11 ",
		" -I/cache/nl/single_include ",
		" -I/cache/nl/" + includeDir + " ",
		" -c /cache/nl/tests/src/unit-regression1.cpp -o $@\n",
		// The LTO link runs its ltrans jobs under make's jobserver.
		"\n\t+g++ -O2 -flto=auto unit-regression1.o unit-bjdata.o unit-udt.o unit.o -o $@\n",
		"\nall: lto-a-tests\n",
	} {
		if !strings.Contains(mk, want) {
			t.Errorf("Makefile lacks %q:\n%s", want, mk)
		}
	}
}

// The underestimating tokend runs only when named: a run of every
// strategy measures tokend on its defaults.
func TestSelectUnderestimate(t *testing.T) {
	all := Strategies(2, false)
	if slices.ContainsFunc(all, func(s Strategy) bool { return s.JobEstimateMiB != 0 }) {
		t.Errorf("the sweep holds a tokend with a job estimate: %+v", all)
	}
	got, err := SelectStrategies(all, "static-j1,tokend-est128")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].Kind != Tokend || got[1].JobEstimateMiB != 128 || got[1].Warm {
		t.Errorf("static-j1,tokend-est128: %+v", got)
	}
	if _, err := SelectStrategies(all, "tokend-est64"); err == nil || !strings.Contains(err.Error(), `"tokend-est64"`) {
		t.Errorf("tokend-est64: %v, want an error naming it", err)
	}
}

func TestSelectRealAndStandIn(t *testing.T) {
	all := Scenarios(false)
	for list, want := range map[string]string{
		"real":            "gcc-pkgs,gcc-lto-hog,gcc-small,gcc-thrash,cargo-pkgs",
		"standin":         "light,heavy,hog,burst",
		"hog,real,hog":    "hog,gcc-pkgs,gcc-lto-hog,gcc-small,gcc-thrash,cargo-pkgs",
		"gcc-small,burst": "gcc-small,burst",
	} {
		got, err := SelectScenarios(all, list)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range got {
			names = append(names, s.Name)
		}
		if strings.Join(names, ",") != want {
			t.Errorf("%q: %v, want %s", list, names, want)
		}
	}
	// --quick never fetches or compiles real code.
	if _, err := SelectScenarios(Scenarios(true), "real"); err == nil || !strings.Contains(err.Error(), "--quick") {
		t.Errorf("real scenarios under --quick: %v, want an error naming --quick", err)
	}
}

// A warm tokend run always comes after the cold run of its scenario and
// repetition, whose history it starts from; every other run stays.
func TestPlanWarmAfterCold(t *testing.T) {
	scs := append(standIns(Scenarios(false)), realOnly(t)...)
	sts := Strategies(2, false)
	for seed := range uint64(20) {
		order := Plan(scs, sts, 3, seed)
		pos := map[string]int{}
		for i, c := range order {
			pos[c.Scenario.Name+"/"+c.Strategy.Name+"/"+string(rune('0'+c.Rep))] = i
		}
		if len(pos) != len(order) {
			t.Fatalf("seed %d: a run appears twice", seed)
		}
		for _, c := range order {
			key := c.Scenario.Name + "/%s/" + string(rune('0'+c.Rep))
			if c.Strategy.Warm && pos[strings.Replace(key, "%s", c.Strategy.Name, 1)] < pos[strings.Replace(key, "%s", ColdName, 1)] {
				t.Errorf("seed %d: %s rep %d runs before its cold run", seed, c.Scenario.Name, c.Rep)
			}
			if c.Scenario.Real != nil && c.Strategy.Name == "static-j8" {
				t.Errorf("seed %d: %s runs static-j8 above its MaxStaticJ", seed, c.Scenario.Name)
			}
			if c.Scenario.Real != nil && c.Scenario.Real.Cargo != nil && c.Strategy.Kind == Load {
				t.Errorf("seed %d: %s runs %s: cargo has no -l", seed, c.Scenario.Name, c.Strategy.Name)
			}
		}
		// Four stand-ins run every strategy; four g++ scenarios all but
		// static-j8; the cargo one all but static-j8 and the load limit.
		want := 3 * (4*len(sts) + 4*(len(sts)-1) + len(sts) - 2)
		if len(order) != want {
			t.Errorf("seed %d: %d runs, want %d", seed, len(order), want)
		}
	}
	if _, err := SelectStrategies(sts, "tokend-warm"); err == nil {
		t.Error("tokend-warm without tokend accepted: its history would come from nowhere")
	}
}

func TestTokendStateWarm(t *testing.T) {
	work := t.TempDir()
	sc := Scenario{Name: "s"}
	cold, warm := Strategy{Name: ColdName, Kind: Tokend}, Strategy{Name: "tokend-warm", Kind: Tokend, Warm: true}
	if _, _, err := tokendState(work, sc, warm, 1); err == nil || !strings.Contains(err.Error(), "left none") {
		t.Fatalf("warm state without a cold run: %v, want an error", err)
	}
	dir, names, err := tokendState(work, sc, cold, 1)
	if err != nil || names != nil {
		t.Fatal(names, err)
	}
	const hist = `{"version":2,"users":{"0":{"json-b":{"runs":1},"json-a":{"runs":1}}}}`
	if err := os.WriteFile(filepath.Join(dir, "history.json"), []byte(hist), 0o644); err != nil {
		t.Fatal(err)
	}
	wdir, names, err := tokendState(work, sc, warm, 1)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(wdir, "history.json")); err != nil || string(b) != hist {
		t.Errorf("warm history %q, %v: want the cold run's", b, err)
	}
	if strings.Join(names, ",") != "json-a,json-b" {
		t.Errorf("warm run starts from %v, want json-a,json-b", names)
	}
	// A second cold run of the same cell starts empty again.
	if dir, _, err = tokendState(work, sc, cold, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "history.json")); !os.IsNotExist(err) {
		t.Errorf("cold state kept a history: %v", err)
	}
}

// A source fetched once is not fetched again: a tree with its stamp is
// returned as it is, without apt (a context already cancelled would fail
// any command).
func TestFetchSourceCached(t *testing.T) {
	cache := t.TempDir()
	s := DebSource{Name: "nlohmann-json3", Version: "3.11.2-2", Suite: "bookworm"}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := FetchSource(ctx, cache, s, io.Discard); err == nil {
		t.Fatal("fetch with a cancelled context and no cache succeeded")
	}
	dir := filepath.Join(cache, "src", "nlohmann-json3-3.11.2")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, ok := CachedSource(cache, s); ok {
		t.Error("a tree without its stamp counts as fetched")
	}
	if err := os.WriteFile(filepath.Join(dir, readyStamp), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := FetchSource(ctx, cache, s, io.Discard)
	if err != nil || got != dir {
		t.Errorf("cached fetch: %q, %v; want %q", got, err, dir)
	}
}

func TestParseBusy(t *testing.T) {
	got, err := parseBusy("cpu  100 5 50 9000 300 7 8 2 0 0")
	if err != nil {
		t.Fatal(err)
	}
	// user+nice+system+irq+softirq+steal = 172 ticks; idle and iowait are not busy.
	if got != 1720*time.Millisecond {
		t.Errorf("busy %v, want 1.72s", got)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5 6 7 8", "cpu 1 2 x 4 5 6 7 8"} {
		if _, err := parseBusy(bad); err == nil {
			t.Errorf("parseBusy(%q) accepted", bad)
		}
	}
}

func TestIsJob(t *testing.T) {
	for comm, want := range map[string]bool{"cc1": true, "cc1plus": true, "ld": true, "lto1-wpa": true, "lto1-ltrans": true,
		"lto1-wpa-stream": true, "rustc": true, "cargo": false, "build-script-build": false, "make": false, "g++": false, "collect2": false, "as": false, "tokenctl": false} {
		if isJob(comm) != want {
			t.Errorf("isJob(%q) = %v", comm, !want)
		}
	}
}
