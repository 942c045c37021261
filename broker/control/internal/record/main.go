// Command record records the memory controller's replay traces on this
// host: it runs scripted "leases" of fakecc jobs (internal/fakecc, a
// stand-in compiler) and copies, every step, the kernel files the
// controller reads. It needs root on a host with the cgroup v1 memory
// controller and a cgroup2 mount, like tokend's Debian test host:
//
//	go run ./broker/control/internal/record -out testdata/control
//
// It writes one <scenario>.jsonl.gz per scenario (see scenarios) and
// prints what each saw. The cgroups it makes are removed afterwards.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/broker/control/internal/rawtrace"
	"github.com/tokend/tokend/broker/memory"
	"github.com/tokend/tokend/internal/cgtest"
)

const mib = 1 << 20

// job is one fakecc run.
type job struct {
	peak, ramp int           // MiB, MiB/s
	hold       time.Duration // negative: until the scenario ends
	file       bool          // read the scenario's file all along
	link       bool          // run as "ld", which the controller tells for a linker
}

// lease is a scripted build: its jobs run in order, parallel at a time.
// An outside lease is no lease at all: a program beside the builds, in
// the same memory limit, that the controller sees only as memory in use.
type lease struct {
	name     string
	start    time.Duration
	parallel int
	jobs     []job
	outside  bool
}

// scenario is one trace. limit 0 makes the host the domain.
type scenario struct {
	name     string
	limit    uint64
	fileMiB  int
	duration time.Duration
	leases   []lease
}

func repeat(n int, j job) []job {
	out := make([]job, n)
	for i := range out {
		out[i] = j
	}
	return out
}

var scenarios = []scenario{
	{
		// Three builds in a 2 GiB v1 group, one of them with two jobs at
		// a time and more queued, arriving one after another.
		name: "v1-ramp", limit: 2048 * mib, duration: 14 * time.Second,
		leases: []lease{
			{name: "alpha", parallel: 2, jobs: repeat(4, job{peak: 450, ramp: 300, hold: time.Second})},
			{name: "beta", start: 2 * time.Second, parallel: 1, jobs: repeat(2, job{peak: 500, ramp: 250, hold: 1500 * time.Millisecond})},
			{name: "gamma", start: 4 * time.Second, parallel: 1, jobs: []job{{peak: 350, ramp: 350, hold: 2 * time.Second}}},
		},
	},
	{
		// In a 1 GiB v1 group, an old build holds 250 MiB and a middle
		// one 400 MiB while a young one creeps to within about 50 MiB of
		// the limit; then the middle one finishes.
		name: "v1-brake", limit: 1024 * mib, duration: 18 * time.Second,
		leases: []lease{
			{name: "old", parallel: 1, jobs: []job{{peak: 250, ramp: 250, hold: 15 * time.Second}}},
			{name: "mid", start: 500 * time.Millisecond, parallel: 1, jobs: []job{{peak: 400, ramp: 200, hold: 9500 * time.Millisecond}}},
			{name: "young", start: 3 * time.Second, parallel: 1, jobs: []job{{peak: 320, ramp: 40, hold: 5 * time.Second}}},
		},
	},
	{
		// A job holding anonymous memory while reading a file that no
		// longer fits beside it: file-backed thrash, which PSI sees,
		// next to a build of small jobs.
		name: "v1-thrash", limit: 768 * mib, fileMiB: 600, duration: 14 * time.Second,
		leases: []lease{
			{name: "thrash", parallel: 1, jobs: []job{{peak: 350, hold: 8 * time.Second, file: true}}},
			{name: "steady", parallel: 1, jobs: repeat(3, job{peak: 100, ramp: 200, hold: 3 * time.Second})},
		},
	},
	{
		// Two builds of 250 MiB compiles, two at a time, each ending
		// with a 1 GiB link, in a 3 GiB v1 group, the second a second
		// behind; from 4 s a program outside them grows to 1200 MiB at
		// 500 MiB/s and stays: the benchmark's hog, in small.
		name: "v1-hog", limit: 3072 * mib, duration: 24 * time.Second,
		leases: []lease{
			{name: "a", parallel: 2, jobs: append(repeat(6, job{peak: 250, ramp: 500, hold: 500 * time.Millisecond}),
				job{peak: 1024, ramp: 800, hold: 3 * time.Second, link: true})},
			{name: "b", start: time.Second, parallel: 2, jobs: append(repeat(6, job{peak: 250, ramp: 500, hold: 500 * time.Millisecond}),
				job{peak: 1024, ramp: 800, hold: 3 * time.Second, link: true})},
			{name: "hog", start: 4 * time.Second, parallel: 1, outside: true, jobs: []job{{peak: 1200, ramp: 500, hold: -1}}},
		},
	},
	{
		// The host as the domain: a 3 GiB job twice, beside a build of
		// many small jobs three at a time.
		name: "host", duration: 14 * time.Second,
		leases: []lease{
			{name: "big", parallel: 1, jobs: repeat(2, job{peak: 3072, ramp: 1500, hold: 3 * time.Second})},
			{name: "small", start: time.Second, parallel: 3, jobs: repeat(18, job{peak: 200, ramp: 400, hold: time.Second})},
		},
	},
}

func main() {
	out := flag.String("out", "testdata/control", "trace directory")
	only := flag.String("scenario", "", "record only this scenario")
	interval := flag.Duration("interval", 250*time.Millisecond, "trace step")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("record: ")
	if err := run(*out, *only, *interval); err != nil {
		log.Fatal(err)
	}
}

func run(out, only string, interval time.Duration) error {
	mounts, err := cgtest.FindMounts()
	if err != nil {
		return err
	}
	if mounts.V1Memory == "" || mounts.V2 == "" {
		return fmt.Errorf("needs a cgroup v1 memory mount and a cgroup2 mount, found %+v", mounts)
	}
	work, err := os.MkdirTemp("/var/tmp", "tokend-record-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	fakecc, err := cgtest.BuildGo(root, "./internal/fakecc", work)
	if err != nil {
		return err
	}
	// The same program under a linker's name.
	ld := filepath.Join(work, "ld")
	if err := os.Link(fakecc, ld); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, sc := range scenarios {
		if only != "" && sc.name != only {
			continue
		}
		r := &recorder{sc: sc, mounts: mounts, fakecc: fakecc, ld: ld, work: work, interval: interval}
		if err := r.record(filepath.Join(out, sc.name+".jsonl.gz")); err != nil {
			return fmt.Errorf("%s: %w", sc.name, err)
		}
	}
	return nil
}

func moduleRoot() (string, error) {
	b, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(string(b[:len(b)-1])), nil
}

type recorder struct {
	sc       scenario
	mounts   cgtest.Mounts
	fakecc   string
	ld       string
	work     string
	interval time.Duration
	v1, v2   cgtest.Group
	file     string
}

// running is a started job.
type running struct {
	cmd  *exec.Cmd
	done chan struct{}
}

type leaseRun struct {
	spec    lease
	created time.Time
	queue   []job
	running []*running
	started bool
}

func (r *recorder) record(path string) (err error) {
	if r.v2, err = cgtest.Make(filepath.Join(r.mounts.V2, cgtest.Name("tokend-record")), 0); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, r.v2.Remove()) }()
	groups := []cgtest.Group{r.v2}
	cfg := memory.Config{}
	if r.sc.limit > 0 {
		if r.v1, err = cgtest.Make(filepath.Join(r.mounts.V1Memory, cgtest.Name("tokend-record")), r.sc.limit); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, r.v1.Remove()) }()
		groups = append(groups, r.v1)
		cfg = memory.Config{Cgroup: string(r.v1), Pressure: r.v2.File("memory.pressure")}
	}
	if r.sc.fileMiB > 0 {
		if r.file, err = coldFile(r.work, r.sc.fileMiB); err != nil {
			return err
		}
	}
	domain, err := memory.NewDomain(cfg)
	if err != nil {
		return err
	}
	w, err := rawtrace.Create(path)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, w.Close()) }()

	start := time.Now()
	leases := make([]*leaseRun, len(r.sc.leases))
	for i, l := range r.sc.leases {
		leases[i] = &leaseRun{spec: l, queue: l.jobs}
	}
	var prev memory.Reading
	minHead, maxSome, steps := ^uint64(0), 0.0, 0
	tick := time.NewTicker(r.interval)
	defer tick.Stop()
	for time.Since(start) < r.sc.duration {
		now := time.Now()
		for _, l := range leases {
			if err := r.advance(l, now.Sub(start), groups); err != nil {
				return err
			}
		}
		step, err := r.step(leases)
		if err != nil {
			return err
		}
		if err := w.Write(step); err != nil {
			return err
		}
		reading, err := domain.Read()
		if err != nil {
			return err
		}
		minHead = min(minHead, reading.Headroom())
		if steps > 0 {
			if st, err := reading.StallSince(prev); err == nil {
				maxSome = max(maxSome, st.Some)
			}
		}
		prev = reading
		steps++
		<-tick.C
	}
	for _, l := range leases {
		for _, j := range l.running {
			_ = j.cmd.Process.Kill()
			<-j.done
		}
	}
	kills := 0
	if r.v1 != "" {
		if kills, err = r.v1.OOMKills(); err != nil {
			return err
		}
	}
	log.Printf("%s: %d steps, least headroom %d MiB, most some-stall per step %.1f%%, %d OOM kills",
		r.sc.name, steps, minHead/mib, 100*maxSome, kills)
	return nil
}

// advance reaps the lease's finished jobs and starts queued ones.
func (r *recorder) advance(l *leaseRun, elapsed time.Duration, groups []cgtest.Group) error {
	if elapsed < l.spec.start {
		return nil
	}
	if !l.started {
		l.started, l.created = true, time.Now()
	}
	live := l.running[:0]
	for _, j := range l.running {
		select {
		case <-j.done:
			if !j.cmd.ProcessState.Success() {
				log.Printf("%s: a job of %s ended %v", r.sc.name, l.spec.name, j.cmd.ProcessState)
			}
		default:
			live = append(live, j)
		}
	}
	l.running = live
	for len(l.running) < l.spec.parallel && len(l.queue) > 0 {
		spec := l.queue[0]
		l.queue = l.queue[1:]
		hold := strconv.FormatFloat(spec.hold.Seconds(), 'g', -1, 64)
		if spec.hold < 0 {
			hold = "-1"
		}
		args := []string{"-peak", strconv.Itoa(spec.peak), "-ramp", strconv.Itoa(spec.ramp), "-hold", hold}
		if spec.file {
			args = append(args, "-file", r.file)
		}
		prog := r.fakecc
		if spec.link {
			prog = r.ld
		}
		cmd := cgtest.Command(groups, prog, args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		j := &running{cmd: cmd, done: make(chan struct{})}
		go func() {
			_ = cmd.Wait()
			close(j.done)
		}()
		l.running = append(l.running, j)
	}
	return nil
}

// step copies the files of this instant, reading them all before anything
// else.
func (r *recorder) step(leases []*leaseRun) (rawtrace.Step, error) {
	copies := map[string]string{
		"/proc/meminfo":         "proc/meminfo",
		"/proc/pressure/memory": "proc/pressure/memory",
	}
	if r.v1 != "" {
		for _, f := range []string{"memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "memory.failcnt", "memory.oom_control"} {
			copies[r.v1.File(f)] = filepath.Join(rawtrace.Memcg, f)
		}
		copies[r.v2.File("memory.pressure")] = filepath.Join(rawtrace.PSI, "memory.pressure")
	}
	var out []rawtrace.Lease
	for _, l := range leases {
		if !l.started || len(l.running) == 0 || l.spec.outside {
			continue
		}
		rl := rawtrace.Lease{
			ID: l.spec.name, Name: l.spec.name, Created: l.created, Admitted: true,
			Hungry: len(l.queue) > 0, Held: len(l.running) - 1,
		}
		for _, j := range l.running {
			pid := j.cmd.Process.Pid
			rl.PIDs = append(rl.PIDs, pid)
			for _, f := range []string{"status", "stat", "cmdline"} {
				copies[filepath.Join("/proc", strconv.Itoa(pid), f)] = filepath.Join(rawtrace.Proc, strconv.Itoa(pid), f)
			}
		}
		out = append(out, rl)
	}
	step := rawtrace.Step{Files: map[string]string{}, Leases: out}
	for from, to := range copies {
		b, err := os.ReadFile(from)
		if err != nil {
			// A job that exited since the last advance leaves no files:
			// the controller sees the same when it samples.
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
				continue
			}
			return step, err
		}
		step.Files[to] = string(b)
	}
	step.At = time.Now()
	return step, nil
}

// coldFile writes a file of n MiB on disk with none of it in the page
// cache, so the job reading it is charged for every page.
func coldFile(dir string, n int) (string, error) {
	path := filepath.Join(dir, "working-set")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	chunk := make([]byte, mib)
	for i := range n {
		for j := range chunk {
			chunk[j] = byte(i + j)
		}
		if _, err := f.Write(chunk); err != nil {
			return "", err
		}
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return "", err
	}
	return path, nil
}
