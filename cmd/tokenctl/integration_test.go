package main

// Integration tests of issue 3's "Done when": the real tokend and tokenctl
// binaries, built once per test binary, driving real GNU make 4.4.1, GNU
// make 4.3, ninja 1.13 and cargo. Concurrency is measured from the probe
// jobs' logs (internal/buildtest), never from timing.

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/jobserver"
)

// testDeadline bounds every wait of a test; the tests take seconds.
const testDeadline = 60 * time.Second

var (
	binsOnce sync.Once
	binsDir  string
	binsErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binsDir != "" {
		os.RemoveAll(binsDir)
	}
	os.Exit(code)
}

// binaries builds tokend and tokenctl once per test binary (with the race
// detector if the tests have it) into a directory every user may run them
// from, and returns their paths.
func binaries(t *testing.T) (tokend, tokenctl string) {
	t.Helper()
	binsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tokenctl-it-")
		if err != nil {
			binsErr = err
			return
		}
		binsDir = dir
		if binsErr = os.Chmod(dir, 0o755); binsErr != nil {
			return
		}
		args := []string{"build", "-o", dir + "/"}
		if raceEnabled() {
			args = append(args, "-race")
		}
		args = append(args, "github.com/tokend/tokend/cmd/tokend", "github.com/tokend/tokend/cmd/tokenctl")
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		cmd := exec.Command(goBin, args...)
		cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
		if out, err := cmd.CombinedOutput(); err != nil {
			binsErr = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if raceEnabled() {
			// Race-built programs sleep a second at exit unless told
			// not to, and tokenctl runs hundreds of times here.
			os.Setenv("GORACE", strings.TrimSpace("atexit_sleep_ms=0 "+os.Getenv("GORACE")))
		}
	})
	if binsErr != nil {
		t.Fatalf("build tokend and tokenctl: %v", binsErr)
	}

	return filepath.Join(binsDir, "tokend"), filepath.Join(binsDir, "tokenctl")
}

func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

// daemon is a running tokend.
type daemon struct {
	dir, sock string
	proc      *buildtest.Proc
	tokenctl  string
	killed    bool
}

// startDaemon runs tokend on dir with a fixed budget until the test ends,
// waits until it answers, and checks at the end that it found no
// accounting errors.
func startDaemon(t *testing.T, dir string, budget int) *daemon {
	t.Helper()
	return startDaemonArgs(t, dir, "--tokens", strconv.Itoa(budget))
}

// startDaemonArgs runs tokend on dir with more arguments; see startDaemon.
func startDaemonArgs(t *testing.T, dir string, args ...string) *daemon {
	t.Helper()
	tokend, tokenctl := binaries(t)
	d := &daemon{dir: dir, sock: api.SocketPath(dir), tokenctl: tokenctl}
	args = append([]string{"--runtime-dir", dir, "--state-dir", filepath.Join(dir, "state"), "--lease-group", "", "--log-level", "debug"}, args...)
	d.proc = buildtest.Start(t, exec.Command(tokend, args...))
	deadline := time.Now().Add(testDeadline)
	for {
		if _, _, code := d.ctl(t, nil, "status"); code == 0 {
			break
		}
		select {
		case <-d.proc.Done():
			t.Fatalf("tokend exited: %v; output:\n%s", d.proc.Err(), d.proc.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tokend did not answer on %s; output:\n%s", d.sock, d.proc.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() {
		if !d.killed {
			st := d.status(t)
			if st.InvariantViolations != 0 {
				t.Errorf("tokend found %d accounting errors, last: %s", st.InvariantViolations, st.LastViolation)
			}
		}
		out := d.proc.Output()
		if strings.Contains(out, "DATA RACE") {
			t.Errorf("tokend had a data race:\n%s", out)
		} else if t.Failed() {
			t.Logf("tokend output:\n%s", out)
		}
	})
	return d
}

// kill9 kills tokend with SIGKILL and waits until it is gone.
func (d *daemon) kill9(t *testing.T) {
	t.Helper()
	if err := d.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	d.proc.Wait(ctx, t)
	d.killed = true
}

// ctl runs tokenctl against the daemon's socket with the given credential
// (nil: as this process) and returns its stdout, stderr and exit status.
func (d *daemon) ctl(t *testing.T, cred *syscall.Credential, args ...string) (string, string, int) {
	t.Helper()
	return runCtl(t, d.tokenctl, d.sock, cred, nil, args...)
}

func runCtl(t *testing.T, tokenctl, sock string, cred *syscall.Credential, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(tokenctl, append([]string{"--socket", sock}, args...)...)
	cmd.Env = env
	if cmd.Env == nil {
		cmd.Env = buildtest.CleanEnv()
	}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = filepath.Dir(tokenctl)
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("tokenctl %v: %v", args, err)
		}
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	}
	if strings.Contains(stderr.String(), "DATA RACE") {
		t.Errorf("tokenctl %v had a data race:\n%s", args, stderr.String())
	}
	return stdout.String(), stderr.String(), code
}

// status is `tokenctl status --json`.
func (d *daemon) status(t *testing.T) api.Status {
	t.Helper()
	out, errOut, code := d.ctl(t, nil, "status", "--json")
	if code != 0 {
		t.Fatalf("tokenctl status --json: exit %d: %s", code, errOut)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("tokenctl status --json: %v\n%s", err, out)
	}
	return st
}

// waitStatus polls status until cond holds and returns the status that
// satisfied it, with the time just after it was read.
func (d *daemon) waitStatus(t *testing.T, what string, cond func(api.Status) bool) (api.Status, time.Time) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for {
		st := d.status(t)
		now := time.Now()
		if cond(st) {
			return st, now
		}
		if now.After(deadline) {
			t.Fatalf("waiting for %s; status: %+v", what, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// setBudget is `tokenctl set budget n` as root.
func (d *daemon) setBudget(t *testing.T, n int) {
	t.Helper()
	if _, errOut, code := d.ctl(t, nil, "set", "budget", strconv.Itoa(n)); code != 0 {
		t.Fatalf("tokenctl set budget %d: exit %d: %s", n, code, errOut)
	}
}

// waitIdle waits until the leases of finished builds are gone (tokend
// removes an ended lease once nothing holds its FIFO), checks that every
// token is back, and returns the status.
func (d *daemon) waitIdle(t *testing.T) api.Status {
	t.Helper()
	st, _ := d.waitStatus(t, "every lease to end", func(st api.Status) bool { return len(st.Leases) == 0 })
	checkIdle(t, st)
	return st
}

// checkIdle checks that every lease is gone and every token is back.
func checkIdle(t *testing.T, st api.Status) {
	t.Helper()
	if len(st.Leases) != 0 || st.Granted != 0 || st.InvariantViolations != 0 {
		t.Errorf("after the builds: %d leases, %d granted, %d accounting errors (%s), want 0, 0, 0: %+v",
			len(st.Leases), st.Granted, st.InvariantViolations, st.LastViolation, st)
	}
}

// build is one command run under `tokenctl run`, whose jobs log with IDs
// starting with prefix.
type build struct {
	name, prefix string
	jobs         int
	argv         []string
	env          []string // added to buildtest.CleanEnv()
	proc         *buildtest.Proc
}

// start runs the build under tokenctl run on the daemon's socket.
func (b *build) start(t *testing.T, d *daemon) {
	t.Helper()
	args := append([]string{"--socket", d.sock, "run", "--name", b.name, "--"}, b.argv...)
	cmd := exec.Command(d.tokenctl, args...)
	cmd.Env = buildtest.CleanEnv(b.env...)
	b.proc = buildtest.Start(t, cmd)
}

// wait waits for the build and checks it succeeded and ran all its jobs.
func (b *build) wait(ctx context.Context, t *testing.T, log *buildtest.Log) {
	t.Helper()
	if err := b.proc.Wait(ctx, t); err != nil {
		t.Errorf("build %s: %v; output:\n%s", b.name, err, b.proc.Output())
	}
	if out := b.proc.Output(); strings.Contains(out, "DATA RACE") {
		t.Errorf("build %s: tokenctl had a data race:\n%s", b.name, out)
	}
	b.run(t, log).Check(t, b.jobs)
}

func (b *build) run(t *testing.T, log *buildtest.Log) buildtest.Run {
	return b.runOf(log.Run(t))
}

// makeBuild writes a Makefile of n probe jobs in a new directory and
// returns a build running it with make.
func makeBuild(t *testing.T, name, make, prefix string, p *buildtest.Probe, log *buildtest.Log, n int, sleep time.Duration) *build {
	dir := t.TempDir()
	buildtest.WriteMakefile(t, dir, p, log, buildtest.Independent(prefix, n, sleep))
	return &build{name: name, prefix: prefix, jobs: n, argv: []string{make, "-s", "-C", dir}}
}

func ninjaBuild(t *testing.T, ninja, prefix string, p *buildtest.Probe, log *buildtest.Log, n int, sleep time.Duration) *build {
	dir := t.TempDir()
	buildtest.WriteNinja(t, dir, p, log, buildtest.Independent(prefix, n, sleep))
	return &build{name: "ninja", prefix: prefix, jobs: n, argv: []string{ninja, "--quiet", "-C", dir}}
}

// cargoBuild is a cargo build of n crates named crates1..cratesN, whose
// jobs log as rustc:crates1 and so on.
func cargoBuild(t *testing.T, cargo, crates string, p *buildtest.Probe, log *buildtest.Log, n int, sleep time.Duration) *build {
	dir := t.TempDir()
	manifest := buildtest.WriteCargoWorkspace(t, dir, crates, n)
	return &build{
		name: "cargo", prefix: "rustc:" + crates, jobs: n,
		argv: append([]string{cargo}, append(buildtest.CargoBuildArgs(manifest), "--quiet")...),
		env:  buildtest.CargoEnv(p, log, sleep, "", filepath.Join(dir, "target")),
	}
}

// shareTheBudget runs builds side by side under tokenctl run with a budget
// of 6 and checks that together they never ran more than 6 jobs, that each
// succeeded, and that each got tokens beyond its implicit slot.
func shareTheBudget(t *testing.T, log *buildtest.Log, builds []*build) {
	const budget = 6
	d := startDaemon(t, t.TempDir(), budget)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	for _, b := range builds {
		b.start(t, d)
	}
	for _, b := range builds {
		b.wait(ctx, t, log)
	}
	all := log.Run(t)
	peak := all.Peak()
	var peaks []string
	for _, b := range builds {
		bp := b.run(t, log).Peak()
		peaks = append(peaks, fmt.Sprintf("%s %d", b.name, bp))
		if bp < 2 && peak < budget {
			t.Errorf("build %s never ran more than its implicit slot's job (peak %d), and together the builds never reached the budget (peak %d)", b.name, bp, peak)
		}
	}
	t.Logf("peak concurrency together %d under budget %d; per build: %s", peak, budget, strings.Join(peaks, ", "))
	if peak > budget {
		t.Errorf("%d jobs ran at once under a budget of %d; log:\n%s", peak, budget, all)
	}
	st := d.waitIdle(t)
	if st.ReclaimedTotal != 0 || st.InflatedTotal != 0 {
		t.Errorf("clean builds: reclaimed %d, inflated %d, want 0 and 0", st.ReclaimedTotal, st.InflatedTotal)
	}
}

// Issue 3: three builds under tokenctl run with a budget of 6 never run
// more than 6 jobs together. make 4.3 is run through the tools' make-4.3
// link, so tokenctl must detect it and pass the pipe style.
func TestThreeBuildsShareTheBudget(t *testing.T) {
	make44, make43, ninja := buildtest.Make44(t), buildtest.Make43(t), buildtest.Ninja(t)
	p, log := buildtest.BuildProbe(t), buildtest.NewLog(t)
	const jobs, sleep = 12, 250 * time.Millisecond
	shareTheBudget(t, log, []*build{
		makeBuild(t, "make-4.4", make44, "mk44-", p, log, jobs, sleep),
		ninjaBuild(t, ninja, "ninja-", p, log, jobs, sleep),
		makeBuild(t, "make-4.3", make43, "mk43-", p, log, jobs, sleep),
	})
}

// The same with cargo as a fourth build: four implicit slots and two
// tokens between them.
func TestFourBuildsWithCargoShareTheBudget(t *testing.T) {
	make44, make43, ninja, cargo := buildtest.Make44(t), buildtest.Make43(t), buildtest.Ninja(t), buildtest.Cargo(t)
	p, log := buildtest.BuildProbe(t), buildtest.NewLog(t)
	const jobs, sleep = 8, 250 * time.Millisecond
	shareTheBudget(t, log, []*build{
		cargoBuild(t, cargo, "crate", p, log, jobs, sleep),
		makeBuild(t, "make-4.4", make44, "mk44-", p, log, jobs, sleep),
		ninjaBuild(t, ninja, "ninja-", p, log, jobs, sleep),
		makeBuild(t, "make-4.3", make43, "mk43-", p, log, jobs, sleep),
	})
}

// Issue 3: the budget cut from 8 to 2 in the middle of a build is
// collected as jobs finish, after which no more than 2 jobs overlap; raised
// back to 8, the build grows again.
//
// Two gated jobs, hold1 and hold2, start first and keep two slots; beside
// them 20 jobs "job*" run. Jobs "mid*" depend on hold1, whose gate opens
// once the debt is paid, so the build has work on the small budget however
// long collecting took; jobs "late*" depend on hold2, whose gate opens
// right after the budget is raised back, so the build has work then too.
func TestBudgetChangedMidBuild(t *testing.T) {
	make44 := buildtest.Make44(t)
	p, log := buildtest.BuildProbe(t), buildtest.NewLog(t)
	d := startDaemon(t, t.TempDir(), 8)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()

	dir := t.TempDir()
	gate1, gate2 := filepath.Join(dir, "hold1.gate"), filepath.Join(dir, "hold2.gate")
	// The first eight jobs hold their tokens until the budget has shrunk:
	// eight short jobs were not always seen running at once on a loaded
	// machine (peak 7), and the test then waited out its deadline.
	wave := filepath.Join(dir, "wave.gate")
	const sleep = 150 * time.Millisecond
	jobs := []buildtest.Job{{ID: "hold1", Gate: gate1}, {ID: "hold2", Gate: gate2}}
	jobs = append(jobs, buildtest.Gated(buildtest.Independent("wave", 6, 0), wave)...)
	jobs = append(jobs, buildtest.Independent("job", 20, sleep)...)
	for _, j := range buildtest.Independent("mid", 12, sleep) {
		j.After = []string{"hold1"}
		jobs = append(jobs, j)
	}
	for _, j := range buildtest.Independent("late", 16, sleep) {
		j.After = []string{"hold2"}
		jobs = append(jobs, j)
	}
	buildtest.WriteMakefile(t, dir, p, log, jobs)
	b := &build{name: "make", prefix: "", jobs: len(jobs), argv: []string{make44, "-s", "-C", dir}}
	b.start(t, d)

	log.WaitFor(ctx, t, "8 jobs at once", func(r buildtest.Run) bool { return r.Peak() >= 8 })
	shrunk := time.Now()
	d.setBudget(t, 2)
	buildtest.OpenGate(t, wave)
	st, converged := d.waitStatus(t, "the debt to be paid", func(st api.Status) bool {
		return st.Budget == 2 && st.Debt == 0
	})
	t.Logf("budget 8 -> 2: debt paid %v after the change (granted %d, allowance %d)", converged.Sub(shrunk).Round(time.Millisecond), st.Granted, st.Allowance)
	buildtest.OpenGate(t, gate1)
	log.WaitFor(ctx, t, "3 jobs to start on the small budget", func(r buildtest.Run) bool {
		n := 0
		for _, e := range r.Events {
			if e.Start && e.T > converged.UnixNano() {
				n++
			}
		}
		return n >= 3
	})
	raised := time.Now()
	d.setBudget(t, 8)
	buildtest.OpenGate(t, gate2)
	b.wait(ctx, t, log)

	r := log.Run(t)
	before := r.PeakBetween(math.MinInt64, shrunk.UnixNano())
	small := r.PeakBetween(converged.UnixNano(), raised.UnixNano())
	after := r.PeakBetween(raised.UnixNano(), math.MaxInt64)
	smallJobs := 0
	for _, e := range r.Events {
		if e.Start && e.T > converged.UnixNano() && e.T < raised.UnixNano() {
			smallJobs++
		}
	}
	t.Logf("peaks: %d on budget 8, %d once the debt of budget 2 was paid (%d jobs started then), %d after raising it back to 8", before, small, smallJobs, after)
	if p := r.Peak(); p > 8 {
		t.Errorf("%d jobs ran at once under a budget of at most 8", p)
	}
	if small > 2 {
		t.Errorf("after the budget shrank to 2 and the debt was paid, %d jobs ran at once; log:\n%s", small, r)
	}
	if after <= 2 {
		t.Errorf("after raising the budget back to 8, the build never ran more than %d jobs; log:\n%s", after, r)
	}
	d.waitIdle(t)
}

// holders lists the processes other than tokend (pid) that have the file
// at path open, as "pid/comm".
func holders(t *testing.T, path string, tokend int) []string {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(path, &want); err != nil {
		t.Fatal(err)
	}
	var found []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		// tokend's fifo holder (tokend hold-fifos) holds every FIFO, and
		// is no client.
		if err != nil || pid == tokend || comm(pid) == "tokend" {
			continue
		}
		fdDir := filepath.Join("/proc", p.Name(), "fd")
		fds, _ := os.ReadDir(fdDir)
		for _, fd := range fds {
			var st syscall.Stat_t
			if syscall.Stat(filepath.Join(fdDir, fd.Name()), &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
				found = append(found, fmt.Sprintf("%d/%s", pid, comm(pid)))
				break
			}
		}
	}
	return found
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// Issue 3: a make SIGKILLed while it holds tokens loses them; once the last
// holder of its FIFO is gone, tokend writes them off and puts them back in
// the budget, while the lease lives on.
func TestKilledMakesTokensAreReclaimed(t *testing.T) {
	make44 := buildtest.Make44(t)
	p, log := buildtest.BuildProbe(t), buildtest.NewLog(t)
	const budget = 5
	d := startDaemon(t, t.TempDir(), budget)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()

	dir := t.TempDir()
	jobsGate, shellGate := filepath.Join(dir, "jobs.gate"), filepath.Join(dir, "shell.gate")
	buildtest.WriteMakefile(t, dir, p, log, buildtest.Gated(buildtest.Independent("job", budget, 0), jobsGate))
	// The shell keeps tokenctl, and so the lease, alive after make dies.
	script := fmt.Sprintf("%s -s -C %s; while [ ! -e %s ]; do sleep 0.05; done", make44, dir, shellGate)
	b := &build{name: "doomed", prefix: "job", argv: []string{"sh", "-c", script}}
	b.start(t, d)

	log.WaitFor(ctx, t, "every slot of the budget in use", func(r buildtest.Run) bool { return r.Running() == budget })
	st := d.status(t)
	if len(st.Leases) != 1 {
		t.Fatalf("want one lease: %+v", st)
	}
	lease := st.Leases[0]
	if lease.Held != budget-1 {
		t.Fatalf("make runs %d jobs, yet its lease holds %d tokens: %+v", budget, lease.Held, lease)
	}
	var makePid int
	for _, pid := range b.proc.Pids() {
		if comm(pid) == "make" {
			makePid = pid
		}
	}
	if makePid == 0 {
		t.Fatal("no make process found")
	}
	if err := syscall.Kill(makePid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	buildtest.OpenGate(t, jobsGate) // the orphaned jobs end; they hold no tokens
	for {
		h := holders(t, lease.FIFO, d.proc.Cmd.Process.Pid)
		if len(h) == 0 {
			break
		}
		if time.Since(killed) > testDeadline {
			t.Fatalf("the lease's fifo is still held %v after make was killed, by %v", testDeadline, h)
		}
		time.Sleep(2 * time.Millisecond)
	}
	closed := time.Now()
	st, reclaimed := d.waitStatus(t, "the held tokens reclaimed", func(st api.Status) bool { return st.ReclaimedTotal >= lease.Held })
	t.Logf("make killed holding %d tokens; last holder gone %v later; reclaimed %d tokens %v after the last holder closed the fifo",
		lease.Held, closed.Sub(killed).Round(time.Millisecond), st.ReclaimedTotal, reclaimed.Sub(closed).Round(time.Millisecond))
	if st.ReclaimedTotal != lease.Held {
		t.Errorf("reclaimed %d tokens, make held %d", st.ReclaimedTotal, lease.Held)
	}
	if len(st.Leases) != 1 || st.Leases[0].ID != lease.ID || st.Leases[0].Ending || st.Leases[0].Reclaimed != lease.Held {
		t.Errorf("after the reclaim, want lease %s still active with %d reclaimed: %+v", lease.ID, lease.Held, st.Leases)
	}

	buildtest.OpenGate(t, shellGate)
	if err := b.proc.Wait(ctx, t); err != nil {
		t.Errorf("tokenctl run: %v; output:\n%s", err, b.proc.Output())
	}
	st = d.waitIdle(t)
	if st.ReclaimedTotal != lease.Held {
		t.Errorf("reclaimed %d tokens in all, want %d", st.ReclaimedTotal, lease.Held)
	}
}

// Issue 3: tokend killed with SIGKILL in the middle of two builds: the
// builds go on and succeed, a tokend restarted on the same runtime
// directory adopts their leases with their tokens, and the leases end when
// the builds do.
func TestTokendKilledMidBuild(t *testing.T) {
	make44, ninja := buildtest.Make44(t), buildtest.Ninja(t)
	p, log := buildtest.BuildProbe(t), buildtest.NewLog(t)
	const budget = 6
	dir := t.TempDir()
	first := startDaemon(t, dir, budget)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	// Each build's first job holds a slot until the restarted tokend has
	// been checked, so both builds are still running then. The others
	// wait for both builds to be admitted, then hold their slots until
	// tokend is killed, so that jobs are left to run while it is down
	// however slowly the builds got going (a build that finished first,
	// or a ninja that started while the other held every token, which it
	// looks for only when a job of its own ends, would leave none).
	tmp := t.TempDir()
	gate, startGate, goGate := filepath.Join(tmp, "gate"), filepath.Join(tmp, "start"), filepath.Join(tmp, "go")
	jobs := func(prefix string) []buildtest.Job {
		js := []buildtest.Job{{ID: prefix + "gate", Gate: gate}, {ID: prefix + "start", Gate: startGate}}
		for _, j := range buildtest.Gated(buildtest.Independent(prefix, 12, 250*time.Millisecond), goGate) {
			j.After = []string{prefix + "start"}
			js = append(js, j)
		}
		return js
	}
	makeDir, ninjaDir := t.TempDir(), t.TempDir()
	buildtest.WriteMakefile(t, makeDir, p, log, jobs("mk44-"))
	buildtest.WriteNinja(t, ninjaDir, p, log, jobs("ninja-"))
	builds := []*build{
		{name: "make-4.4", prefix: "mk44-", jobs: 14, argv: []string{make44, "-s", "-C", makeDir}},
		{name: "ninja", prefix: "ninja-", jobs: 14, argv: []string{ninja, "--quiet", "-C", ninjaDir}},
	}
	for _, b := range builds {
		b.start(t, first)
	}
	before, _ := first.waitStatus(t, "both builds admitted", func(st api.Status) bool {
		return len(st.Leases) == 2 && st.Leases[0].Admitted && st.Leases[1].Admitted
	})
	buildtest.OpenGate(t, startGate)
	log.WaitFor(ctx, t, "both builds running, every slot in use", func(r buildtest.Run) bool {
		return builds[0].run(t, log).Running() > 0 && builds[1].run(t, log).Running() > 0 && r.Running() == budget
	})
	// No waiting for a quiet moment: tokend saves its state before it
	// answers a registration, after every take and before every grant.
	first.kill9(t)
	killed := log.Run(t)
	buildtest.OpenGate(t, goGate)
	log.WaitFor(ctx, t, "jobs to run while tokend is down", func(r buildtest.Run) bool { return r.Ended() >= killed.Ended()+3 })

	t.Logf("%d jobs ended while tokend was down", log.Run(t).Ended()-killed.Ended())
	second := startDaemon(t, dir, budget)
	st := second.status(t)
	t.Logf("restarted tokend: %d leases, budget %d, allowance %d, granted %d, reclaimed %d, inflated %d", len(st.Leases), st.Budget, st.Allowance, st.Granted, st.ReclaimedTotal, st.InflatedTotal)
	if len(st.Leases) != len(before.Leases) {
		t.Fatalf("restarted tokend has %d leases, want %d: %+v", len(st.Leases), len(before.Leases), st.Leases)
	}
	granted := 0
	for i, l := range st.Leases {
		t.Logf("adopted lease %s %s: granted %d, free %d, held %d, admitted %v", l.ID, l.Name, l.Granted, l.Free, l.Held, l.Admitted)
		if l.ID != before.Leases[i].ID || l.Name != before.Leases[i].Name || !l.Admitted || l.Ending {
			t.Errorf("adopted lease %s %q (admitted %v, ending %v), want %s %q admitted and active", l.ID, l.Name, l.Admitted, l.Ending, before.Leases[i].ID, before.Leases[i].Name)
		}
		if l.Free+l.Held != l.Granted || l.Free < 0 || l.Held < 0 {
			t.Errorf("adopted lease %s: %d free + %d held != %d granted", l.ID, l.Free, l.Held, l.Granted)
		}
		granted += l.Granted
	}
	if granted != st.Granted || st.Granted > st.Budget-st.ActiveLeases || st.ActiveLeases != 2 {
		t.Errorf("restarted tokend: %d granted (leases sum to %d), %d active leases, budget %d: want granted <= budget - active", st.Granted, granted, st.ActiveLeases, st.Budget)
	}
	if st.InvariantViolations != 0 {
		t.Errorf("restarted tokend: %d accounting errors, last: %s", st.InvariantViolations, st.LastViolation)
	}

	buildtest.OpenGate(t, gate)
	for _, b := range builds {
		b.wait(ctx, t, log)
	}
	all := log.Run(t)
	if peak := all.Peak(); peak > budget {
		t.Errorf("%d jobs ran at once under a budget of %d across the restart; log:\n%s", peak, budget, all)
	} else {
		t.Logf("peak concurrency %d under budget %d across the restart", peak, budget)
	}
	st = second.waitIdle(t)
	t.Logf("after the builds: reclaimed %d, inflated %d", st.ReclaimedTotal, st.InflatedTotal)
}

// fallbackLines are the lines tokenctl wrote on stderr.
func tokenctlLines(stderr string) []string {
	var lines []string
	for _, l := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(l, "tokenctl") {
			lines = append(lines, l)
		}
	}
	return lines
}

// Issue 3: a user who is neither root nor in the lease group may read the
// status, but neither take a lease (the command then runs unchanged) nor
// set the budget. Permission comes from the socket peer's credentials.
func TestOtherUserMayOnlyReadStatus(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root, to run tokenctl as another user")
	const budget = 4
	d := startDaemon(t, filepath.Join(buildtest.WorldDir(t), "run"), budget)
	_, tokenctl := binaries(t)
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}

	env := buildtest.CleanEnv("MAKEFLAGS=-k")
	out, errOut, code := runCtl(t, tokenctl, d.sock, nobody, env,
		"run", "--", "sh", "-c", `printf '%s|%s|%s\n' "$(id -u)" "${MAKEFLAGS-unset}" "${CARGO_MAKEFLAGS-unset}"; exit 3`)
	t.Logf("run as uid 65534: exit %d, stdout %q, stderr %q", code, out, errOut)
	if code != 3 {
		t.Errorf("tokenctl run as uid 65534 returned %d, want the command's 3", code)
	}
	if out != "65534|-k|unset\n" {
		t.Errorf("the command saw %q, want it run unchanged as uid 65534 (MAKEFLAGS -k, no CARGO_MAKEFLAGS)", out)
	}
	if lines := tokenctlLines(errOut); len(lines) != 1 || !strings.Contains(lines[0], "may not register leases") || !strings.Contains(lines[0], "running sh without a lease") {
		t.Errorf("tokenctl said %q, want one line saying the lease was refused and sh runs without one", errOut)
	}

	_, errOut, code = runCtl(t, tokenctl, d.sock, nobody, nil, "set", "budget", "2")
	if code == 0 || !strings.Contains(errOut, "may not set the budget") {
		t.Errorf("set budget as uid 65534: exit %d, stderr %q; want refused", code, errOut)
	}

	out, errOut, code = runCtl(t, tokenctl, d.sock, nobody, nil, "status", "--json")
	var st api.Status
	if code != 0 {
		t.Fatalf("status as uid 65534: exit %d: %s", code, errOut)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status as uid 65534: %v\n%s", err, out)
	}
	if st.Budget != budget || len(st.Leases) != 0 || st.InvariantViolations != 0 {
		t.Errorf("status as uid 65534: budget %d, %d leases, %d accounting errors; want %d, 0, 0", st.Budget, len(st.Leases), st.InvariantViolations, budget)
	}
	if _, errOut, code := runCtl(t, tokenctl, d.sock, nobody, nil, "status"); code != 0 {
		t.Errorf("status as uid 65534: exit %d: %s", code, errOut)
	}
	checkIdle(t, d.status(t))
}

// Issue 3: with tokend down, tokenctl run runs the command unchanged, says
// so once, and returns the command's exit status the way a shell would.
func TestTokendDownRunsCommandUnchanged(t *testing.T) {
	make44 := buildtest.Make44(t)
	_, tokenctl := binaries(t)
	p, log := buildtest.BuildProbe(t), buildtest.NewLog(t)
	dir := t.TempDir()
	buildtest.WriteMakefile(t, dir, p, log, buildtest.Independent("job", 4, 50*time.Millisecond))
	writeFile(t, filepath.Join(dir, "fail.mk"), "all:\n\t@exit 7\n")

	// A socket nobody listens on: never created, and left behind by a
	// tokend killed with SIGKILL.
	runtimeDir := t.TempDir()
	d := startDaemon(t, runtimeDir, 4)
	d.kill9(t)
	sockets := map[string]string{"no socket": filepath.Join(t.TempDir(), "tokend.sock"), "stale socket": d.sock}

	for what, sock := range sockets {
		cases := []struct {
			name string
			argv []string
			env  []string
			out  string
			code int
		}{
			{name: "make", argv: []string{make44, "-s", "-C", dir}},
			{name: "failing make", argv: []string{make44, "-s", "-f", filepath.Join(dir, "fail.mk")}, code: 2},
			{name: "exit 7", argv: []string{"sh", "-c", "exit 7"}, code: 7},
			{name: "SIGTERM", argv: []string{"sh", "-c", "kill -TERM $$"}, code: 128 + int(syscall.SIGTERM)},
			{name: "SIGKILL", argv: []string{"sh", "-c", "kill -KILL $$"}, code: 128 + int(syscall.SIGKILL)},
			{name: "environment", argv: []string{"sh", "-c", `printf '%s|%s' "$MAKEFLAGS" "${CARGO_MAKEFLAGS-unset}"`},
				env: []string{"MAKEFLAGS=-k -j3"}, out: "-k -j3|unset"},
		}
		for _, c := range cases {
			os.Truncate(log.Path, 0)
			out, errOut, code := runCtl(t, tokenctl, sock, nil, buildtest.CleanEnv(c.env...), append([]string{"run", "--"}, c.argv...)...)
			if code != c.code {
				t.Errorf("%s, %s: exit %d, want %d; stderr:\n%s", what, c.name, code, c.code, errOut)
			}
			if c.out != "" && out != c.out {
				t.Errorf("%s, %s: the command saw %q, want %q", what, c.name, out, c.out)
			}
			lines := tokenctlLines(errOut)
			if len(lines) != 1 || !strings.Contains(lines[0], "tokend is not reachable") || !strings.Contains(lines[0], "without a lease") {
				t.Errorf("%s, %s: tokenctl said %q, want once that tokend is not reachable and the command runs without a lease", what, c.name, errOut)
			}
			if c.name == "make" {
				r := log.Run(t)
				r.Check(t, 4)
				if r.Peak() != 1 {
					t.Errorf("%s: make without a jobserver ran %d jobs at once, want 1 (unchanged: no -j)", what, r.Peak())
				}
			}
		}
		t.Logf("%s: tokenctl said once: %s", what, "tokend is not reachable ...; running CMD without a lease")
	}

	// The restarted tokend finds nothing to adopt and nothing wrong.
	d = startDaemon(t, runtimeDir, 4)
	checkIdle(t, d.status(t))
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// auto picks the descriptor style for GNU make older than 4.4 whatever
// name it is run under: make-4.3 is how the test tools install it.
func TestChooseStyleFindsOldMakeUnderAnyName(t *testing.T) {
	make43, make44 := buildtest.Make43(t), buildtest.Make44(t)
	dir := t.TempDir()
	for name, target := range map[string]string{"gmake": make43, "mk": make43, "make-4.4.1": make44} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		command string
		want    jobserver.Style
	}{
		{make43, jobserver.StylePipe},
		{make44, jobserver.StyleFIFO},
		{filepath.Join(dir, "gmake"), jobserver.StylePipe},
		{filepath.Join(dir, "mk"), jobserver.StylePipe}, // a link to a make
		{filepath.Join(dir, "make-4.4.1"), jobserver.StyleFIFO},
		{"sh", jobserver.StyleFIFO},
	} {
		got, err := chooseStyle("auto", c.command)
		if err != nil || got != c.want {
			t.Errorf("chooseStyle(auto, %s) = %v, %v; want %v", c.command, got, err, c.want)
		}
	}
}
