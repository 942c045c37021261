package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

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

// Run builds sc's packages once under st, inside a fresh memory limit,
// and measures it. Everything it started is gone when it returns.
func Run(ctx context.Context, env Env, sc Scenario, st Strategy, rep, seq int) (res Result, err error) {
	res = Result{Scenario: sc.Name, Strategy: st.Name, Rep: rep, Order: seq}
	dir := filepath.Join(env.Work, fmt.Sprintf("%03d-%s-%s", seq, sc.Name, st.Name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, fmt.Errorf("run dir: %w", err)
	}
	defer os.RemoveAll(dir)
	bs, err := newBuilds(env, sc, st, dir)
	if err != nil {
		return res, err
	}
	lim, err := MakeLimit(env.Mounts, fmt.Sprintf("tokend-bench-%d-%d", os.Getpid(), seq), uint64(sc.limit(env.LimitMiB))<<20)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, lim.Remove()) }()
	s, err := setUp(ctx, env, sc, st, rep, seq, dir, lim, bs.pkgs)
	if err != nil {
		return res, err
	}
	res.WarmFrom = s.warmFrom
	defer func() { err = errors.Join(err, s.tearDown(&res, err)) }()
	bs.makeflags = s.makeflags
	// The builds' processes volunteer for the OOM killer, so that a hog,
	// which stands for the user's own program, is never its victim.
	bs.enter = lim.Enter() + " && echo 1000 > /proc/self/oom_score_adj && exec \"$@\""

	if sc.DropCaches {
		if err := dropCaches(); err != nil {
			return res, err
		}
	}
	res.Load1Start = load1()
	busy0, err := hostBusy()
	if err != nil {
		return res, err
	}
	outside0 := s.outsideCPU()
	start := time.Now()
	sampler := startSampler(lim, start, env.Sample)
	defer sampler.stop()
	var timeout <-chan time.Time
	if sc.Timeout > 0 {
		t := time.NewTimer(sc.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	if sc.Hog != nil {
		defer startHog(*sc.Hog, lim, env.Bin.Hog)()
	}
	slots := sc.MaxJobs
	if st.Kind == Serial {
		slots = 1
	}
	if err := bs.run(ctx, slots, timeout, &res); err != nil {
		return res, err
	}
	res.Makespan = time.Since(start).Seconds()
	res.Samples = sampler.stop()
	busy1, err := hostBusy()
	if err != nil {
		return res, err
	}
	res.Load1End = load1()
	return res, finish(&res, lim, env.CPUs, (busy1-busy0).Seconds()-(s.outsideCPU()-outside0))
}

// dropCaches writes back and drops the host's clean page cache, dentries
// and inodes (vm.drop_caches 3), which needs root.
func dropCaches() error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("empty the page cache before the run: %w (run tokend-bench as root)", err)
	}
	return nil
}

// newBuilds are the builds of sc's packages in dir under st, with the
// tools they use.
func newBuilds(env Env, sc Scenario, st Strategy, dir string) (*builds, error) {
	var src string
	if sc.Real != nil {
		if src = env.Sources[sc.Real.Source.Name]; src == "" {
			return nil, fmt.Errorf("scenario %s: source %s not fetched", sc.Name, sc.Real.Source.Name)
		}
	}
	bs := &builds{pkgs: sc.Packages(src), dir: dir, tools: Tools{CC: env.Bin.CC, LD: env.Bin.LD}, bin: env.Bin, st: st}
	if sc.Graph.WorkingSetMiB > 0 {
		ws, err := workingSet(env.Work, sc.Graph.WorkingSetMiB)
		if err != nil {
			return nil, err
		}
		bs.tools.WorkingSet = ws
	}
	return bs, nil
}

// setup is what a strategy puts around its builds: a tokend, or a shared
// jobserver, or nothing.
type setup struct {
	// makeflags is the shared jobserver's MAKEFLAGS, or "tokend:SOCKET".
	makeflags string
	// outsideCPU is the CPU time, in seconds, of this harness and of what
	// it started outside the run's cgroups: not other users' load.
	outsideCPU func() float64
	// warmFrom are the lease names a warm tokend's history held.
	warmFrom []string
	td       *tokend
	built    []string // packages a cold tokend must have recorded before it stops
	logCopy  string   // where tokend's log is copied when the run is over; "" nowhere
	shared   *jobserver.FIFO
}

// setUp starts what st needs for one run of sc in dir.
func setUp(ctx context.Context, env Env, sc Scenario, st Strategy, rep, seq int, dir string, lim *Limit, pkgs []Package) (*setup, error) {
	s := &setup{outsideCPU: selfCPU}
	switch st.Kind {
	case Tokend:
		state, names, err := tokendState(env.Work, sc, st, rep)
		if err != nil {
			return nil, err
		}
		s.warmFrom = names
		if s.td, err = startTokend(ctx, env.Bin, st, filepath.Join(dir, "tokend"), state, lim, sc.TokendInside); err != nil {
			return nil, err
		}
		if env.Logs != "" {
			s.logCopy = filepath.Join(env.Logs, fmt.Sprintf("%03d-%s-%s-rep%d-tokend.log", seq, sc.Name, st.Name, rep))
		}
		if env.Warm && !st.Warm {
			for _, p := range pkgs {
				s.built = append(s.built, p.Name)
			}
		}
		if !sc.TokendInside {
			pid := s.td.cmd.Process.Pid
			s.outsideCPU = func() float64 { cpu, _, _ := procUsage(pid); return cpu + selfCPU() }
		}
		s.makeflags = "tokend:" + s.td.socket
	case Shared:
		f, err := jobserver.Create(filepath.Join(dir, "shared.fifo"), jobserver.FIFOOptions{GID: -1})
		if err != nil {
			return nil, err
		}
		if err := f.Add(st.N); err != nil {
			return nil, errors.Join(fmt.Errorf("fill shared jobserver: %w", err), f.Remove())
		}
		s.shared, s.makeflags = f, jobserver.WithAuth("", jobserver.FIFOAuth(f.Path()))
	}
	return s, nil
}

// tearDown undoes setUp once the run is over. A run that went well
// (runErr nil) gets tokend's CPU time and peak RSS, read before it stops.
func (s *setup) tearDown(res *Result, runErr error) error {
	switch {
	case s.shared != nil:
		return s.shared.Remove()
	case s.td == nil:
		return nil
	}
	var err error
	if runErr == nil {
		res.TokendCPU, res.TokendRSSMiB, err = procUsage(s.td.cmd.Process.Pid)
		res.TokendCPUPct = 100 * res.TokendCPU / res.Makespan
	}
	err = errors.Join(err, s.td.stop(s.built))
	if s.logCopy != "" {
		// After the stop: the whole log.
		err = errors.Join(err, keepLog(s.td.log.Name(), s.logCopy))
	}
	return err
}

// startHog starts h's program in the run's limit once h.After has passed,
// and returns what stops it.
func startHog(h Hog, lim *Limit, bin string) (stop func()) {
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
		c := exec.Command("/bin/sh", "-c", lim.Enter()+` && exec "$@"`, "sh", bin,
			"--peak", strconv.Itoa(h.PeakMiB), "--ramp", fmt.Sprint(h.RampMiBs), "--cpu", fmt.Sprint(burnCPU(0, h.PeakMiB, h.RampMiBs)), "--hold", "-1")
		if c.Start() == nil {
			hog = c
		}
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		if hog != nil {
			_ = hog.Process.Signal(syscall.SIGTERM)
			_ = hog.Wait()
		}
	}
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
