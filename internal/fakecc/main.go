// Command fakecc stands in for a compiler or a linker in tests and
// benchmarks of memory-aware scheduling: a job whose memory and CPU behave
// like a compile's, with none of a real toolchain.
//
//	fakecc -peak MIB [-ramp MIBPS] [-cpu SEC] [-hold SEC] [-file PATH] [-o OUT] [-log LOG -id ID]
//
// It touches fresh anonymous pages, mapped outside the Go heap so its RSS is
// those pages plus a few MiB of runtime, until it holds -peak MiB. With
// -cpu it burns CPU and grows by -ramp MiB per CPU-second it gets, as a
// compiler's heap grows with the work it has done (a job starved of CPU
// grows more slowly), for at least -cpu CPU-seconds. Without -cpu it grows
// by -ramp MiB per wall-clock second and burns nothing, so its size at any
// instant is known from its start; -ramp 0 touches the whole peak at once.
// It then keeps its memory for -hold seconds, writes OUT, and exits 0; -hold
// -1 holds until SIGTERM or SIGINT, for a memory hog outside the builds.
//
// -file adds a file-backed working set: the whole file is mapped and random
// pages of it are read all along, as a compiler reads its headers and its
// own text. In a memory cgroup too small for both, those pages are evicted
// and read back again and again: the file-backed thrash that shows up as
// memory pressure (PSI) where anonymous growth alone would go straight to
// the OOM killer.
//
// -log appends "S <unix-ns> ID" when the job starts and "E <unix-ns> ID"
// when it ends, in internal/buildtest's probe log format, so tests can
// measure how many jobs ran at once.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "fakecc:", err)
		os.Exit(1)
	}
}

type job struct {
	peakMiB  int
	rampMiBs float64
	cpu      time.Duration
	hold     time.Duration
	holdEver bool
	file     string
	out      string
	log, id  string
}

func parse(args []string) (job, error) {
	var j job
	fs := flag.NewFlagSet("fakecc", flag.ContinueOnError)
	fs.IntVar(&j.peakMiB, "peak", 100, "peak anonymous memory in MiB")
	fs.Float64Var(&j.rampMiBs, "ramp", 300, "memory growth in MiB per CPU-second (with -cpu) or per second; 0 touches the peak at once")
	cpu := fs.Float64("cpu", 0, "CPU-seconds to burn at least; 0 burns none")
	hold := fs.Float64("hold", 0, "seconds to hold the peak before exiting; -1 holds until SIGTERM")
	fs.StringVar(&j.file, "file", "", "file whose pages are read at random while running")
	fs.StringVar(&j.out, "o", "", "output file written on success")
	fs.StringVar(&j.log, "log", "", "probe log to append start and end stamps to")
	fs.StringVar(&j.id, "id", "", "job name in the log")
	if err := fs.Parse(args); err != nil {
		return j, err
	}
	switch {
	case fs.NArg() > 0:
		return j, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case j.peakMiB < 0 || j.rampMiBs < 0 || *cpu < 0:
		return j, fmt.Errorf("need -peak >= 0, -ramp >= 0, -cpu >= 0")
	case (j.log == "") != (j.id == ""):
		return j, fmt.Errorf("-log and -id go together")
	}
	j.cpu = time.Duration(*cpu * float64(time.Second))
	j.holdEver = *hold < 0
	if !j.holdEver {
		j.hold = time.Duration(*hold * float64(time.Second))
	}
	return j, nil
}

// sink keeps the CPU burn from being optimised away.
var sink uint64

// step is how often a job that burns no CPU touches the pages it is due
// and reads its working set.
const step = 5 * time.Millisecond

func run(args []string) error {
	j, err := parse(args)
	if err != nil {
		return err
	}
	if err := j.stamp('S'); err != nil {
		return err
	}
	runtime.LockOSThread()
	var mem []byte
	if j.peakMiB > 0 {
		mem, err = unix.Mmap(-1, 0, j.peakMiB<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			return fmt.Errorf("map %d MiB: %w", j.peakMiB, err)
		}
	}
	var ws []byte
	if j.file != "" {
		if ws, err = mapFile(j.file); err != nil {
			return err
		}
	}
	startCPU, err := cpuTime()
	if err != nil {
		return err
	}
	startWall := time.Now()
	page := os.Getpagesize()
	touched := 0
	x := uint64(88172645463325252)
	for {
		var grown time.Duration // what the ramp is measured in
		if j.cpu > 0 {
			x = burn(x, 2*time.Millisecond)
			now, err := cpuTime()
			if err != nil {
				return err
			}
			grown = now - startCPU
		} else {
			grown = time.Since(startWall)
		}
		x += readRandom(ws, page)
		due := len(mem)
		if j.rampMiBs > 0 {
			due = min(len(mem), int(grown.Seconds()*j.rampMiBs*(1<<20)))
		}
		for ; touched < due; touched += page {
			mem[touched] = byte(x)
		}
		if grown >= j.cpu && touched >= len(mem) {
			break
		}
		if j.cpu == 0 {
			time.Sleep(step)
		}
	}
	sink = x
	if j.holdEver {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
		return nil
	}
	for end := time.Now().Add(j.hold); time.Now().Before(end); time.Sleep(step) {
		sink += readRandom(ws, page)
	}
	if j.out != "" {
		if err := os.WriteFile(j.out, []byte("fakecc\n"), 0o644); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
	}
	return j.stamp('E')
}

// burn spins the CPU for d of wall-clock time.
func burn(x uint64, d time.Duration) uint64 {
	for until := time.Now().Add(d); time.Now().Before(until); {
		for range 1000 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
		}
	}
	return x
}

// readRandom reads a few random pages of the working set.
func readRandom(ws []byte, page int) uint64 {
	var sum uint64
	for i := 0; i < 16 && len(ws) > 0; i++ {
		sum += uint64(ws[rand.IntN(len(ws)/page)*page])
	}
	return sum
}

// stamp appends one log line in a single write(2) to a file opened
// O_APPEND, so concurrent jobs never interleave.
func (j job) stamp(kind byte) error {
	if j.log == "" {
		return nil
	}
	f, err := os.OpenFile(j.log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o666)
	if err != nil {
		return fmt.Errorf("log: %w", err)
	}
	line := string(kind) + " " + strconv.FormatInt(time.Now().UnixNano(), 10) + " " + j.id + "\n"
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return fmt.Errorf("log: %w", err)
	}
	return f.Close()
}

func mapFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("working set: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("working set: %w", err)
	}
	if st.Size() < int64(os.Getpagesize()) {
		return nil, fmt.Errorf("working set %s: smaller than a page", path)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("working set: map %s: %w", path, err)
	}
	return m, nil
}

// cpuTime is the CPU time this process has used, user and system: page
// faults count, as they do for a compiler.
func cpuTime() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		return 0, fmt.Errorf("clock_gettime: %w", err)
	}
	return time.Duration(ts.Nano()), nil
}
