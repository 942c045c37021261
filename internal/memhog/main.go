// Command memhog stands in for a compiler in tests of memory-aware
// scheduling: it grows its resident memory at a steady rate to a peak by
// touching fresh anonymous pages, holds it, and exits 0.
//
//	memhog -peak MIB [-ramp MIBPS] [-hold DURATION] [-file PATH] [-log LOG -id ID]
//
// The memory is mapped outside the Go heap, so its RSS is the touched pages
// plus a few MiB of runtime. The ramp is in wall-clock time, so a job's
// size at any instant is known from its start. -ramp 0 touches the whole
// peak at once.
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
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "memhog:", err)
		os.Exit(1)
	}
}

type job struct {
	peakMiB  int
	rampMiBs float64
	hold     time.Duration
	file     string
	log, id  string
}

func parse(args []string) (job, error) {
	var j job
	fs := flag.NewFlagSet("memhog", flag.ContinueOnError)
	fs.IntVar(&j.peakMiB, "peak", 0, "peak anonymous memory, MiB")
	fs.Float64Var(&j.rampMiBs, "ramp", 0, "growth rate, MiB per second; 0 touches the peak at once")
	fs.DurationVar(&j.hold, "hold", 0, "how long to hold the peak before exiting")
	fs.StringVar(&j.file, "file", "", "file whose pages are read at random all along (file-backed working set)")
	fs.StringVar(&j.log, "log", "", "probe log to append start and end stamps to")
	fs.StringVar(&j.id, "id", "", "job name in the log")
	if err := fs.Parse(args); err != nil {
		return j, err
	}
	switch {
	case fs.NArg() > 0:
		return j, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case j.peakMiB < 0 || j.rampMiBs < 0 || j.hold < 0:
		return j, errors.New("-peak, -ramp and -hold must not be negative")
	case (j.log == "") != (j.id == ""):
		return j, errors.New("-log and -id go together")
	}
	return j, nil
}

// step is how often the ramp touches the pages it is due and reads the
// working set.
const step = 5 * time.Millisecond

func run(args []string) error {
	j, err := parse(args)
	if err != nil {
		return err
	}
	if err := j.stamp('S'); err != nil {
		return err
	}
	var ws []byte
	if j.file != "" {
		if ws, err = mapFile(j.file); err != nil {
			return err
		}
	}
	var mem []byte
	if j.peakMiB > 0 {
		mem, err = unix.Mmap(-1, 0, j.peakMiB<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			return fmt.Errorf("map %d MiB: %w", j.peakMiB, err)
		}
	}
	page := os.Getpagesize()
	start := time.Now()
	touched := 0
	var sum byte
	for {
		due := len(mem)
		if j.rampMiBs > 0 {
			due = min(len(mem), int(time.Since(start).Seconds()*j.rampMiBs*(1<<20)))
		}
		for ; touched < due; touched += page {
			mem[touched] = 1
		}
		sum += readRandom(ws, page)
		if touched >= len(mem) {
			break
		}
		time.Sleep(step)
	}
	for end := time.Now().Add(j.hold); time.Now().Before(end); time.Sleep(step) {
		sum += readRandom(ws, page)
	}
	if len(mem) > 0 {
		mem[0] = sum // keep the reads from being optimised away
	}
	return j.stamp('E')
}

// readRandom reads a few random pages of the working set.
func readRandom(ws []byte, page int) byte {
	var sum byte
	for i := 0; i < 64 && len(ws) > 0; i++ {
		sum += ws[rand.IntN(len(ws)/page)*page]
	}
	return sum
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
