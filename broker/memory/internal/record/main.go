// Command record re-records package memory's fixtures from this host's real
// files while g++ compiles a generated template-heavy C++ file (about
// 430 MiB of cc1plus and 11 s on one core) inside scratch cgroups. It needs
// root on a host with the cgroup v1 memory controller and a cgroup2 mount,
// like tokend's Debian test host:
//
//	go run ./broker/memory/internal/record -out testdata/memory
//
// It replaces proc/, memcg-v1/, cgroup2/, trace-v1-compile.jsonl and
// kmsg/ (the kernel log's records of an OOM kill in a v1 group) under -out
// and leaves the hand-written cgroup2-memory/ alone.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/broker/memory"
	"github.com/tokend/tokend/internal/cgtest"
)

const mib = 1 << 20

func main() {
	out := flag.String("out", "testdata/memory", "fixture directory")
	snapLimit := flag.Uint64("snapshot-limit", 512*mib, "v1 limit for the one-instant snapshot, bytes")
	snapRSS := flag.Uint64("snapshot-rss", 300*mib, "take the snapshot once cc1plus's RSS reaches this, bytes")
	traceLimit := flag.Uint64("trace-limit", 640*mib, "v1 limit for the trace of two compiles, bytes")
	duration := flag.Duration("duration", 12*time.Second, "trace length")
	interval := flag.Duration("interval", 200*time.Millisecond, "trace step")
	kmsgOnly := flag.Bool("kmsg-only", false, "record only kmsg/, the kernel log's report of an OOM kill")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("record: ")

	if err := run(*out, *snapLimit, *snapRSS, *traceLimit, *duration, *interval, *kmsgOnly); err != nil {
		log.Fatal(err)
	}
}

func run(out string, snapLimit, snapRSS, traceLimit uint64, duration, interval time.Duration, kmsgOnly bool) error {
	replaced := []string{"proc", "memcg-v1", "cgroup2", "trace-v1-compile.jsonl", "kmsg"}
	if kmsgOnly {
		replaced = []string{"kmsg"}
	}
	r, err := newRecorder(out, replaced)
	if err != nil {
		return err
	}
	defer os.RemoveAll(r.work)
	if kmsgOnly {
		return r.oomReport()
	}
	if err := r.snapshot(snapLimit, snapRSS); err != nil {
		return err
	}
	if err := r.trace(traceLimit, duration, interval); err != nil {
		return err
	}
	return r.oomReport()
}

type recorder struct {
	out, work, source string
	mounts            cgtest.Mounts
	sampler           memory.Sampler
}

func newRecorder(out string, replaced []string) (*recorder, error) {
	m, err := cgtest.FindMounts()
	if err != nil {
		return nil, err
	}
	if m.V1Memory == "" || m.V2 == "" {
		return nil, fmt.Errorf("needs a cgroup v1 memory mount and a cgroup2 mount, found %+v", m)
	}
	s, err := memory.NewSampler("")
	if err != nil {
		return nil, err
	}
	for _, old := range replaced {
		if err := os.RemoveAll(filepath.Join(out, old)); err != nil {
			return nil, err
		}
	}
	work, err := os.MkdirTemp("", "tokend-record-")
	if err != nil {
		return nil, err
	}
	r := &recorder{out: out, work: work, source: filepath.Join(work, "heavy.cc"), mounts: m, sampler: s}
	return r, os.WriteFile(r.source, []byte(heavySource(12)), 0o644)
}

// workload is a shell script running in a v1 memory group with a limit
// and in a cgroup2 group, the one where the kernel counts the stalls that
// limit causes.
type workload struct {
	v1, v2 cgtest.Group
	done   chan struct{} // closed once the script has exited and been reaped
	err    error
}

func (r *recorder) start(limit uint64, script string) (*workload, error) {
	v1, err := cgtest.Make(filepath.Join(r.mounts.V1Memory, cgtest.Name("tokend-record")), limit)
	if err != nil {
		return nil, err
	}
	v2, err := cgtest.Make(filepath.Join(r.mounts.V2, cgtest.Name("tokend-record")), 0)
	if err != nil {
		return nil, errors.Join(err, v1.Remove())
	}
	w := &workload{v1: v1, v2: v2, done: make(chan struct{})}
	cmd := cgtest.Command([]cgtest.Group{v1, v2}, "/bin/sh", "-c", script)
	cmd.Dir, cmd.Stderr = r.work, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, errors.Join(err, v1.Remove(), v2.Remove())
	}
	go func() {
		w.err = cmd.Wait()
		close(w.done)
	}()
	return w, nil
}

// stop kills whatever still runs and removes the groups.
func (w *workload) stop() error {
	err := errors.Join(w.v1.Remove(), w.v2.Remove())
	<-w.done
	return err
}

// snapshot copies the files of one instant at which cc1plus is large.
func (r *recorder) snapshot(limit, rss uint64) (err error) {
	w, err := r.start(limit, "exec g++ -O2 -pipe -c heavy.cc -o snapshot.o")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, w.stop()) }()
	v1, v2 := w.v1, w.v2
	deadline := time.Now().Add(2 * time.Minute)
	for !r.cc1plusReached(string(v1), rss) {
		if time.Now().After(deadline) {
			return fmt.Errorf("cc1plus did not reach %d MiB", rss/mib)
		}
		time.Sleep(50 * time.Millisecond)
	}
	procs, err := os.ReadFile(v1.File("cgroup.procs"))
	if err != nil {
		return err
	}
	copies := map[string]string{
		"/proc/meminfo":         "proc/meminfo",
		"/proc/pressure/memory": "proc/pressure/memory",
	}
	for _, pid := range strings.Fields(string(procs)) {
		for _, f := range []string{"stat", "status"} {
			copies[filepath.Join("/proc", pid, f)] = filepath.Join("proc", pid, f)
		}
	}
	for _, f := range []string{"memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat",
		"memory.failcnt", "memory.oom_control", "cgroup.procs"} {
		copies[v1.File(f)] = filepath.Join("memcg-v1", f)
	}
	for _, f := range []string{"memory.pressure", "cgroup.procs"} {
		copies[v2.File(f)] = filepath.Join("cgroup2", f)
	}
	// Read everything first, write afterwards, to keep the instant short.
	contents := map[string][]byte{}
	for from := range copies {
		if contents[from], err = os.ReadFile(from); err != nil {
			return err
		}
	}
	for from, to := range copies {
		to = filepath.Join(r.out, to)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(to, contents[from], 0o644); err != nil {
			return err
		}
	}
	log.Printf("snapshot: %d files, cgroup processes %s", len(copies), strings.Fields(string(procs)))
	return nil
}

func (r *recorder) cc1plusReached(cgroup string, rss uint64) bool {
	procs, err := r.sampler.Cgroup(cgroup)
	if err != nil {
		log.Print(err)
		return false
	}
	for _, p := range procs {
		if p.Name == "cc1plus" && p.RSS >= rss {
			return true
		}
	}
	return false
}

// trace records two compiles that together outgrow limit.
func (r *recorder) trace(limit uint64, duration, interval time.Duration) (err error) {
	w, err := r.start(limit, "g++ -O2 -pipe -c heavy.cc -o a.o & g++ -O2 -pipe -c heavy.cc -o b.o & wait")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, w.stop()) }()
	v1, v2 := w.v1, w.v2
	d, err := memory.NewDomain(memory.Config{Cgroup: string(v1), Pressure: v2.File("memory.pressure")})
	if err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(r.out, "trace-v1-compile.jsonl"))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	enc := json.NewEncoder(f)
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	steps := 0
	for {
		reading, err := d.Read()
		if err != nil {
			return err
		}
		procs, err := r.sampler.Cgroup(string(v1))
		if err != nil {
			return err
		}
		if err := enc.Encode(memory.Snapshot{Reading: reading, Procs: procs}); err != nil {
			return err
		}
		steps++
		select {
		case <-tick.C:
			continue
		case <-w.done:
			log.Printf("trace: workload exited (%v) after %d steps", w.err, steps)
		case <-ctx.Done():
			log.Printf("trace: %d steps over %v", steps, duration)
		}
		return nil
	}
}

// heavySource is C++ whose n functions each instantiate sorting, maps,
// sets, variants, regex and std::function for a distinct type, so that
// cc1plus grows steadily as it compiles them.
func heavySource(n int) string {
	var b strings.Builder
	b.WriteString("#include <bits/stdc++.h>\n")
	for i := range n {
		t := "T" + strconv.Itoa(i)
		fmt.Fprintf(&b, `
struct %[1]s { int a; double b; std::string s; bool operator<(const %[1]s& o) const { return std::tie(a, b, s) < std::tie(o.a, o.b, o.s); } };
std::string f%[2]d(std::vector<%[1]s> v) {
  std::sort(v.begin(), v.end());
  std::map<std::string, std::vector<%[1]s>> m; std::unordered_map<int, std::set<%[1]s>> u;
  for (auto& x : v) { m[x.s].push_back(x); u[x.a].insert(x); }
  std::variant<int, double, std::string, %[1]s> var = v.empty() ? std::variant<int, double, std::string, %[1]s>(1) : v[0];
  std::ostringstream os; std::visit([&](auto&& y) { if constexpr (std::is_same_v<std::decay_t<decltype(y)>, %[1]s>) os << y.s; else os << y; }, var);
  std::regex re(os.str() + "%[2]d"); std::function<int(int)> fn = [&](int k) { return (int)m.size() + k + (int)u.size(); };
  return os.str() + std::to_string(fn(%[2]d)) + (std::regex_match(os.str(), re) ? "y" : "n");
}
`, t, i)
	}
	return b.String()
}

// oomReport records the kernel log's records of one OOM kill: fakecc
// touching 256 MiB at once in a 64 MiB v1 group, from the kernel's
// "invoked oom-killer" to its "Killed process" line, as /dev/kmsg returns
// them, one record after another.
func (r *recorder) oomReport() error {
	fakecc, err := cgtest.BuildGo(".", "./internal/fakecc", r.work)
	if err != nil {
		return err
	}
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the kernel log: %w", err)
	}
	defer unix.Close(fd)
	if _, err := unix.Seek(fd, 0, unix.SEEK_END); err != nil {
		return fmt.Errorf("kernel log: %w", err)
	}
	w, err := r.start(64*mib, fakecc+" -peak 256 -ramp 0")
	if err != nil {
		return err
	}
	<-w.done
	if err := w.stop(); err != nil {
		return err
	}
	var records [][]byte
	buf := make([]byte, 8<<10)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read the kernel log: %w", err)
		}
		records = append(records, bytes.Clone(buf[:n]))
	}
	first, last := -1, -1
	for i, rec := range records {
		switch {
		case first < 0 && bytes.Contains(rec, []byte("fakecc invoked oom-killer")):
			first = i
		case first >= 0 && bytes.Contains(rec, []byte("Killed process")) && bytes.Contains(rec, []byte("(fakecc)")):
			last = i
		}
		if last >= 0 {
			break
		}
	}
	if first < 0 || last < 0 {
		return fmt.Errorf("the kernel log holds no report of fakecc's OOM kill in %d records", len(records))
	}
	dir := filepath.Join(r.out, "kmsg")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "memcg-oom"), bytes.Join(records[first:last+1], nil), 0o644)
}
