package jobserver_test

// The conformance suite drives the real jobserver clients (GNU make 4.3 and
// 4.4.1, ninja 1.13, cargo) against FIFOs made by jobserver.Create, and
// measures what they do from the start and end stamps of their jobs and the
// tokens left in the pool. The facts it pins down are those of the notes on
// jobserver clients (notes/jobserver-clients.md).
//
// Most builds use gated jobs: each job holds its slot until the test opens
// the gate, and the test opens it only once the log shows the expected
// number of jobs running. Nothing depends on how fast the machine is; a
// client that ran too many jobs shows in the peak of the whole log.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/jobserver"
	"golang.org/x/sys/unix"
)

// jobSleep is how long a probe job runs before it waits for its gate, if
// any. Concurrency is read from the log, so it only has to be long enough
// for a job not to be over before the next one starts.
const jobSleep = 250 * time.Millisecond

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newPool is a jobserver FIFO made by jobserver.Create holding n tokens.
func newPool(t *testing.T, n int) *jobserver.FIFO {
	t.Helper()
	f, err := jobserver.Create(filepath.Join(t.TempDir(), "jobserver"), jobserver.FIFOOptions{GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Remove() })
	if err := f.Add(n); err != nil {
		t.Fatal(err)
	}
	return f
}

func free(t *testing.T, f *jobserver.FIFO) int {
	t.Helper()
	n, err := f.Free()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// fifoFlags is the MAKEFLAGS that points a client at f.
func fifoFlags(f *jobserver.FIFO) string {
	return "MAKEFLAGS=" + jobserver.WithAuth("", jobserver.FIFOAuth(f.Path()))
}

// lost waits until every process of the builds has exited and nothing
// holds the FIFO but the server, then returns how many tokens never came
// back: granted minus free.
func lost(ctx context.Context, t *testing.T, f *jobserver.FIFO, procs ...*buildtest.Proc) int {
	t.Helper()
	for _, p := range procs {
		if !p.WaitGone(ctx) {
			t.Fatalf("processes of %s still running: %v", p.Cmd, p.Pids())
		}
	}
	return f.Granted() - free(t, f)
}

// conserved checks that every token came back once the clients are gone.
func conserved(ctx context.Context, t *testing.T, f *jobserver.FIFO, procs ...*buildtest.Proc) {
	t.Helper()
	if n := lost(ctx, t, f, procs...); n != 0 {
		t.Errorf("%d of %d tokens did not come back", n, f.Granted())
	}
}

// A client is one real jobserver client, able to run a graph of probe jobs
// against a pool.
type client struct {
	name string
	// start runs jobs under the client, joined to pool f, with args added
	// to its command line and env to its environment.
	start func(t *testing.T, f *jobserver.FIFO, log *buildtest.Log, jobs []buildtest.Job, args []string, env ...string) *buildtest.Proc
}

var (
	make44 = client{"make-4.4.1", func(t *testing.T, f *jobserver.FIFO, log *buildtest.Log, jobs []buildtest.Job, args []string, env ...string) *buildtest.Proc {
		dir := t.TempDir()
		buildtest.WriteMakefile(t, dir, buildtest.BuildProbe(t), log, jobs)
		cmd := exec.Command(buildtest.Make44(t), append([]string{"-C", dir}, args...)...)
		cmd.Env = buildtest.CleanEnv(append([]string{fifoFlags(f)}, env...)...)
		return buildtest.Start(t, cmd)
	}}
	// make 4.3 reads only pipe auth: it gets the FIFO opened afresh as
	// descriptors 3 and 4.
	make43 = client{"make-4.3", func(t *testing.T, f *jobserver.FIFO, log *buildtest.Log, jobs []buildtest.Job, args []string, env ...string) *buildtest.Proc {
		p, _ := startMake43(t, f, log, jobs, args, env...)
		return p
	}}
	ninja = client{"ninja", func(t *testing.T, f *jobserver.FIFO, log *buildtest.Log, jobs []buildtest.Job, args []string, env ...string) *buildtest.Proc {
		dir := t.TempDir()
		buildtest.WriteNinja(t, dir, buildtest.BuildProbe(t), log, jobs)
		cmd := exec.Command(buildtest.Ninja(t), append([]string{"-C", dir}, args...)...)
		cmd.Env = buildtest.CleanEnv(append([]string{fifoFlags(f)}, env...)...)
		return buildtest.Start(t, cmd)
	}}
	cargo     = cargoClient("cargo", false)
	cargoPipe = cargoClient("cargo(pipe)", true)
)

// cargoClient builds one crate per job; they all take the first job's sleep
// and gate, and are logged as rustc:crateN. With pipe, cargo gets the FIFO
// as inherited descriptors 3 and 4, as under make 4.3.
func cargoClient(name string, pipe bool) client {
	return client{name, func(t *testing.T, f *jobserver.FIFO, log *buildtest.Log, jobs []buildtest.Job, args []string, env ...string) *buildtest.Proc {
		dir := t.TempDir()
		manifest := buildtest.WriteCargoWorkspace(t, dir, "crate", len(jobs))
		cmd := exec.Command(buildtest.Cargo(t), append(buildtest.CargoBuildArgs(manifest), args...)...)
		flags := fifoFlags(f)
		if pipe {
			flags = "MAKEFLAGS=" + jobserver.WithAuth("", jobserver.PipeAuth(3, 4))
			r, w := openPipeEnds(t, f.Path())
			defer r.Close()
			defer w.Close()
			cmd.ExtraFiles = []*os.File{r, w}
		}
		cmd.Env = buildtest.CleanEnv(append(append([]string{flags},
			buildtest.CargoEnv(buildtest.BuildProbe(t), log, jobs[0].Sleep, jobs[0].Gate, filepath.Join(dir, "target"))...), env...)...)
		return buildtest.Start(t, cmd)
	}}
}

// startMake43 runs make 4.3 with the FIFO passed the pipe way, and returns
// the read end it was given (still open here) as well.
func startMake43(t *testing.T, f *jobserver.FIFO, log *buildtest.Log, jobs []buildtest.Job, args []string, env ...string) (*buildtest.Proc, *os.File) {
	dir := t.TempDir()
	buildtest.WriteMakefile(t, dir, buildtest.BuildProbe(t), log, jobs)
	r, w := openPipeEnds(t, f.Path())
	t.Cleanup(func() { r.Close() })
	cmd := exec.Command(buildtest.Make43(t), append([]string{"-C", dir}, args...)...)
	cmd.Env = buildtest.CleanEnv(append([]string{"MAKEFLAGS=" + jobserver.WithAuth("", jobserver.PipeAuth(3, 4))}, env...)...)
	cmd.ExtraFiles = []*os.File{r, w}
	p := buildtest.Start(t, cmd)
	w.Close()
	return p, r
}

// openPipeEnds opens a FIFO the way a parent hands a pipe-style jobserver
// to a child: a fresh read end and write end, blocking.
func openPipeEnds(t *testing.T, path string) (r, w *os.File) {
	t.Helper()
	rfd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	wfd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(rfd), "jobserver-r"), os.NewFile(uintptr(wfd), "jobserver-w")
}

// gatedJobs is n jobs that hold their slot until gate exists.
func gatedJobs(t *testing.T, prefix string, n int) ([]buildtest.Job, string) {
	gate := filepath.Join(t.TempDir(), "gate")
	return buildtest.Gated(buildtest.Independent(prefix, n, jobSleep), gate), gate
}

// saturate waits until want jobs run at once and the pool is empty, then
// lets the jobs finish.
func saturate(ctx context.Context, t *testing.T, f *jobserver.FIFO, log *buildtest.Log, want int, gate string) {
	t.Helper()
	log.WaitFor(ctx, t, "the build to hold every slot", func(r buildtest.Run) bool {
		return r.Running() == want && free(t, f) == 0
	})
	buildtest.OpenGate(t, gate)
}

func wait(ctx context.Context, t *testing.T, p *buildtest.Proc) {
	t.Helper()
	if err := p.Wait(ctx, t); err != nil {
		t.Fatalf("%s: %v; output:\n%s", p.Cmd, err, p.Output())
	}
}

// Each client root with N tokens runs exactly N+1 jobs at once, and every
// token comes back.
func TestConformanceNPlusOne(t *testing.T) {
	const tokens = 3
	for _, c := range []client{make44, make43, ninja, cargo, cargoPipe} {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t)
			f := newPool(t, tokens)
			log := buildtest.NewLog(t)
			jobs, gate := gatedJobs(t, "j", 2*(tokens+1)+1)
			p := c.start(t, f, log, jobs, nil)
			saturate(ctx, t, f, log, tokens+1, gate)
			wait(ctx, t, p)
			run := log.Run(t)
			run.Check(t, len(jobs))
			if got := run.Peak(); got != tokens+1 {
				t.Errorf("peak concurrency %d, want N+1 = %d; log:\n%s", got, tokens+1, run)
			}
			conserved(ctx, t, f, p)
			t.Logf("%s: %d tokens -> peak %d jobs; output:\n%s", c.name, tokens, run.Peak(), p.Output())
		})
	}
}

// Two client roots on one FIFO each have an implicit slot: N+2.
func TestConformanceTwoRoots(t *testing.T) {
	const tokens = 3
	for _, pair := range [][2]client{{make44, make44}, {make44, ninja}, {ninja, cargo}} {
		t.Run(pair[0].name+"+"+pair[1].name, func(t *testing.T) {
			ctx := ctxFor(t)
			f := newPool(t, tokens)
			log := buildtest.NewLog(t)
			gate := filepath.Join(t.TempDir(), "gate")
			a := buildtest.Gated(buildtest.Independent("a", tokens+3, jobSleep), gate)
			b := buildtest.Gated(buildtest.Independent("b", tokens+3, jobSleep), gate)
			pa := pair[0].start(t, f, log, a, nil)
			pb := pair[1].start(t, f, log, b, nil)
			saturate(ctx, t, f, log, tokens+2, gate)
			wait(ctx, t, pa)
			wait(ctx, t, pb)
			run := log.Run(t)
			run.Check(t, len(a)+len(b))
			if got := run.Peak(); got != tokens+2 {
				t.Errorf("peak concurrency %d, want N+2 = %d; log:\n%s", got, tokens+2, run)
			}
			conserved(ctx, t, f, pa, pb)
		})
	}
}

// make 4.3 cannot read fifo: auth, and stops with its internal error.
func TestConformanceMake43RejectsFIFO(t *testing.T) {
	ctx := ctxFor(t)
	f := newPool(t, 2)
	log := buildtest.NewLog(t)
	dir := t.TempDir()
	buildtest.WriteMakefile(t, dir, buildtest.BuildProbe(t), log, buildtest.Independent("j", 3, jobSleep))
	cmd := exec.Command(buildtest.Make43(t), "-C", dir)
	cmd.Env = buildtest.CleanEnv(fifoFlags(f))
	p := buildtest.Start(t, cmd)
	err := p.Wait(ctx, t)
	want := "invalid --jobserver-auth string 'fifo:" + f.Path() + "'"
	if err == nil || !strings.Contains(p.Output(), want) {
		t.Errorf("make 4.3 given fifo: auth: %v, output:\n%s\nwant a failure saying %q", err, p.Output(), want)
	}
	if n := log.Run(t).Started(); n != 0 {
		t.Errorf("make 4.3 ran %d jobs", n)
	}
	conserved(ctx, t, f, p)
	t.Logf("make 4.3 given fifo: auth (%v):\n%s", err, p.Output())
}

// make 4.3 sets O_NONBLOCK on the read end it inherits and leaves it set:
// that end's description is shared with whoever passed it.
func TestConformanceMake43LeavesNonblocking(t *testing.T) {
	ctx := ctxFor(t)
	f := newPool(t, 1)
	log := buildtest.NewLog(t)
	p, r := startMake43(t, f, log, buildtest.Independent("j", 2, 0), nil)
	wait(ctx, t, p)
	fl, err := unix.FcntlInt(r.Fd(), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl&unix.O_NONBLOCK == 0 {
		t.Errorf("read end passed to make 4.3 is blocking after it exited; the note says make 4.3 leaves O_NONBLOCK set")
	}
	conserved(ctx, t, f, p)
}

// A -jN on the command line takes make and ninja out of the jobserver: they
// run N jobs whatever the pool holds, and never touch it. cargo ignores
// its -j when it inherits a jobserver, with a warning.
func TestConformanceCommandLineJobs(t *testing.T) {
	const tokens = 3 // the pool would allow 4 at once
	for _, c := range []struct {
		client client
		jobs   int    // the -j given
		want   int    // measured concurrency
		optOut bool   // the client leaves the pool alone
		says   string // in the client's output
		not    string // not in the client's output
	}{
		{make44, 2, 2, true, "warning: -j2 forced in submake: resetting jobserver mode.", ""},
		{make43, 2, 2, true, "warning: -j2 forced in submake: resetting jobserver mode.", ""},
		{ninja, 2, 2, true, "", "Jobserver mode detected"},
		{ninja, 1, 1, true, "", "Jobserver mode detected"},
		{cargo, 1, tokens + 1, false, "warning: a `-j` argument was passed to Cargo but Cargo is also configured with an external jobserver in its environment, ignoring the `-j` parameter", ""},
	} {
		t.Run(c.client.name+"/-j"+strconv.Itoa(c.jobs), func(t *testing.T) {
			ctx := ctxFor(t)
			f := newPool(t, tokens)
			log := buildtest.NewLog(t)
			jobs, gate := gatedJobs(t, "j", tokens+3)
			p := c.client.start(t, f, log, jobs, []string{"-j" + strconv.Itoa(c.jobs)})
			wantFree := 0
			if c.optOut {
				wantFree = tokens
			}
			log.WaitFor(ctx, t, "the build to fill its slots", func(r buildtest.Run) bool {
				return r.Running() == c.want && free(t, f) == wantFree
			})
			buildtest.OpenGate(t, gate)
			wait(ctx, t, p)
			run := log.Run(t)
			run.Check(t, len(jobs))
			if got := run.Peak(); got != c.want {
				t.Errorf("peak concurrency %d, want %d; log:\n%s", got, c.want, run)
			}
			out := p.Output()
			if c.says != "" && !strings.Contains(out, c.says) {
				t.Errorf("output does not say %q:\n%s", c.says, out)
			}
			if c.not != "" && strings.Contains(out, c.not) {
				t.Errorf("output says %q:\n%s", c.not, out)
			}
			conserved(ctx, t, f, p)
			t.Logf("-j%d with a pool of %d: peak %d; output:\n%s", c.jobs, tokens, run.Peak(), out)
		})
	}
}

// A -j inside MAKEFLAGS does not take a client out of the jobserver: only
// a -j on its own command line does.
func TestConformanceMakeflagsJobs(t *testing.T) {
	const tokens = 3
	for _, c := range []client{make44, ninja, cargo} {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t)
			f := newPool(t, tokens)
			log := buildtest.NewLog(t)
			jobs, gate := gatedJobs(t, "j", tokens+3)
			p := c.start(t, f, log, jobs, nil, "MAKEFLAGS= -j2 "+jobserver.FIFOAuth(f.Path()).Flag())
			saturate(ctx, t, f, log, tokens+1, gate)
			wait(ctx, t, p)
			run := log.Run(t)
			run.Check(t, len(jobs))
			if got := run.Peak(); got != tokens+1 {
				t.Errorf("peak concurrency %d, want N+1 = %d; log:\n%s", got, tokens+1, run)
			}
			conserved(ctx, t, f, p)
		})
	}
}

// ninjaDefaultJobs is the parallelism ninja uses without -j or a
// jobserver, as its usage text states it.
func ninjaDefaultJobs(t *testing.T, ninjaPath string) int {
	out, _ := exec.Command(ninjaPath, "-h").CombinedOutput()
	m := regexp.MustCompile(`\[default=(\d+) on this system\]`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("ninja -h does not state its default parallelism:\n%s", out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// When the FIFO is missing, make 4.4.1 says so and runs -j1, ninja says so
// and runs at its full default parallelism, and cargo silently uses a pool
// of its own (one job per CPU). make 4.3 handed descriptors that are not
// open runs -j1 with a warning.
func TestConformanceMissingFIFO(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	for _, c := range []struct {
		name  string
		start func(t *testing.T, log *buildtest.Log, jobs []buildtest.Job) *buildtest.Proc
		want  func(t *testing.T) int
		says  []string
		not   string
	}{
		{"make-4.4.1", func(t *testing.T, log *buildtest.Log, jobs []buildtest.Job) *buildtest.Proc {
			dir := t.TempDir()
			buildtest.WriteMakefile(t, dir, buildtest.BuildProbe(t), log, jobs)
			cmd := exec.Command(buildtest.Make44(t), "-C", dir)
			cmd.Env = buildtest.CleanEnv("MAKEFLAGS=" + jobserver.FIFOAuth(missing).Flag())
			return buildtest.Start(t, cmd)
		}, func(*testing.T) int { return 1 }, []string{
			"cannot open jobserver " + missing + ": No such file or directory",
			"warning: jobserver unavailable: using -j1.  Add '+' to parent make rule.",
		}, ""},
		{"make-4.3", func(t *testing.T, log *buildtest.Log, jobs []buildtest.Job) *buildtest.Proc {
			dir := t.TempDir()
			buildtest.WriteMakefile(t, dir, buildtest.BuildProbe(t), log, jobs)
			cmd := exec.Command(buildtest.Make43(t), "-C", dir)
			cmd.Env = buildtest.CleanEnv("MAKEFLAGS=" + jobserver.PipeAuth(3, 4).Flag()) // 3 and 4 are not open
			return buildtest.Start(t, cmd)
		}, func(*testing.T) int { return 1 }, []string{
			"warning: jobserver unavailable: using -j1.  Add '+' to parent make rule.",
		}, ""},
		{"ninja", func(t *testing.T, log *buildtest.Log, jobs []buildtest.Job) *buildtest.Proc {
			dir := t.TempDir()
			buildtest.WriteNinja(t, dir, buildtest.BuildProbe(t), log, jobs)
			cmd := exec.Command(buildtest.Ninja(t), "-C", dir)
			cmd.Env = buildtest.CleanEnv("MAKEFLAGS=" + jobserver.FIFOAuth(missing).Flag())
			return buildtest.Start(t, cmd)
		}, func(t *testing.T) int { return ninjaDefaultJobs(t, buildtest.Ninja(t)) }, []string{
			"ninja: Jobserver mode detected: --jobserver-auth=fifo:" + missing,
			"ninja: error: Could not initialize jobserver: Error opening fifo for reading: No such file or directory",
		}, ""},
		{"cargo", func(t *testing.T, log *buildtest.Log, jobs []buildtest.Job) *buildtest.Proc {
			dir := t.TempDir()
			manifest := buildtest.WriteCargoWorkspace(t, dir, "crate", len(jobs))
			cmd := exec.Command(buildtest.Cargo(t), buildtest.CargoBuildArgs(manifest)...)
			cmd.Env = buildtest.CleanEnv(append([]string{"MAKEFLAGS=" + jobserver.FIFOAuth(missing).Flag()},
				buildtest.CargoEnv(buildtest.BuildProbe(t), log, jobs[0].Sleep, jobs[0].Gate, filepath.Join(dir, "target"))...)...)
			return buildtest.Start(t, cmd)
		}, func(*testing.T) int { return runtime.NumCPU() }, nil, "jobserver"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t)
			want := c.want(t)
			log := buildtest.NewLog(t)
			jobs, gate := gatedJobs(t, "j", want+2)
			p := c.start(t, log, jobs)
			log.WaitFor(ctx, t, "the build to fill its slots", func(r buildtest.Run) bool { return r.Running() == want })
			buildtest.OpenGate(t, gate)
			wait(ctx, t, p)
			run := log.Run(t)
			run.Check(t, len(jobs))
			if got := run.Peak(); got != want {
				t.Errorf("peak concurrency %d, want %d; log:\n%s", got, want, run)
			}
			for _, s := range c.says {
				if !strings.Contains(p.Output(), s) {
					t.Errorf("output does not say %q:\n%s", s, p.Output())
				}
			}
			if c.not != "" && strings.Contains(p.Output(), c.not) {
				t.Errorf("output mentions %q:\n%s", c.not, p.Output())
			}
			t.Logf("%s without its jobserver: peak %d; output:\n%s", c.name, run.Peak(), p.Output())
		})
	}
}

// copyExecutable copies the executable src to dst, for a client run as
// another user who cannot read where src lives.
func copyExecutable(t *testing.T, src, dst string) string {
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// A user without permission on the FIFO (nobody, against root's 0600 FIFO)
// cannot open it: make 4.4.1 says so and runs -j1, ninja says so and runs
// at full default parallelism. Given to nobody's group with mode 0660, the
// same FIFO works. (cargo is not run as nobody: its toolchain lives under
// /root, which nobody cannot read.)
func TestConformanceNoPermission(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root, to run a client as another user")
	const tokens = 3
	for _, c := range []struct {
		name string
		tool func(testing.TB) string
		gen  func(testing.TB, string, *buildtest.Probe, *buildtest.Log, []buildtest.Job) string
		opts jobserver.FIFOOptions
		want func(*testing.T, string) int
		says []string
	}{
		{"make-4.4.1", buildtest.Make44, buildtest.WriteMakefile, jobserver.FIFOOptions{Mode: 0o600, GID: -1},
			func(*testing.T, string) int { return 1 }, []string{
				"cannot open jobserver %s: Permission denied",
				"warning: jobserver unavailable: using -j1.  Add '+' to parent make rule.",
			}},
		{"ninja", buildtest.Ninja, buildtest.WriteNinja, jobserver.FIFOOptions{Mode: 0o600, GID: -1},
			ninjaDefaultJobs, []string{
				"ninja: error: Could not initialize jobserver: Error opening fifo for reading: Permission denied",
			}},
		// The control: the FIFO given to nobody's group, mode 0660.
		{"make-4.4.1/group", buildtest.Make44, buildtest.WriteMakefile, jobserver.FIFOOptions{Mode: 0o660, GID: buildtest.Nobody},
			func(*testing.T, string) int { return tokens + 1 }, nil},
		{"ninja/group", buildtest.Ninja, buildtest.WriteNinja, jobserver.FIFOOptions{Mode: 0o660, GID: buildtest.Nobody},
			func(*testing.T, string) int { return tokens + 1 }, []string{"ninja: Jobserver mode detected"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t)
			dir := buildtest.WorldDir(t)
			tool := copyExecutable(t, c.tool(t), filepath.Join(dir, filepath.Base(c.tool(t))))
			probe := buildtest.BuildProbe(t).CopyTo(t, dir)
			f, err := jobserver.Create(filepath.Join(dir, "jobserver"), c.opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Remove() })
			if err := f.Add(tokens); err != nil {
				t.Fatal(err)
			}
			log := buildtest.NewLogIn(t, dir)
			build := filepath.Join(dir, "build")
			if err := os.Mkdir(build, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(build, buildtest.Nobody, buildtest.Nobody); err != nil {
				t.Fatal(err)
			}
			want := c.want(t, tool)
			gate := filepath.Join(dir, "gate")
			jobs := buildtest.Gated(buildtest.Independent("j", want+2, jobSleep), gate)
			c.gen(t, build, probe, log, jobs)
			cmd := exec.Command(tool, "-C", build)
			cmd.Env = buildtest.CleanEnv(fifoFlags(f), "HOME="+build)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: buildtest.Nobody, Gid: buildtest.Nobody, Groups: []uint32{}}}
			p := buildtest.Start(t, cmd)
			wantFree := tokens
			if want == tokens+1 {
				wantFree = 0
			}
			log.WaitFor(ctx, t, "the build to fill its slots", func(r buildtest.Run) bool {
				return r.Running() == want && free(t, f) == wantFree
			})
			buildtest.OpenGate(t, gate)
			wait(ctx, t, p)
			run := log.Run(t)
			run.Check(t, len(jobs))
			if got := run.Peak(); got != want {
				t.Errorf("peak concurrency %d, want %d; log:\n%s", got, want, run)
			}
			for _, s := range c.says {
				if strings.Contains(s, "%s") {
					s = fmt.Sprintf(s, f.Path())
				}
				if !strings.Contains(p.Output(), s) {
					t.Errorf("output does not say %q:\n%s", s, p.Output())
				}
			}
			conserved(ctx, t, f, p)
			t.Logf("%s as nobody on a %04o root FIFO of group %d: peak %d; output:\n%s", c.name, c.opts.Mode, c.opts.GID, run.Peak(), p.Output())
		})
	}
}

// make 4.4 opens the FIFO read-only with a blocking open(2), which waits
// for a writer: on a bare mkfifo FIFO nobody holds open it hangs before
// running anything. A jobserver.Create FIFO always has the server as a
// writer, so the same make runs.
func TestConformanceNoWriter(t *testing.T) {
	ctx := ctxFor(t)
	make := buildtest.Make44(t)
	probe := buildtest.BuildProbe(t)

	bare := filepath.Join(t.TempDir(), "bare")
	if err := unix.Mkfifo(bare, 0o600); err != nil {
		t.Fatal(err)
	}
	log := buildtest.NewLog(t)
	dir := t.TempDir()
	buildtest.WriteMakefile(t, dir, probe, log, buildtest.Independent("j", 2, 0))
	cmd := exec.Command(make, "-C", dir)
	cmd.Env = buildtest.CleanEnv("MAKEFLAGS=" + jobserver.FIFOAuth(bare).Flag())
	p := buildtest.Start(t, cmd)
	// /proc/PID/syscall names the system call a process is blocked in.
	stuckIn(ctx, t, p, unix.SYS_OPENAT, "open(2) with no writer on the FIFO")
	if n := log.Run(t).Started(); n != 0 {
		t.Errorf("make ran %d jobs while hanging", n)
	}
	p.Kill()
	t.Logf("make 4.4.1 on a bare FIFO: blocked in open(2) for 500ms, killed")

	// The same make on a FIFO from jobserver.Create, even an empty one.
	f := newPool(t, 0)
	log = buildtest.NewLog(t)
	dir = t.TempDir()
	buildtest.WriteMakefile(t, dir, probe, log, buildtest.Independent("j", 2, 0))
	cmd = exec.Command(make, "-C", dir)
	cmd.Env = buildtest.CleanEnv(fifoFlags(f))
	p = buildtest.Start(t, cmd)
	wait(ctx, t, p)
	run := log.Run(t)
	run.Check(t, 2)
	if run.Peak() != 1 {
		t.Errorf("peak %d on an empty pool, want 1 (the implicit slot)", run.Peak())
	}
	conserved(ctx, t, f, p)
}

// Token loss when a client is signalled while it holds tokens, as the note
// records it: true means the tokens it held are lost, false that it gives
// them back.
var lossTable = map[string]map[syscall.Signal]bool{
	"make-4.3":   {syscall.SIGINT: false, syscall.SIGTERM: false, syscall.SIGKILL: true},
	"make-4.4.1": {syscall.SIGINT: true, syscall.SIGTERM: true, syscall.SIGKILL: true},
	"ninja":      {syscall.SIGINT: false, syscall.SIGTERM: false, syscall.SIGKILL: true},
	"cargo":      {syscall.SIGINT: true, syscall.SIGTERM: true, syscall.SIGKILL: true},
}

// A client holding N tokens is sent SIGINT, SIGTERM or SIGKILL (the client
// process alone, as kill(1) or the OOM killer would; its jobs are then let
// finish, and anything left is killed). Once every process has exited,
// granted minus free is what was lost.
func TestConformanceSignals(t *testing.T) {
	const tokens = 2
	for _, c := range []client{make43, make44, ninja, cargo} {
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGKILL} {
			for _, group := range []bool{false, true} {
				name := c.name + "/" + unix.SignalName(sig)
				if group {
					name += "/group"
				}
				t.Run(name, func(t *testing.T) {
					ctx := ctxFor(t)
					f := newPool(t, tokens)
					log := buildtest.NewLog(t)
					jobs, gate := gatedJobs(t, "j", tokens+3)
					p := c.start(t, f, log, jobs, nil)
					log.WaitFor(ctx, t, "the build to hold every token", func(r buildtest.Run) bool {
						return r.Running() == tokens+1 && free(t, f) == 0
					})
					if group {
						if err := syscall.Kill(-p.Cmd.Process.Pid, sig); err != nil {
							t.Fatal(err)
						}
					} else if err := p.Signal(sig); err != nil {
						t.Fatal(err)
					}
					buildtest.OpenGate(t, gate)
					err := p.Wait(ctx, t)
					if err == nil {
						t.Errorf("%s exited 0 after %v", c.name, sig)
					}
					p.Kill() // whatever is left of the build
					got := lost(ctx, t, f, p)
					want := 0
					if lossTable[c.name][sig] {
						want = tokens
					}
					if got != want {
						t.Errorf("%s after %v: %d of %d held tokens lost, the note says %d", c.name, sig, got, tokens, want)
					}
					t.Logf("%s after %v (%v): lost %d of %d; ran %d jobs; output:\n%s", c.name, sig, err, got, tokens, log.Run(t).Started(), p.Output())
				})
			}
		}
	}
}

// One job of a client holding N tokens dies of SIGINT (the probe itself,
// under ninja's shell, which then dies of it too). make gives back that
// job's token and keeps the others while their jobs run. ninja takes it
// for the user's interrupt: it puts its tokens back at once, every one or
// all but one, which never comes back, and waits for its other jobs,
// which run on without tokens.
func TestConformanceJobInterrupted(t *testing.T) {
	const tokens = 3
	for _, c := range []struct {
		client client
		// free tokens while the other jobs still run: from least to most;
		// as many as are short of most may be lost
		least, most int
	}{{make43, 1, 1}, {make44, 1, 1}, {ninja, tokens - 1, tokens}} {
		t.Run(c.client.name, func(t *testing.T) {
			ctx := ctxFor(t)
			f := newPool(t, tokens)
			log := buildtest.NewLog(t)
			jobs, gate := gatedJobs(t, "j", tokens+3)
			p := c.client.start(t, f, log, jobs, nil)
			log.WaitFor(ctx, t, "the build to hold every token", func(r buildtest.Run) bool {
				return r.Running() == tokens+1 && free(t, f) == 0
			})
			job := 0
			for _, pid := range p.Pids() {
				if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "probe" {
					job = pid
					break
				}
			}
			if job == 0 {
				t.Fatalf("no probe job among %v", p.Pids())
			}
			if err := syscall.Kill(job, syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			var back int
			log.WaitFor(ctx, t, fmt.Sprintf("%d to %d tokens free while the other %d jobs run", c.least, c.most, tokens), func(r buildtest.Run) bool {
				back = free(t, f)
				return r.Running() == tokens && back >= c.least && back <= c.most
			})
			buildtest.OpenGate(t, gate)
			p.Wait(ctx, t)
			// ninja may still have been putting tokens back when they
			// were counted.
			got, most := lost(ctx, t, f, p), min(tokens-back, c.most-c.least)
			if got > most {
				t.Errorf("%s: %d tokens lost after a job died of SIGINT, want at most %d (%d were free while its other jobs ran)", c.client.name, got, most, back)
			}
			t.Logf("%s: %d tokens free while %d jobs still ran; %d lost in the end", c.client.name, back, tokens, got)
		})
	}
}

// Tokens added while a build waits for them raise its concurrency: make,
// blocked reading the FIFO, starts jobs at once; ninja only looks at the
// FIFO when one of its own jobs finishes.
func TestConformanceAddMidBuild(t *testing.T) {
	const added = 3
	for _, c := range []struct {
		client      client
		immediately bool // starts jobs before any job ends
	}{{make44, true}, {make43, true}, {ninja, false}, {cargo, true}} {
		t.Run(c.client.name, func(t *testing.T) {
			ctx := ctxFor(t)
			f := newPool(t, 0)
			log := buildtest.NewLog(t)
			jobs, gate := gatedJobs(t, "j", 2*(added+1))
			p := c.client.start(t, f, log, jobs, nil)
			log.WaitFor(ctx, t, "the first job", func(r buildtest.Run) bool { return r.Running() == 1 })
			added := added
			tAdd := time.Now().UnixNano()
			if err := f.Add(added); err != nil {
				t.Fatal(err)
			}
			if c.immediately {
				saturate(ctx, t, f, log, added+1, gate)
			} else {
				// ninja leaves the new tokens alone while its job runs.
				time.Sleep(300 * time.Millisecond)
				if n := free(t, f); n != added {
					t.Errorf("%s took %d of the new tokens before any job ended", c.client.name, added-n)
				}
				buildtest.OpenGate(t, gate)
			}
			wait(ctx, t, p)
			run := log.Run(t)
			run.Check(t, len(jobs))
			if got := run.PeakBetween(math.MinInt64, tAdd); got != 1 {
				t.Errorf("peak %d before the tokens came, want 1; log:\n%s", got, run)
			}
			if got := run.PeakBetween(tAdd, math.MaxInt64); got != added+1 {
				t.Errorf("peak %d after %d tokens came, want %d; log:\n%s", got, added, added+1, run)
			}
			firstStart, firstEnd := int64(math.MaxInt64), int64(math.MaxInt64)
			for _, e := range run.Events {
				if e.T < tAdd {
					continue
				}
				if e.Start {
					firstStart = min(firstStart, e.T)
				} else {
					firstEnd = min(firstEnd, e.T)
				}
			}
			if got := firstStart < firstEnd; got != c.immediately {
				t.Errorf("%s started a job before any job ended: %v, want %v; log:\n%s", c.client.name, got, c.immediately, run)
			}
			conserved(ctx, t, f, p)
		})
	}
}

// Tokens taken back while a build runs lower its concurrency. They can
// only be taken while free: here while the build runs a single bottleneck
// job, after which it is back to its implicit slot alone.
func TestConformanceTakeMidBuild(t *testing.T) {
	const tokens = 3
	for _, c := range []client{make44, make43, ninja} {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t)
			f := newPool(t, tokens)
			log := buildtest.NewLog(t)
			dir := t.TempDir()
			gateA, gateMid := filepath.Join(dir, "a"), filepath.Join(dir, "mid")
			wide := buildtest.Gated(buildtest.Independent("a", tokens+1, jobSleep), gateA)
			var after []string
			for _, j := range wide {
				after = append(after, j.ID)
			}
			mid := buildtest.Job{ID: "mid", Sleep: 0, Gate: gateMid, After: after}
			tail := buildtest.Independent("b", tokens+1, jobSleep)
			for i := range tail {
				tail[i].After = []string{"mid"}
			}
			jobs := append(append(wide, mid), tail...)
			p := c.start(t, f, log, jobs, nil)
			saturate(ctx, t, f, log, tokens+1, gateA)
			log.WaitFor(ctx, t, "the bottleneck job alone, with every token back", func(r buildtest.Run) bool {
				return r.Running() == 1 && r.Filter(func(id string) bool { return id == "mid" }).Started() == 1 && free(t, f) == tokens
			})
			tTake := time.Now().UnixNano()
			if n, err := f.Take(tokens); err != nil || n != tokens {
				t.Fatalf("Take(%d) = %d, %v", tokens, n, err)
			}
			buildtest.OpenGate(t, gateMid)
			wait(ctx, t, p)
			run := log.Run(t)
			run.Check(t, len(jobs))
			if got := run.PeakBetween(math.MinInt64, tTake); got != tokens+1 {
				t.Errorf("peak %d before the tokens were taken, want %d; log:\n%s", got, tokens+1, run)
			}
			if got := run.PeakBetween(tTake, math.MaxInt64); got != 1 {
				t.Errorf("peak %d after every token was taken, want 1; log:\n%s", got, run)
			}
			wantCounts(t, f, 0, 0)
			conserved(ctx, t, f, p)
		})
	}
}

func wantCounts(t *testing.T, f *jobserver.FIFO, free, granted int) {
	t.Helper()
	n, err := f.Free()
	if err != nil || n != free || f.Granted() != granted {
		t.Errorf("free %d (%v), granted %d; want %d and %d", n, err, f.Granted(), free, granted)
	}
}

// A top make whose recipes run a sub-make, ninja and cargo shares one pool
// with all of them: each sub-build's implicit slot is the slot its parent
// ran it in, so the whole tree never runs more than N+1 jobs.
func TestConformanceNesting(t *testing.T) {
	const tokens = 3
	ctx := ctxFor(t)
	f := newPool(t, tokens)
	log := buildtest.NewLog(t)
	dir := t.TempDir()
	n := buildtest.Nested{Ninja: buildtest.Ninja(t), Cargo: buildtest.Cargo(t), Jobs: 4, TopJobs: 2, Sleep: jobSleep}
	buildtest.WriteNested(t, dir, buildtest.BuildProbe(t), log, n)
	cmd := exec.Command(buildtest.Make44(t), "-C", dir)
	cmd.Env = buildtest.CleanEnv(fifoFlags(f))
	p := buildtest.Start(t, cmd)
	wait(ctx, t, p)
	run := log.Run(t)
	run.Check(t, 3*n.Jobs+n.TopJobs)
	if got := run.Peak(); got > tokens+1 || got < 2 {
		t.Errorf("peak concurrency across the tree %d, want 2..%d; log:\n%s", got, tokens+1, run)
	}
	for _, prefix := range []string{"make-", "ninja-", "rustc:", "top-"} {
		sub := run.Filter(func(id string) bool { return strings.HasPrefix(id, prefix) })
		t.Logf("%-7s %d jobs, peak %d", prefix, sub.Started(), sub.Peak())
	}
	conserved(ctx, t, f, p)
	t.Logf("nested build with %d tokens: peak %d across %d jobs; output:\n%s", tokens, run.Peak(), run.Started(), p.Output())
}

// The ceiling: 65,535 tokens. A pool that full works: Add and Free see
// them, a client drains it, and real clients run on it and give every token
// back. That needs the FIFO's bigger pipe: on a pipe of the default 64 KiB
// holding 65,535 tokens, make blocks for good writing back a token it read
// (see TestCeilingInAnyOrder for why).
func TestConformanceCeiling(t *testing.T) {
	ctx := ctxFor(t)
	f := newPool(t, 0)
	if err := f.Add(jobserver.MaxTokens + 1); err == nil || !strings.Contains(err.Error(), "ceiling of 65535") {
		t.Fatalf("Add(65536) = %v, want a refusal naming the ceiling", err)
	}
	if err := f.Add(jobserver.MaxTokens); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, f, jobserver.MaxTokens, jobserver.MaxTokens)
	if err := f.Add(1); err == nil || !strings.Contains(err.Error(), "ceiling of 65535") {
		t.Fatalf("Add(1) past the ceiling = %v", err)
	}
	c, err := jobserver.Dial(jobserver.FIFOAuth(f.Path()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	slots := make([]jobserver.Slot, 0, jobserver.MaxTokens+1)
	for range jobserver.MaxTokens + 1 {
		s, err := c.Acquire(ctx)
		if err != nil {
			t.Fatalf("after %d slots: %v", len(slots), err)
		}
		slots = append(slots, s)
	}
	wantCounts(t, f, 0, jobserver.MaxTokens)
	// Drained: one more waits until its context ends.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = c.Acquire(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Acquire on a drained pool: %v", err)
	}
	for _, s := range slots {
		if err := c.Release(s); err != nil {
			t.Fatal(err)
		}
	}
	wantCounts(t, f, jobserver.MaxTokens, jobserver.MaxTokens)

	for _, cl := range []client{make44, make43, ninja, cargo} {
		t.Run(cl.name, func(t *testing.T) {
			log := buildtest.NewLog(t)
			jobs, gate := gatedJobs(t, "j", 4)
			p := cl.start(t, f, log, jobs, nil)
			log.WaitFor(ctx, t, "every job", func(r buildtest.Run) bool { return r.Running() == len(jobs) })
			buildtest.OpenGate(t, gate)
			wait(ctx, t, p)
			log.Run(t).Check(t, len(jobs))
			conserved(ctx, t, f, p)
		})
	}
}

// make 4.4.1 on a bare FIFO (default pipe size) holding 65,535 tokens: its
// jobs run, then it blocks in write(2) giving a token back.
func TestConformanceCeilingDefaultPipe(t *testing.T) {
	ctx := ctxFor(t)
	bare := filepath.Join(t.TempDir(), "bare")
	if err := unix.Mkfifo(bare, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(bare, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if size, _ := unix.FcntlInt(uintptr(fd), unix.F_GETPIPE_SZ, 0); size != 65536 || os.Getpagesize() != 4096 {
		t.Skipf("default pipe of %d bytes in pages of %d: not the case measured", size, os.Getpagesize())
	}
	if n, err := unix.Write(fd, make([]byte, jobserver.MaxTokens)); n != jobserver.MaxTokens {
		t.Fatalf("fill: %d, %v", n, err)
	}
	log := buildtest.NewLog(t)
	dir := t.TempDir()
	jobs, gate := gatedJobs(t, "j", 4)
	buildtest.WriteMakefile(t, dir, buildtest.BuildProbe(t), log, jobs)
	cmd := exec.Command(buildtest.Make44(t), "-C", dir)
	cmd.Env = buildtest.CleanEnv("MAKEFLAGS=" + jobserver.FIFOAuth(bare).Flag())
	p := buildtest.Start(t, cmd)
	log.WaitFor(ctx, t, "every job", func(r buildtest.Run) bool { return r.Running() == len(jobs) })
	buildtest.OpenGate(t, gate)
	log.WaitFor(ctx, t, "every job to end", func(r buildtest.Run) bool { return r.Ended() == len(jobs) })
	stuckIn(ctx, t, p, unix.SYS_WRITE, "write(2), giving tokens back to a full default pipe")
	t.Logf("make 4.4.1, 65,535 tokens in a 64 KiB pipe: all %d jobs ended, make blocked in write(2) for 500ms, killed", len(jobs))
}

// stuckIn waits until p is blocked in the system call nr and checks it is
// still there half a second later: a hang, measured from /proc/PID/syscall
// rather than guessed from silence.
func stuckIn(ctx context.Context, t *testing.T, p *buildtest.Proc, nr int, what string) {
	t.Helper()
	for blockedIn(p) != nr {
		select {
		case <-p.Done():
			t.Fatalf("make exited (%v) instead of blocking in %s; output:\n%s", p.Err(), what, p.Output())
		case <-ctx.Done():
			t.Fatalf("make never blocked in %s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
	select {
	case <-p.Done():
		t.Fatalf("make left %s and exited: %v\n%s", what, p.Err(), p.Output())
	case <-time.After(500 * time.Millisecond):
	}
	if blockedIn(p) != nr {
		t.Errorf("make left %s", what)
	}
}

// blockedIn is the number of the system call p is in, or -1.
func blockedIn(p *buildtest.Proc) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", p.Cmd.Process.Pid))
	if err != nil {
		return -1
	}
	nr, _, _ := strings.Cut(string(b), " ")
	n, err := strconv.Atoi(nr)
	if err != nil {
		return -1
	}
	return n
}

// ninja ignores a jobserver named by pipe auth (with a warning) and one
// beside an n in MAKEFLAGS' first word (make -n's flag letters), and then
// runs at its default parallelism; ParseMakeflags reads the n the same way.
func TestConformanceNinjaIgnores(t *testing.T) {
	const tokens = 3
	for _, c := range []struct {
		name, makeflags string
		pipe            bool
		says            string
	}{
		{"pipe", jobserver.WithAuth("", jobserver.PipeAuth(3, 4)), true,
			"ninja: warning: Ignoring jobserver: Pipe-based protocol is not supported!"},
		{"dry-run", "n %s", false, ""},
		{"dry-run-flags", "kns %s", false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t)
			f := newPool(t, tokens)
			makeflags := c.makeflags
			if strings.Contains(makeflags, "%s") {
				makeflags = fmt.Sprintf(makeflags, jobserver.FIFOAuth(f.Path()).Flag())
				if m, err := jobserver.ParseMakeflags(makeflags); err != nil || !m.DryRun {
					t.Errorf("ParseMakeflags(%q) = %+v, %v; want DryRun", makeflags, m, err)
				}
			}
			n := ninjaDefaultJobs(t, buildtest.Ninja(t))
			log := buildtest.NewLog(t)
			dir := t.TempDir()
			jobs, gate := gatedJobs(t, "j", n+2)
			buildtest.WriteNinja(t, dir, buildtest.BuildProbe(t), log, jobs)
			cmd := exec.Command(buildtest.Ninja(t), "-C", dir)
			cmd.Env = buildtest.CleanEnv("MAKEFLAGS=" + makeflags)
			if c.pipe {
				r, w := openPipeEnds(t, f.Path())
				defer r.Close()
				defer w.Close()
				cmd.ExtraFiles = []*os.File{r, w}
			}
			p := buildtest.Start(t, cmd)
			log.WaitFor(ctx, t, "the build to fill its slots", func(r buildtest.Run) bool {
				return r.Running() == n && free(t, f) == tokens
			})
			buildtest.OpenGate(t, gate)
			wait(ctx, t, p)
			run := log.Run(t)
			run.Check(t, len(jobs))
			if run.Peak() != n {
				t.Errorf("peak %d, want ninja's default %d; log:\n%s", run.Peak(), n, run)
			}
			if out := p.Output(); strings.Contains(out, "Jobserver mode detected") || !strings.Contains(out, c.says) {
				t.Errorf("output:\n%s\nwant %q and no jobserver mode", out, c.says)
			}
			conserved(ctx, t, f, p)
		})
	}
}

// Bytes carry no identity: fill the pool with 'G' (gcc's byte) and see
// what each client writes back for the tokens it held.
func TestConformanceTokenBytes(t *testing.T) {
	const tokens = 3
	for _, c := range []struct {
		client client
		echoes bool // writes back the byte it read; else '+'
	}{{make44, false}, {make43, false}, {ninja, true}, {cargo, true}} {
		t.Run(c.client.name, func(t *testing.T) {
			ctx := ctxFor(t)
			f := newPool(t, 0)
			side, err := os.OpenFile(f.Path(), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer side.Close()
			if _, err := side.Write([]byte(strings.Repeat("G", tokens))); err != nil {
				t.Fatal(err)
			}
			log := buildtest.NewLog(t)
			jobs, gate := gatedJobs(t, "j", tokens+1)
			p := c.client.start(t, f, log, jobs, nil)
			saturate(ctx, t, f, log, tokens+1, gate)
			wait(ctx, t, p)
			if !p.WaitGone(ctx) {
				t.Fatal("the build did not end")
			}
			if n := free(t, f); n != tokens {
				t.Fatalf("%d tokens in the pool after the build, want %d", n, tokens)
			}
			b := make([]byte, 16)
			n, err := side.Read(b)
			if err != nil {
				t.Fatal(err)
			}
			want := strings.Repeat("+", tokens)
			if c.echoes {
				want = strings.Repeat("G", tokens)
			}
			if string(b[:n]) != want {
				t.Errorf("%s wrote back %q for GGG, want %q", c.client.name, b[:n], want)
			}
		})
	}
}

// The Go client run by real makes: it joins through fifo: auth, and
// through inherited descriptors on a recipe line marked '+'; on a line not
// marked '+' it is told why it cannot join (make 4.4 passes -2,-2, make 4.3
// closes the descriptors).
func TestConformanceGoClientUnderMake(t *testing.T) {
	const tokens = 2
	for _, c := range []struct {
		name string
		make func(testing.TB) string
		args []string
		pool bool   // join our FIFO through MAKEFLAGS; else make is the root
		plus string // what a '+' line prints
		bare string // what a line without '+' prints
	}{
		{"make-4.4.1/fifo", buildtest.Make44, nil, true, "once ok", "once ok"},
		{"make-4.4.1/pipe", buildtest.Make44, []string{"-j3", "--jobserver-style=pipe"}, false, "once ok",
			"once error: jobserver descriptors -2,-2: the parent make withheld its jobserver from this command"},
		{"make-4.3/pipe", buildtest.Make43, []string{"-j3"}, false, "once ok",
			"once error: jobserver descriptor 3 is not a pipe"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t)
			f := newPool(t, tokens)
			dir := t.TempDir()
			self, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			mf := fmt.Sprintf(".PHONY: all plus bare\nall: plus bare\nplus:\n\t+@JOBSERVER_TEST_LABEL=plus '%s'\nbare:\n\t@JOBSERVER_TEST_LABEL=bare '%s'\n", self, self)
			if err := os.WriteFile(filepath.Join(dir, "Makefile"), []byte(mf), 0o644); err != nil {
				t.Fatal(err)
			}
			env := []string{"JOBSERVER_TEST_CHILD=once"}
			if c.pool {
				env = append(env, fifoFlags(f))
			}
			cmd := exec.Command(c.make(t), append([]string{"-s", "-C", dir}, c.args...)...)
			cmd.Env = buildtest.CleanEnv(env...)
			p := buildtest.Start(t, cmd)
			wait(ctx, t, p)
			out := p.Output()
			for _, want := range []string{"plus: " + c.plus, "bare: " + c.bare} {
				if !strings.Contains(out, want) {
					t.Errorf("output does not say %q:\n%s", want, out)
				}
			}
			conserved(ctx, t, f, p)
			t.Logf("output:\n%s", out)
		})
	}
}
