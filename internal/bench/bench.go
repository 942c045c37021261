// Package bench is tokend-bench: it builds generated packages with a
// stand-in compiler (internal/fakecc) under the ways people limit builds
// today and under tokend, inside a cgroup memory limit, and reports
// makespan, OOM kills, wasted work, memory and pressure, with plots.
package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Config is one invocation of the benchmark.
type Config struct {
	Quick     bool
	Out       string
	Scenarios string // comma-separated names, "" for all
	// Strategies is a comma-separated list of strategy names, "" for all.
	Strategies string
	Reps       int
	Seed       uint64 // run order
	LimitMiB   int
	Sample     time.Duration
	BinDir     string // prebuilt tokend, tokenctl and fakecc; "" builds them
	Make       string // "" finds GNU make >= 4.4
	Ninja      string // "" finds ninja >= 1.13
	Command    string // the command line, for the report
	Log        io.Writer
}

// Main runs the benchmark and writes its results to c.Out.
func Main(ctx context.Context, c Config) (err error) {
	scenarios, err := SelectScenarios(Scenarios(c.Quick), c.Scenarios)
	if err != nil {
		return err
	}
	mounts, err := FindMounts()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.Out, 0o755); err != nil {
		return fmt.Errorf("output dir: %w", err)
	}
	work, err := os.MkdirTemp("", "tokend-bench-")
	if err != nil {
		return fmt.Errorf("scratch dir: %w", err)
	}
	defer func() { err = errors.Join(err, os.RemoveAll(work)) }()
	bin, err := prepare(ctx, c, work)
	if err != nil {
		return err
	}
	cpus := runtime.NumCPU()
	strategies, err := SelectStrategies(Strategies(cpus, c.Quick), c.Strategies)
	if err != nil {
		return err
	}
	if c.Quick && (c.Strategies == "" || c.Strategies == "all") {
		// The smoke test keeps to cold starts, to stay short; a warm run
		// can still be asked for by name.
		strategies = slices.DeleteFunc(strategies, func(st Strategy) bool { return st.Warm })
	}
	if slices.ContainsFunc(scenarios, func(sc Scenario) bool { return sc.Real != nil && sc.Real.Cargo != nil }) {
		if bin.Cargo, err = exec.LookPath("cargo"); err != nil {
			return fmt.Errorf("the cargo scenarios need cargo and rustc >= 1.69 (for the FIFO jobserver) on PATH: %w", err)
		}
	}
	sources, err := fetchSources(ctx, scenarios, bin.Cargo, c.Log)
	if err != nil {
		return err
	}
	logs := filepath.Join(c.Out, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return fmt.Errorf("log dir: %w", err)
	}
	env := Env{Mounts: mounts, Bin: bin, Work: work, LimitMiB: c.LimitMiB, CPUs: cpus, Sample: c.Sample, Sources: sources, Logs: logs,
		Warm: slices.ContainsFunc(strategies, func(st Strategy) bool { return st.Warm })}
	order := Plan(scenarios, strategies, c.Reps, c.Seed)

	meta := Meta{Command: c.Command, Started: time.Now().UTC(), LoadStart: loadavg(), CPUs: cpus, Quick: c.Quick,
		LimitMiB: c.LimitMiB, Reps: c.Reps, Runs: len(order), Tokend: bin.TokendDescription, Make: version(bin.Make), Ninja: version(bin.Ninja)}
	if bin.Cargo != "" {
		meta.Cargo = version(bin.Cargo)
	}
	for _, st := range strategies {
		meta.Strategies = append(meta.Strategies, st.Name)
	}
	for _, sc := range scenarios {
		info := ScenarioInfo{Name: sc.Name, About: sc.About, MaxJobs: sc.MaxJobs, LimitMiB: sc.limit(c.LimitMiB),
			Timeout: sc.Timeout.Seconds(), TokendInside: sc.TokendInside}
		if sc.Real != nil {
			info.Source = sc.Real.Source.Name + " " + sc.Real.Source.Version
			info.Packages = sc.Packages(sources[sc.Real.Source.Name])
		} else {
			info.Packages = sc.Packages("")
		}
		meta.Scenarios = append(meta.Scenarios, info)
	}
	fmt.Fprintf(c.Log, "tokend-bench: %d runs (%d scenarios x %d strategies x %d reps), limit %d MiB, load %s; tokend: %s\n",
		len(order), len(scenarios), len(strategies), c.Reps, c.LimitMiB, meta.LoadStart, bin.TokendDescription)
	var results []Result
	for i, cl := range order {
		res, err := Run(ctx, env, cl.Scenario, cl.Strategy, cl.Rep, i+1)
		if err != nil {
			err = fmt.Errorf("run %d (%s, %s, rep %d): %w", i+1, cl.Scenario.Name, cl.Strategy.Name, cl.Rep, err)
			if ctx.Err() == nil || len(results) == 0 {
				return err
			}
			// Interrupted: report what was measured, marked as such.
			meta.Finished, meta.LoadEnd = time.Now().UTC(), loadavg()
			return errors.Join(err, writeRaw(c.Out, meta, results), writeReport(c.Out, meta, results, scenarios, strategies))
		}
		note := ""
		if res.TimedOut {
			note += ", timed out"
		}
		if res.Loaded {
			note += ", under other load"
		}
		fmt.Fprintf(c.Log, "[%d/%d] %-11s %-12s rep %d: %6.1f s, %d OOM kills, %d failed, %d re-runs, peak %.0f MiB, stall %.1f/%.1f s, other CPU %.2f cores, load %.2f-%.2f%s\n",
			i+1, len(order), cl.Scenario.Name, cl.Strategy.Name, cl.Rep, res.Makespan, res.OOMKills, res.Failed, res.Reruns, res.PeakMiB,
			res.StallSome, res.StallFull, res.OtherCPU, res.Load1Start, res.Load1End, note)
		results = append(results, res)
		// Kept current, so that an interrupted benchmark leaves its data.
		meta.Finished, meta.LoadEnd = time.Now().UTC(), loadavg()
		if err := writeRaw(c.Out, meta, results); err != nil {
			return err
		}
	}
	meta.Finished = time.Now().UTC()
	meta.LoadEnd = loadavg()
	if err := writeRaw(c.Out, meta, results); err != nil {
		return err
	}
	return writeReport(c.Out, meta, results, scenarios, strategies)
}

// Cell is one run to make: a scenario under a strategy, one repetition.
type Cell struct {
	Scenario Scenario
	Strategy Strategy
	Rep      int
}

// Plan is the order of the runs: every repetition of every strategy the
// scenario runs, shuffled with seed, except that a warm tokend run comes
// after the cold run whose history it starts from (the two trade places
// if the shuffle put them the other way round).
func Plan(scenarios []Scenario, strategies []Strategy, reps int, seed uint64) []Cell {
	var order []Cell
	for rep := 1; rep <= reps; rep++ {
		for _, sc := range scenarios {
			for _, st := range strategies {
				if sc.runs(st) {
					order = append(order, Cell{sc, st, rep})
				}
			}
		}
	}
	r := rand.New(rand.NewPCG(seed, 1))
	r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for i, w := range order {
		if !w.Strategy.Warm {
			continue
		}
		j := slices.IndexFunc(order, func(c Cell) bool {
			return c.Strategy.Name == ColdName && c.Scenario.Name == w.Scenario.Name && c.Rep == w.Rep
		})
		if j > i {
			order[i], order[j] = order[j], order[i]
		}
	}
	return order
}

// fetchSources fetches and unpacks the sources of the real scenarios, and
// installs the compiler they need and the crates of a cargo build (which
// cargo, the path of cargo, resolves); the result maps a source package's
// name to its tree.
func fetchSources(ctx context.Context, scenarios []Scenario, cargo string, log io.Writer) (map[string]string, error) {
	out := map[string]string{}
	for _, sc := range scenarios {
		if sc.Real == nil || out[sc.Real.Source.Name] != "" {
			continue
		}
		if len(out) == 0 {
			if err := EnsureDebs(ctx, log, "g++"); err != nil {
				return nil, err
			}
		}
		cache, err := BenchCache()
		if err != nil {
			return nil, err
		}
		dir, err := FetchSource(ctx, cache, sc.Real.Source, log)
		if err != nil {
			return nil, err
		}
		if sc.Real.Cargo != nil {
			if err := EnsureDebs(ctx, log, sc.Real.Debs...); err != nil {
				return nil, err
			}
			err = prepareCargoTree(ctx, cargo, dir, debianRegistry, log)
		} else {
			err = writeTestData(dir)
		}
		if err != nil {
			return nil, err
		}
		out[sc.Real.Source.Name] = dir
	}
	return out, nil
}

// writeTestData writes the header nlohmann-json's tests include for the
// place of their test data, which CMake would write; the benchmark only
// compiles them.
func writeTestData(src string) error {
	dir := filepath.Join(src, includeDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("test data header: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "test_data.hpp"), []byte("#define TEST_DATA_DIRECTORY \"/nonexistent\"\n"), 0o644); err != nil {
		return fmt.Errorf("test data header: %w", err)
	}
	return nil
}

// writeRaw writes every run's measurements and samples to results.json.
func writeRaw(out string, meta Meta, results []Result) error {
	raw, err := json.MarshalIndent(struct {
		Meta    Meta     `json:"meta"`
		Results []Result `json:"results"`
	}{meta, results}, "", " ")
	if err != nil {
		return fmt.Errorf("results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, "results.json"), raw, 0o644); err != nil {
		return fmt.Errorf("results: %w", err)
	}
	return nil
}

// Meta describes an invocation for the report.
type Meta struct {
	Command   string    `json:"command"`
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished"`
	LoadStart string    `json:"loadavg_start"`
	LoadEnd   string    `json:"loadavg_end"`
	CPUs      int       `json:"cpus"`
	Quick     bool      `json:"quick"`
	LimitMiB  int       `json:"limit_mib"`
	Reps      int       `json:"reps"`
	Runs      int       `json:"runs"` // planned
	// Strategies are the names of the strategies run; none means all.
	Strategies []string       `json:"strategies"`
	Tokend     string         `json:"tokend"`
	Make       string         `json:"make"`
	Ninja      string         `json:"ninja"`
	Cargo      string         `json:"cargo,omitempty"`
	Scenarios  []ScenarioInfo `json:"scenarios"`
}

// ScenarioInfo is a scenario as run, with its packages.
type ScenarioInfo struct {
	Name         string    `json:"name"`
	About        string    `json:"about"`
	MaxJobs      int       `json:"max_jobs"`
	LimitMiB     int       `json:"limit_mib,omitempty"`
	Timeout      float64   `json:"timeout_s,omitempty"`
	TokendInside bool      `json:"tokend_inside,omitempty"`
	Source       string    `json:"source,omitempty"` // Debian source package and version
	Packages     []Package `json:"packages"`
}

func writeReport(out string, meta Meta, results []Result, scenarios []Scenario, strategies []Strategy) error {
	sums := Summarize(results, scenarios, strategies)
	var md strings.Builder
	fmt.Fprintf(&md, "Command: `%s`\n\n", meta.Command)
	fmt.Fprintf(&md, "Run %s to %s UTC on %d CPUs; load average at start %s, at end %s.\n",
		meta.Started.Format("2006-01-02 15:04"), meta.Finished.Format("15:04"), meta.CPUs, meta.LoadStart, meta.LoadEnd)
	fmt.Fprintf(&md, "Memory limit %d MiB unless a scenario has its own; %d repetitions in randomized order; medians.\n", meta.LimitMiB, meta.Reps)
	if meta.Runs > len(results) {
		fmt.Fprintf(&md, "**Interrupted after %d of %d runs**: some cells have fewer repetitions (see reps).\n", len(results), meta.Runs)
	}
	fmt.Fprintf(&md, "tokend: %s. make: %s. ninja: %s.", meta.Tokend, meta.Make, meta.Ninja)
	if meta.Cargo != "" {
		fmt.Fprintf(&md, " cargo: %s.", meta.Cargo)
	}
	md.WriteString("\n\n")
	for _, sc := range meta.Scenarios {
		var units, links int
		var cpu float64
		compiler := "g++"
		for _, p := range sc.Packages {
			cpu += p.CPUSeconds()
			if p.Cargo != nil {
				compiler = "cargo"
				units += p.Cargo.Crates
			}
			for _, j := range p.Jobs {
				if j.Link {
					links++
				} else {
					units++
				}
			}
		}
		fmt.Fprintf(&md, "- **%s**: %s; %d packages (%d compiles, %d links, %.0f CPU-s of jobs) built %d at a time",
			sc.Name, sc.About, len(sc.Packages), units, links, cpu, sc.MaxJobs)
		if sc.Source != "" {
			fmt.Fprintf(&md, "; real code: Debian source %s, %s", sc.Source, compiler)
		}
		if sc.LimitMiB > 0 {
			fmt.Fprintf(&md, "; limit %d MiB", sc.LimitMiB)
		}
		if sc.TokendInside {
			md.WriteString(", tokend inside it")
		}
		if sc.Timeout > 0 {
			fmt.Fprintf(&md, "; runs stopped at %.0f s", sc.Timeout)
		}
		md.WriteString(".\n")
	}
	md.WriteString("\n")
	if err := WriteTable(&md, sums); err != nil {
		return err
	}
	var loaded []string
	for _, r := range results {
		if r.Loaded {
			loaded = append(loaded, fmt.Sprintf("%s/%s rep %d (%.2f cores)", r.Scenario, r.Strategy, r.Rep, r.OtherCPU))
		}
	}
	if len(loaded) > 0 {
		fmt.Fprintf(&md, "\n**Taken under other load** (other processes used more than %.2f cores during the run; re-run these): %s.\n",
			OtherLoadLimit, strings.Join(loaded, ", "))
	}
	md.WriteString("\nTargets for tokend:\n\n")
	if err := WriteVerdicts(&md, Targets(sums, scenarios)); err != nil {
		return err
	}
	md.WriteString("\nPareto front (makespan against OOM kills + failed packages), fastest first:\n\n")
	for _, sc := range scenarios {
		var ss []Summary
		for _, s := range sums {
			if s.Scenario == sc.Name {
				ss = append(ss, s)
			}
		}
		var names []string
		for _, s := range Pareto(ss) {
			names = append(names, fmt.Sprintf("%s (%.1f s, %g)", s.Strategy, s.Makespan, failures(s)))
		}
		fmt.Fprintf(&md, "- %s: %s\n", sc.Name, strings.Join(names, ", "))
	}
	if err := os.WriteFile(filepath.Join(out, "report.md"), []byte(md.String()), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	limits := map[string]int{}
	for _, sc := range meta.Scenarios {
		limits[sc.Name] = cmp.Or(sc.LimitMiB, meta.LimitMiB)
	}
	for _, sc := range scenarios {
		var traces []Trace
		for _, st := range strategies {
			if r, ok := medianRun(results, sc.Name, st.Name); ok {
				traces = append(traces, Trace{Label: fmt.Sprintf("%s (rep %d: %.1f s, %d OOM kills)", st.Name, r.Rep, r.Makespan, r.OOMKills), Samples: r.Samples})
			}
		}
		if err := writeSVG(filepath.Join(out, sc.Name+".svg"), func(w io.Writer) error {
			return WriteTimeline(w, sc.Name+": memory and running jobs, the median-makespan run of each strategy", cmp.Or(limits[sc.Name], meta.LimitMiB), traces)
		}); err != nil {
			return err
		}
	}
	return writeSVG(filepath.Join(out, "pareto.svg"), func(w io.Writer) error { return WritePareto(w, sums, scenarios) })
}

// Rerender writes report.md and the plots to out again from a results.json
// an earlier (maybe interrupted) invocation wrote.
func Rerender(out, resultsPath string) error {
	raw, err := os.ReadFile(resultsPath)
	if err != nil {
		return fmt.Errorf("read results: %w", err)
	}
	var r struct {
		Meta    Meta     `json:"meta"`
		Results []Result `json:"results"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("read results %s: %w", resultsPath, err)
	}
	var names []string
	for _, sc := range r.Meta.Scenarios {
		names = append(names, sc.Name)
	}
	scenarios, err := SelectScenarios(Scenarios(r.Meta.Quick), strings.Join(names, ","))
	if err != nil {
		return err
	}
	strategies, err := SelectStrategies(Strategies(r.Meta.CPUs, r.Meta.Quick), strings.Join(r.Meta.Strategies, ","))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("output dir: %w", err)
	}
	return writeReport(out, r.Meta, r.Results, scenarios, strategies)
}

func writeSVG(path string, draw func(io.Writer) error) error {
	var b strings.Builder
	if err := draw(&b); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

// medianRun is the repetition whose makespan is the median (the lower
// middle one for an even count).
func medianRun(results []Result, scenario, strategy string) (Result, bool) {
	var rs []Result
	for _, r := range results {
		if r.Scenario == scenario && r.Strategy == strategy {
			rs = append(rs, r)
		}
	}
	if len(rs) == 0 {
		return Result{}, false
	}
	slices.SortFunc(rs, func(a, b Result) int { return cmp.Compare(a.Makespan, b.Makespan) })
	return rs[(len(rs)-1)/2], true
}

// prepare puts the binaries a run needs in work/bin.
func prepare(ctx context.Context, c Config, work string) (Binaries, error) {
	dir := filepath.Join(work, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Binaries{}, fmt.Errorf("bin dir: %w", err)
	}
	src := c.BinDir
	if src == "" {
		src = dir
		cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+"/",
			"github.com/tokend/tokend/cmd/tokend", "github.com/tokend/tokend/cmd/tokenctl", "github.com/tokend/tokend/internal/fakecc")
		if out, err := cmd.CombinedOutput(); err != nil {
			return Binaries{}, fmt.Errorf("build tokend, tokenctl and fakecc (run from the tokend source tree, or give --bin): %w\n%s", err, out)
		}
	}
	b := Binaries{
		Tokend:   filepath.Join(src, "tokend"),
		Tokenctl: filepath.Join(src, "tokenctl"),
		CC:       filepath.Join(dir, "cc1"),
		LD:       filepath.Join(dir, "ld"),
		Hog:      filepath.Join(dir, "hog"),
	}
	fakecc, err := os.ReadFile(filepath.Join(src, "fakecc"))
	if err != nil {
		return b, fmt.Errorf("stand-in compiler: %w", err)
	}
	// One binary under three names: the sampler counts jobs by name.
	for _, p := range []string{b.CC, b.LD, b.Hog} {
		if err := os.WriteFile(p, fakecc, 0o755); err != nil {
			return b, fmt.Errorf("stand-in compiler: %w", err)
		}
	}
	if b.Make, err = findTool(c.Make, "make", "GNU Make 4.4", "GNU Make 4.5", "GNU Make 5"); err != nil {
		return b, err
	}
	if b.Ninja, err = findTool(c.Ninja, "ninja", "1.13", "1.14", "1.15", "1.16", "1.17", "1.18", "1.19", "2."); err != nil {
		return b, err
	}
	help, _ := exec.Command(b.Tokend, "--help").CombinedOutput()
	for _, f := range []string{"memory-cgroup", "lease-cgroups"} {
		if strings.Contains(string(help), "  -"+f+" ") {
			b.TokendCgroupFlags = append(b.TokendCgroupFlags, f)
		}
	}
	b.TokendDescription = "CPU default (one job per CPU): this tokend has no --memory-cgroup flag"
	if len(b.TokendCgroupFlags) > 0 {
		b.TokendDescription = "memory controller on its defaults, pointed at each run's cgroups with --" + strings.Join(b.TokendCgroupFlags, ", --")
	}
	return b, nil
}

// findTool returns given, or the first name found in $TOKEND_TOOLS_BIN,
// the cache .ci/tools.sh fills, or $PATH, whose --version starts with one
// of the prefixes (after "GNU Make " for make, bare for ninja).
func findTool(given, name string, prefixes ...string) (string, error) {
	var cands []string
	if given != "" {
		cands = []string{given}
	} else {
		if d := os.Getenv("TOKEND_TOOLS_BIN"); d != "" {
			cands = append(cands, filepath.Join(d, name))
		}
		if h, err := os.UserHomeDir(); err == nil {
			cands = append(cands, filepath.Join(h, ".cache", "tokend-tools", "bin", name))
		}
		if p, err := exec.LookPath(name); err == nil {
			cands = append(cands, p)
		}
	}
	for _, p := range cands {
		v := version(p)
		for _, pre := range prefixes {
			if strings.HasPrefix(v, pre) {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("no %s new enough among %v (want %s...; .ci/tools.sh builds one, or pass --%s)", name, cands, prefixes[0], name)
}

// version is the first line of a tool's --version.
func version(path string) string {
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
