package buildtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Event is one line of a probe log.
type Event struct {
	Start bool  // S: the job started; otherwise E: it ended
	T     int64 // Unix nanoseconds
	ID    string
}

// Log is a probe log: jobs append to it, tests read it.
type Log struct {
	Path string
}

// NewLog makes an empty log in a new temporary directory of t.
func NewLog(t testing.TB) *Log {
	t.Helper()
	return NewLogIn(t, t.TempDir())
}

// NewLogIn makes an empty log, writable by every user, in dir: builds run
// as another user can log to it if they can reach dir.
func NewLogIn(t testing.TB, dir string) *Log {
	t.Helper()
	p := filepath.Join(dir, "jobs.log")
	if err := os.WriteFile(p, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o666); err != nil { // whatever the umask
		t.Fatal(err)
	}
	return &Log{Path: p}
}

// Run reads the log as it is now.
func (l *Log) Run(t testing.TB) Run {
	t.Helper()
	r, err := ReadLog(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// WaitFor polls the log until cond holds, failing t if ctx ends first.
func (l *Log) WaitFor(ctx context.Context, t testing.TB, what string, cond func(Run) bool) Run {
	t.Helper()
	for {
		r := l.Run(t)
		if cond(r) {
			return r
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v; log so far:\n%s", what, ctx.Err(), r)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ReadLog parses a probe log. A partial last line (a write in progress) is
// ignored.
func ReadLog(path string) (Run, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Run{}, err
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	return ParseLog(b)
}

// ParseLog parses the text of a probe log.
func ParseLog(b []byte) (Run, error) {
	var r Run
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || (f[0] != "S" && f[0] != "E") {
			return Run{}, fmt.Errorf("probe log line %d: %q: want S|E <unix-ns> <id>", n, sc.Text())
		}
		ts, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return Run{}, fmt.Errorf("probe log line %d: %q: %v", n, sc.Text(), err)
		}
		r.Events = append(r.Events, Event{Start: f[0] == "S", T: ts, ID: f[2]})
	}
	if err := sc.Err(); err != nil {
		return Run{}, err
	}
	r.sort()
	return r, nil
}

// Run is what a log recorded, sorted by time with ends before starts at the
// same instant.
type Run struct {
	Events []Event
}

func (r *Run) sort() {
	sort.SliceStable(r.Events, func(i, j int) bool {
		a, b := r.Events[i], r.Events[j]
		if a.T != b.T {
			return a.T < b.T
		}
		return !a.Start && b.Start
	})
}

// Filter keeps the events whose ID satisfies keep.
func (r Run) Filter(keep func(id string) bool) Run {
	var f Run
	for _, e := range r.Events {
		if keep(e.ID) {
			f.Events = append(f.Events, e)
		}
	}
	return f
}

// Cut counts each job whose ID until names as running until that instant
// (Unix nanoseconds) at the latest: it drops the jobs that started at or
// after it, and ends there the ones still running then, whether or not
// they logged an end. A test uses it for the jobs of a build it killed,
// which are nobody's to count once it is dead (an orphaned job, one killed
// with SIGKILL that never logged its end).
func (r Run) Cut(until func(id string) (int64, bool)) Run {
	var out Run
	open := map[string]int{}    // kept starts not yet ended
	dropped := map[string]int{} // dropped starts whose end is dropped too
	for _, e := range r.Events {
		at, cut := until(e.ID)
		switch {
		case !cut:
			out.Events = append(out.Events, e)
		case e.Start && e.T >= at:
			dropped[e.ID]++
		case e.Start:
			open[e.ID]++
			out.Events = append(out.Events, e)
		case dropped[e.ID] > 0:
			dropped[e.ID]--
		case open[e.ID] > 0:
			open[e.ID]--
			e.T = min(e.T, at)
			out.Events = append(out.Events, e)
		}
	}
	for id, n := range open {
		at, _ := until(id)
		for range n {
			out.Events = append(out.Events, Event{T: at, ID: id})
		}
	}
	out.sort()
	return out
}

// Peak is the most jobs that ran at once.
func (r Run) Peak() int { return r.PeakBetween(math.MinInt64, math.MaxInt64) }

// PeakBetween is the most jobs that ran at once at any instant of
// [from, to] (Unix nanoseconds), counting the jobs already running at from.
func (r Run) PeakBetween(from, to int64) int {
	running, peak, inside := 0, 0, false
	for _, e := range r.Events {
		if e.T > from && !inside {
			inside, peak = true, running // what ran at instant from
		}
		if e.T > to {
			break
		}
		if e.Start {
			running++
		} else {
			running--
		}
		if inside {
			peak = max(peak, running)
		}
	}
	if !inside {
		peak = running
	}
	return peak
}

// RunningAt is how many jobs were running at instant at: started at or
// before it and not ended at or before it.
func (r Run) RunningAt(at int64) int {
	running := 0
	for _, e := range r.Events {
		if e.T > at {
			break
		}
		if e.Start {
			running++
		} else {
			running--
		}
	}
	return running
}

// Running is how many jobs have started and not ended.
func (r Run) Running() int { return r.Started() - r.Ended() }

// Started counts the jobs that started.
func (r Run) Started() int { return r.count(true) }

// Ended counts the jobs that ended.
func (r Run) Ended() int { return r.count(false) }

func (r Run) count(start bool) int {
	n := 0
	for _, e := range r.Events {
		if e.Start == start {
			n++
		}
	}
	return n
}

// Unfinished lists the jobs that started and never ended, and the ends
// that had no start.
func (r Run) Unfinished() []string {
	open := map[string]int{}
	for _, e := range r.Events {
		if e.Start {
			open[e.ID]++
		} else {
			open[e.ID]--
		}
	}
	var bad []string
	for id, n := range open {
		if n != 0 {
			bad = append(bad, fmt.Sprintf("%s(%+d)", id, n))
		}
	}
	sort.Strings(bad)
	return bad
}

// Check fails t unless exactly jobs jobs ran (each ID once) and every job
// that started ended.
func (r Run) Check(t testing.TB, jobs int) {
	t.Helper()
	ids := map[string]int{}
	for _, e := range r.Events {
		if e.Start {
			ids[e.ID]++
		}
	}
	var dup []string
	for id, n := range ids {
		if n > 1 {
			dup = append(dup, id)
		}
	}
	if len(ids) != jobs || len(dup) > 0 {
		t.Errorf("ran %d distinct jobs (%d starts, repeated: %v), want %d; log:\n%s", len(ids), r.Started(), dup, jobs, r)
	}
	if bad := r.Unfinished(); len(bad) > 0 {
		t.Errorf("jobs that did not end: %v; log:\n%s", bad, r)
	}
}

// String renders the run, times relative to its first event.
func (r Run) String() string {
	var b strings.Builder
	var t0 int64
	if len(r.Events) > 0 {
		t0 = r.Events[0].T
	}
	running := 0
	for _, e := range r.Events {
		k := "E"
		if e.Start {
			k = "S"
			running++
		} else {
			running--
		}
		fmt.Fprintf(&b, "  %s %8.3fms %-14s running=%d\n", k, float64(e.T-t0)/1e6, e.ID, running)
	}
	return b.String()
}
