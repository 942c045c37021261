package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker/control"
	"github.com/tokend/tokend/jobserver"
)

// Binaries are the programs a run drives.
type Binaries struct {
	CC, LD, Hog      string // the stand-in compiler under three names
	Tokend, Tokenctl string
	Make, Ninja      string // GNU make >= 4.4 and ninja >= 1.13
	Cargo            string // only if a scenario builds with cargo
	// TokendCgroupFlags are the flags this tokend has for where its
	// memory domain, pressure and lease cgroups are; each run points them
	// at its own cgroups.
	TokendCgroupFlags []string
	TokendDescription string
}

// Env is what every run of a benchmark shares.
type Env struct {
	Mounts   Mounts
	Bin      Binaries
	Work     string // scratch directory
	LimitMiB int    // of scenarios without a limit of their own
	CPUs     int
	Sample   time.Duration
	// Sources are the unpacked trees of the real scenarios' sources, by
	// Debian source package name.
	Sources map[string]string
	// Warm tells that warm tokend runs follow cold ones: a cold tokend is
	// stopped only once it has recorded the packages in its history.
	Warm bool
	// Logs, if set, keeps each run's tokend log, which the scratch
	// directory would lose: what the controller decided, for reading a
	// surprising run afterwards.
	Logs string
}

// Sample is the state of a run at one instant.
type Sample struct {
	T      float64 `json:"t"`       // seconds since the builds started
	MemMiB float64 `json:"mem_mib"` // memory charged to the limit
	Jobs   int     `json:"jobs"`    // compiles and links running
	OOM    int     `json:"oom"`     // OOM kills so far
}

// Result is what one run measured.
type Result struct {
	Scenario     string  `json:"scenario"`
	Strategy     string  `json:"strategy"`
	Rep          int     `json:"rep"`
	Order        int     `json:"order"` // position in the randomized run order
	Makespan     float64 `json:"makespan_s"`
	OOMKills     int     `json:"oom_kills"`
	Failed       int     `json:"failed_packages"` // packages that did not build in the end
	Reruns       int     `json:"reruns"`
	WastedCPU    float64 `json:"wasted_cpu_s"` // CPU of failed attempts
	PeakMiB      float64 `json:"peak_mib"`
	StallSome    float64 `json:"stall_some_s"`
	StallFull    float64 `json:"stall_full_s"`
	CPUIdle      float64 `json:"cpu_idle"`           // share of the host's CPU time the run left unused
	TokendCPU    float64 `json:"tokend_cpu_s"`       // tokend strategy only
	TokendCPUPct float64 `json:"tokend_cpu_pct"`     // of one core, over the makespan
	TokendRSSMiB float64 `json:"tokend_rss_hwm_mib"` // peak RSS (VmHWM)
	// TimedOut: the run was stopped at the scenario's timeout; its
	// unfinished packages count as failed and its makespan is the timeout.
	TimedOut bool `json:"timed_out,omitempty"`
	// OtherCPU is the CPU that processes outside the run (other users of
	// the machine) used during it, in cores, averaged over the makespan;
	// Loaded marks a run where it exceeded OtherLoadLimit.
	OtherCPU   float64 `json:"other_cpu_cores"`
	Loaded     bool    `json:"loaded,omitempty"`
	Load1Start float64 `json:"load1_start"` // the 1-minute load average
	Load1End   float64 `json:"load1_end"`
	// WarmFrom are the lease names the history of a warm tokend run held
	// when it started: the packages it had seen.
	WarmFrom []string `json:"warm_from,omitempty"`
	Samples  []Sample `json:"samples"`
}

// OtherLoadLimit is the CPU, in cores, that other processes may use during
// a run before the run is marked as taken under other load: on 2 cores,
// more than a tenth of the machine taken from the builds.
const OtherLoadLimit = 0.2

// build is one package's attempt in flight.
type build struct {
	pkg     int
	attempt int
	cmd     *exec.Cmd
}

type finished struct {
	b   build
	ok  bool
	cpu time.Duration
	err error
}

// Run builds sc's packages once under st, inside a fresh memory limit,
// and measures it. Everything it started is gone when it returns.
func Run(ctx context.Context, env Env, sc Scenario, st Strategy, rep, seq int) (res Result, err error) {
	res = Result{Scenario: sc.Name, Strategy: st.Name, Rep: rep, Order: seq}
	dir := filepath.Join(env.Work, fmt.Sprintf("%03d-%s-%s", seq, sc.Name, st.Name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, fmt.Errorf("run dir: %w", err)
	}
	defer os.RemoveAll(dir)
	var src string
	if sc.Real != nil {
		if src = env.Sources[sc.Real.Source.Name]; src == "" {
			return res, fmt.Errorf("scenario %s: source %s not fetched", sc.Name, sc.Real.Source.Name)
		}
	}
	pkgs := sc.Packages(src)
	tools := Tools{CC: env.Bin.CC, LD: env.Bin.LD}
	if sc.Graph.WorkingSetMiB > 0 {
		if tools.WorkingSet, err = workingSet(env.Work, sc.Graph.WorkingSetMiB); err != nil {
			return res, err
		}
	}

	lim, err := MakeLimit(env.Mounts, fmt.Sprintf("tokend-bench-%d-%d", os.Getpid(), seq), uint64(sc.limit(env.LimitMiB))<<20)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, lim.Remove()) }()

	var makeflags string
	// outsideCPU is the CPU time of this harness and of what it started
	// outside the run's cgroups: not other users' load.
	outsideCPU := selfCPU
	switch st.Kind {
	case Tokend:
		state, names, err := tokendState(env.Work, sc, st, rep)
		if err != nil {
			return res, err
		}
		res.WarmFrom = names
		td, err := startTokend(ctx, env.Bin, filepath.Join(dir, "tokend"), state, lim, sc.TokendInside)
		if err != nil {
			return res, err
		}
		if env.Logs != "" {
			// Deferred before the stop, so it runs after it: the whole log.
			defer func() {
				err = errors.Join(err, keepLog(td.log.Name(), filepath.Join(env.Logs, fmt.Sprintf("%03d-%s-%s-rep%d-tokend.log", seq, sc.Name, st.Name, rep))))
			}()
		}
		var built []string
		if env.Warm && !st.Warm {
			for _, p := range pkgs {
				built = append(built, p.Name)
			}
		}
		defer func() { err = errors.Join(err, td.stop(built)) }()
		defer func() {
			if err == nil {
				res.TokendCPU, res.TokendRSSMiB, err = procUsage(td.cmd.Process.Pid)
				res.TokendCPUPct = 100 * res.TokendCPU / res.Makespan
			}
		}()
		if !sc.TokendInside {
			outsideCPU = func() float64 { cpu, _, _ := procUsage(td.cmd.Process.Pid); return cpu + selfCPU() }
		}
		makeflags = "tokend:" + td.socket
	case Shared:
		f, err := jobserver.Create(filepath.Join(dir, "shared.fifo"), jobserver.FIFOOptions{GID: -1})
		if err != nil {
			return res, err
		}
		defer f.Remove()
		if err := f.Add(st.N); err != nil {
			return res, fmt.Errorf("fill shared jobserver: %w", err)
		}
		makeflags = jobserver.WithAuth("", jobserver.FIFOAuth(f.Path()))
	}

	// The builds' processes volunteer for the OOM killer, so that a hog,
	// which stands for the user's own program, is never its victim.
	enter := lim.Enter() + " && echo 1000 > /proc/self/oom_score_adj && exec \"$@\""
	res.Load1Start = load1()
	busy0, err := hostBusy()
	if err != nil {
		return res, err
	}
	outside0 := outsideCPU()
	start := time.Now()
	sampler := startSampler(lim, start, env.Sample)
	defer sampler.stop()
	var timeout <-chan time.Time
	if sc.Timeout > 0 {
		t := time.NewTimer(sc.Timeout)
		defer t.Stop()
		timeout = t.C
	}

	if h := sc.Hog; h != nil {
		var (
			mu      sync.Mutex
			hog     *exec.Cmd
			stopped bool
		)
		time.AfterFunc(h.After, func() {
			mu.Lock()
			defer mu.Unlock()
			if stopped {
				return
			}
			c := exec.Command("/bin/sh", "-c", lim.Enter()+` && exec "$@"`, "sh", env.Bin.Hog,
				"--peak", strconv.Itoa(h.PeakMiB), "--ramp", fmt.Sprint(h.RampMiBs), "--cpu", fmt.Sprint(burnCPU(0, h.PeakMiB, h.RampMiBs)), "--hold", "-1")
			if c.Start() == nil {
				hog = c
			}
		})
		defer func() {
			mu.Lock()
			defer mu.Unlock()
			stopped = true
			if hog != nil {
				_ = hog.Process.Signal(syscall.SIGTERM)
				_ = hog.Wait()
			}
		}()
	}

	slots := sc.MaxJobs
	if st.Kind == Serial {
		slots = 1
	}
	queue := make([]build, len(pkgs))
	for i := range pkgs {
		queue[i] = build{pkg: i, attempt: 1}
	}
	done := make(chan finished)
	running := map[*exec.Cmd]bool{}
	defer func() {
		for c := range running {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		}
		for range running {
			<-done
		}
	}()
	for len(queue) > 0 || len(running) > 0 {
		for len(queue) > 0 && len(running) < slots {
			b := queue[0]
			queue = queue[1:]
			pdir := filepath.Join(dir, pkgs[b.pkg].Name)
			if err := writePackage(pdir, pkgs[b.pkg], tools); err != nil {
				return res, err
			}
			b.cmd = buildCommand(env.Bin, st, pkgs[b.pkg], pdir, makeflags, enter)
			logf, err := os.OpenFile(pdir+".log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				return res, fmt.Errorf("build log: %w", err)
			}
			b.cmd.Stdout, b.cmd.Stderr = logf, logf
			b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := b.cmd.Start(); err != nil {
				logf.Close()
				return res, fmt.Errorf("start %s: %w", pkgs[b.pkg].Name, err)
			}
			running[b.cmd] = true
			go func(b build, logf *os.File) {
				err := b.cmd.Wait()
				logf.Close()
				f := finished{b: b, ok: err == nil}
				if ps := b.cmd.ProcessState; ps != nil {
					f.cpu = ps.UserTime() + ps.SystemTime()
				}
				var ee *exec.ExitError
				if err != nil && !errors.As(err, &ee) {
					f.err = err
				}
				done <- f
			}(b, logf)
		}
		var f finished
		select {
		case f = <-done:
		case <-ctx.Done():
			return res, ctx.Err()
		case <-timeout:
			// A build that thrashes makes no progress: stop it, and
			// count what did not finish as failed.
			res.TimedOut = true
			res.Failed += len(queue) + len(running)
			queue = nil
			for c := range running {
				_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			}
			for len(running) > 0 {
				f := <-done
				delete(running, f.b.cmd)
				res.WastedCPU += f.cpu.Seconds()
			}
			continue
		}
		delete(running, f.b.cmd)
		if f.err != nil {
			return res, fmt.Errorf("build %s: %w", pkgs[f.b.pkg].Name, f.err)
		}
		if f.ok {
			continue
		}
		res.WastedCPU += f.cpu.Seconds()
		if st.Kind == Retry && f.b.attempt < MaxAttempts {
			res.Reruns++
			// A failed Nix build starts again from nothing.
			if err := os.RemoveAll(filepath.Join(dir, pkgs[f.b.pkg].Name)); err != nil {
				return res, fmt.Errorf("clean %s: %w", pkgs[f.b.pkg].Name, err)
			}
			queue = append(queue, build{pkg: f.b.pkg, attempt: f.b.attempt + 1})
			continue
		}
		res.Failed++
	}
	res.Makespan = time.Since(start).Seconds()
	res.Samples = sampler.stop()
	busy1, err := hostBusy()
	if err != nil {
		return res, err
	}
	res.Load1End = load1()
	return res, finish(&res, lim, env.CPUs, (busy1-busy0).Seconds()-(outsideCPU()-outside0))
}

// finish reads the run's totals from its cgroups; busy is the CPU time the
// whole host used during the run less what the harness started outside
// them.
func finish(res *Result, lim *Limit, cpus int, busy float64) error {
	oom, err := lim.OOMKills()
	if err != nil {
		return err
	}
	peak, err := lim.Peak()
	if err != nil {
		return err
	}
	some, full, err := lim.Stall()
	if err != nil {
		return err
	}
	cpu, err := lim.CPU()
	if err != nil {
		return err
	}
	res.OOMKills = oom
	res.PeakMiB = float64(peak) / (1 << 20)
	res.StallSome, res.StallFull = some.Seconds(), full.Seconds()
	res.CPUIdle = max(0, 1-cpu.Seconds()/(res.Makespan*float64(cpus)))
	res.OtherCPU = max(0, busy-cpu.Seconds()) / res.Makespan
	res.Loaded = res.OtherCPU > OtherLoadLimit
	return nil
}

// hostBusy is the CPU time the host has spent on anything but idling and
// waiting for I/O since boot, from /proc/stat.
func hostBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("host CPU time: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return parseBusy(line)
}

// parseBusy reads the aggregate "cpu" line of /proc/stat: user, nice,
// system, idle, iowait, irq, softirq, steal in USER_HZ ticks (guest time
// is inside user already).
func parseBusy(line string) (time.Duration, error) {
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("host CPU time: unexpected /proc/stat line %q", line)
	}
	var ticks uint64
	for i, v := range f[1:9] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("host CPU time: %w", err)
		}
		if i != 3 && i != 4 { // idle, iowait
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// selfCPU is the CPU time this process has used, in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// userHZ is the unit of /proc's CPU times on Linux.
const userHZ = 100

// load1 is the 1-minute load average, or -1 if unreadable.
func load1() float64 {
	f := strings.Fields(loadavg())
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// buildCommand is the command that builds one package under st; makeflags
// is the shared jobserver's MAKEFLAGS, or "tokend:SOCKET".
func buildCommand(bin Binaries, st Strategy, p Package, dir, makeflags, enter string) *exec.Cmd {
	env := cleanEnv()
	var tool []string
	switch {
	case p.Cargo != nil:
		// Shared and Tokend give no -j: cargo takes the jobserver in
		// MAKEFLAGS (tokenctl sets CARGO_MAKEFLAGS too) and would ignore it.
		tool = append([]string{bin.Cargo}, p.Cargo.args(filepath.Join(dir, "target"))...)
		env = append(env, "CARGO_HOME="+p.Cargo.Home, "CARGO_TERM_COLOR=never")
	case p.Ninja:
		tool = []string{bin.Ninja, "-C", dir}
	default:
		tool = []string{bin.Make, "-C", dir}
	}
	switch st.Kind {
	case Serial, Static, Retry:
		tool = append(tool, "-j"+strconv.Itoa(st.N))
	case Load:
		tool = append(tool, "-j"+strconv.Itoa(st.N), "-l"+strconv.Itoa(st.L))
	case Shared:
		env = append(env, "MAKEFLAGS="+makeflags)
	case Tokend:
		socket := strings.TrimPrefix(makeflags, "tokend:")
		tool = append([]string{bin.Tokenctl, "--socket", socket, "run", "--name", p.Name, "--"}, tool...)
	}
	c := exec.Command("/bin/sh", append([]string{"-c", enter, "sh"}, tool...)...)
	c.Env = env
	return c
}

// cleanEnv is this process's environment without any jobserver in it.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "TOKEND_SOCKET":
			continue
		}
		env = append(env, kv)
	}
	return env
}

func writePackage(dir string, p Package, t Tools) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("package dir: %w", err)
	}
	if p.Cargo != nil {
		return nil
	}
	name, write := "Makefile", WriteMakefile
	if p.Ninja {
		name, write = "build.ninja", WriteNinja
	}
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := write(f, p, t); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// workingSet returns a file of mib MiB of data in dir, creating it the
// first time, with none of its pages cached: each run faults them in and
// is charged for them afresh.
func workingSet(dir string, mib int) (string, error) {
	path := filepath.Join(dir, fmt.Sprintf("workingset-%d.bin", mib))
	if st, err := os.Stat(path); err != nil || st.Size() != int64(mib)<<20 {
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = byte(i*7 + i>>9)
		}
		f, err := os.Create(path)
		if err != nil {
			return "", fmt.Errorf("working set: %w", err)
		}
		for range mib {
			if _, err := f.Write(buf); err != nil {
				f.Close()
				return "", fmt.Errorf("working set: %w", err)
			}
		}
		if err := f.Close(); err != nil {
			return "", fmt.Errorf("working set: %w", err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("working set: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("working set: sync: %w", err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return "", fmt.Errorf("working set: drop cached pages: %w", err)
	}
	return path, nil
}

// sampler records memory and running jobs at a fixed interval.
type sampler struct {
	stopOnce sync.Once
	quit     chan struct{}
	done     chan []Sample
	samples  []Sample
}

func startSampler(lim *Limit, start time.Time, every time.Duration) *sampler {
	s := &sampler{quit: make(chan struct{}), done: make(chan []Sample, 1)}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		var out []Sample
		for {
			out = append(out, sample(lim, start))
			select {
			case <-s.quit:
				out = append(out, sample(lim, start))
				s.done <- out
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the samples; later calls return
// the same samples.
func (s *sampler) stop() []Sample {
	s.stopOnce.Do(func() {
		close(s.quit)
		s.samples = <-s.done
	})
	return s.samples
}

// sample reads one Sample; a value the kernel would not give stays zero
// (a group being torn down can refuse a read).
func sample(lim *Limit, start time.Time) Sample {
	s := Sample{T: time.Since(start).Seconds()}
	if u, err := lim.Usage(); err == nil {
		s.MemMiB = float64(u) / (1 << 20)
	}
	s.OOM, _ = lim.OOMKills()
	pids, _ := lim.Procs()
	for _, pid := range pids {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			continue
		}
		if isJob(strings.TrimSpace(string(comm))) {
			s.Jobs++
		}
	}
	return s
}

// keepLog copies the log at from to to.
func keepLog(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("keep tokend log: %w", err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		return fmt.Errorf("keep tokend log: %w", err)
	}
	return nil
}

// isJob tells the processes that are a build's jobs by name: the stand-in
// compiler's, g++'s compiler proper, linker and LTO back ends (lto1-wpa,
// lto1-ltrans, ...), and rustc. rustc's code generation threads, which
// take jobserver tokens of their own, are not counted: one rustc is one
// job; while rustc links, its ld counts too.
func isJob(comm string) bool {
	switch comm {
	case "cc1", "cc1plus", "ld", "rustc":
		return true
	}
	return strings.HasPrefix(comm, "lto1")
}

// tokendState is the state directory of a tokend run: empty for a cold
// run; for a warm one, holding the job history the cold run of the same
// scenario and repetition left (Main runs that first), whose lease names
// it returns.
func tokendState(work string, sc Scenario, st Strategy, rep int) (string, []string, error) {
	dir := func(name string) string {
		return filepath.Join(work, "state", fmt.Sprintf("%s-rep%d-%s", sc.Name, rep, name))
	}
	state := dir(st.Name)
	if err := os.RemoveAll(state); err != nil {
		return "", nil, fmt.Errorf("tokend state dir: %w", err)
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		return "", nil, fmt.Errorf("tokend state dir: %w", err)
	}
	if !st.Warm {
		return state, nil, nil
	}
	hist, err := os.ReadFile(filepath.Join(dir(ColdName), control.HistoryFile))
	if err != nil {
		return "", nil, fmt.Errorf("history for %s of %s rep %d: the %s run left none: %w", st.Name, sc.Name, rep, ColdName, err)
	}
	// Only the names are read here; tokend reads the rest.
	var file struct {
		Users map[string]map[string]json.RawMessage `json:"users"`
	}
	if err := json.Unmarshal(hist, &file); err != nil {
		return "", nil, fmt.Errorf("history for %s: %w", st.Name, err)
	}
	var names []string
	for _, byName := range file.Users {
		for n := range byName {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	if err := os.WriteFile(filepath.Join(state, control.HistoryFile), hist, 0o644); err != nil {
		return "", nil, fmt.Errorf("history for %s: %w", st.Name, err)
	}
	return state, names, nil
}

// tokend is a tokend started for one run.
type tokend struct {
	cmd      *exec.Cmd
	socket   string
	tokenctl string
	started  time.Time
	log      *os.File
}

// startTokend starts tokend on its defaults in its own runtime and state
// directories, outside the benchmark's cgroups (inside them if inside)
// but pointed at them where it has flags for that, and waits for its
// socket to answer.
func startTokend(ctx context.Context, bin Binaries, runtimeDir, stateDir string, lim *Limit, inside bool) (*tokend, error) {
	if err := os.MkdirAll(runtimeDir, 0o755); err != nil {
		return nil, fmt.Errorf("tokend runtime dir: %w", err)
	}
	logf, err := os.Create(runtimeDir + ".log")
	if err != nil {
		return nil, fmt.Errorf("tokend log: %w", err)
	}
	args := []string{"--runtime-dir", runtimeDir, "--state-dir", stateDir}
	for _, f := range bin.TokendCgroupFlags {
		switch f {
		case "memory-cgroup":
			args = append(args, "--"+f, lim.Mem)
		case "lease-cgroups":
			// Lease groups nest in the run's cgroup2 group, whose
			// pressure and CPU counters include its children; on a
			// hybrid host tokend reads pressure from their parent.
			args = append(args, "--"+f, lim.PSI)
		}
	}
	cmd := exec.Command(bin.Tokend, args...)
	if inside {
		// The shell execs tokend: its PID is tokend's.
		cmd = exec.Command("/bin/sh", append([]string{"-c", lim.Enter() + ` && exec "$@"`, "sh", bin.Tokend}, args...)...)
	}
	t := &tokend{cmd: cmd, socket: filepath.Join(runtimeDir, "tokend.sock"), tokenctl: bin.Tokenctl, started: time.Now(), log: logf}
	t.cmd.Stdout, t.cmd.Stderr = logf, logf
	t.cmd.Env = cleanEnv()
	if err := t.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start tokend: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		probe := exec.Command(bin.Tokenctl, "--socket", t.socket, "status", "--json")
		probe.Env = cleanEnv()
		if probe.Run() == nil {
			return t, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, errors.Join(fmt.Errorf("tokend did not answer on %s within 10 s (log: %s.log)", t.socket, runtimeDir), ctx.Err(), t.stop(nil))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// leaseSettle is how long tokend may take to end the leases of builds
// that have exited: it notices a dead owner within about a second.
// historySettle bounds the wait for it to learn from them: it does so at
// its next tick (250 ms by default), and a lease whose jobs were all too
// small to learn from never shows.
const (
	leaseSettle   = 10 * time.Second
	historySettle = 3 * time.Second
)

// stop waits for tokend to have ended every lease and recorded the
// packages named in its job history, then sends SIGTERM, waits up to 5 s,
// and kills. Stopped earlier, tokend would forget the last package's jobs,
// and a warm run would start without them.
func (t *tokend) stop(names []string) error {
	defer t.log.Close()
	settleErr := t.settle(names)
	_ = t.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- t.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			return errors.Join(settleErr, fmt.Errorf("tokend exited: %w", err))
		}
		return settleErr
	case <-time.After(5 * time.Second):
		_ = t.cmd.Process.Kill()
		<-exited
		return errors.Join(settleErr, errors.New("tokend ignored SIGTERM for 5 s; killed"))
	}
}

// settle waits until tokend lists no lease (an error past leaseSettle),
// then until its history has an entry updated since it started for each
// of names, or historySettle has passed.
func (t *tokend) settle(names []string) error {
	var st api.Status
	deadline := time.Now().Add(leaseSettle)
	for {
		err := t.query(&st, "status", "--json")
		if err == nil && len(st.Leases) == 0 {
			break
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("tokend status before stopping it: %w (log: %s)", err, t.log.Name())
			}
			return fmt.Errorf("tokend still had %d leases %v after the builds ended (log: %s)", len(st.Leases), leaseSettle, t.log.Name())
		}
		time.Sleep(100 * time.Millisecond)
	}
	deadline = time.Now().Add(historySettle)
	for len(names) > 0 && time.Now().Before(deadline) {
		var hist []api.HistoryEntry
		if t.query(&hist, "history", "--json") == nil {
			names = slices.DeleteFunc(names, func(n string) bool {
				return slices.ContainsFunc(hist, func(e api.HistoryEntry) bool { return e.Name == n && e.LastSeen.After(t.started) })
			})
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// query runs tokenctl against this tokend and decodes its JSON answer.
func (t *tokend) query(v any, args ...string) error {
	c := exec.Command(t.tokenctl, append([]string{"--socket", t.socket}, args...)...)
	c.Env = cleanEnv()
	out, err := c.Output()
	if err != nil {
		return fmt.Errorf("tokenctl %s: %w", strings.Join(args, " "), err)
	}
	return json.Unmarshal(out, v)
}

// procUsage is a live process's CPU time in seconds and peak RSS in MiB.
func procUsage(pid int) (cpu, rssMiB float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("tokend usage: %w", err)
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are fields 14 and 15 of the line.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("tokend usage: short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("tokend usage: %w", err)
	}
	cpu = float64(ut+stime) / userHZ
	hwm, err := readKey(fmt.Sprintf("/proc/%d/status", pid), "VmHWM:")
	if err != nil {
		return 0, 0, fmt.Errorf("tokend usage: %w", err)
	}
	return cpu, float64(hwm) / 1024, nil
}
