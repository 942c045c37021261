package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

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
