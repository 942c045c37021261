package memory

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Pressure is a PSI file's cumulative stall time: Some while at least one
// task waited for memory, Full while all non-idle tasks did. The kernel's
// avg10/60/300 are left out on purpose: they refresh only every ~2 s, while
// the totals are exact at every read, so rates come from total deltas.
type Pressure struct {
	Some time.Duration `json:"some_ns"`
	Full time.Duration `json:"full_ns"`
}

// stallTotal is a PSI total, a u64 of microseconds in the kernel, as a
// Duration, which holds 292 years of them: more than any host has
// stalled, so a larger total is no real PSI file's.
func stallTotal(us uint64) (time.Duration, error) {
	if us > math.MaxInt64/uint64(time.Microsecond) {
		return 0, fmt.Errorf("stall total of %d µs is more than 292 years; not a PSI file of this host", us)
	}
	return time.Duration(us) * time.Microsecond, nil
}

// readPressure parses a PSI memory file, the host's or a cgroup's
// memory.pressure (which procfs cannot read): its lines look like
//
//	some avg10=0.00 avg60=0.00 avg300=0.00 total=12345
//	full avg10=0.00 avg60=0.00 avg300=0.00 total=6789
func (k *kernelFiles) readPressure(path string) (Pressure, error) {
	var text string
	if err := k.read(path, func(b []byte) error { text = string(b); return nil }); err != nil {
		return Pressure{}, fmt.Errorf("memory: %w%s", err, psiHint(err))
	}
	var p Pressure
	seen := map[string]bool{}
	for line := range strings.Lines(text) {
		kind, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		var dst *time.Duration
		switch kind {
		case "some":
			dst = &p.Some
		case "full":
			dst = &p.Full
		default:
			continue
		}
		total := ""
		for f := range strings.FieldsSeq(rest) {
			if v, ok := strings.CutPrefix(f, "total="); ok {
				total = v
			}
		}
		us, err := strconv.ParseUint(total, 10, 64)
		if err != nil {
			return Pressure{}, fmt.Errorf("memory: %s: %s line %q: want total=<microseconds>: %w", path, kind, line, err)
		}
		if *dst, err = stallTotal(us); err != nil {
			return Pressure{}, fmt.Errorf("memory: %s: %s line %q: %w", path, kind, line, err)
		}
		seen[kind] = true
	}
	if !seen["some"] || !seen["full"] {
		return Pressure{}, fmt.Errorf("memory: %s lacks a some or full line; is it a PSI memory.pressure file?", path)
	}
	return p, nil
}

// psiHint names the fix for the errors a PSI file gives when PSI is off.
func psiHint(err error) string {
	if errors.Is(err, unix.EOPNOTSUPP) {
		return " (PSI is disabled: boot with psi=1, or for a cgroup write 1 to its cgroup.pressure)"
	}
	return ""
}

// Stall is the share of an interval that tasks spent stalled on memory,
// from 0 to 1 (reads a few microseconds apart can push it just past 1).
type Stall struct {
	Some     float64
	Full     float64
	Interval time.Duration
}

// StallSince is the stall rate between prev and r, two readings of the same
// domain with prev the earlier.
func (r Reading) StallSince(prev Reading) (Stall, error) {
	dt := r.At.Sub(prev.At)
	if dt <= 0 {
		return Stall{}, fmt.Errorf("memory: stall rate needs the earlier reading first; got an interval of %v", dt)
	}
	if r.Pressure.Some < prev.Pressure.Some || r.Pressure.Full < prev.Pressure.Full {
		return Stall{}, fmt.Errorf("memory: PSI totals went backwards (some %v -> %v, full %v -> %v): "+
			"the readings come from different pressure files, or the cgroup was removed and made again; start over from a new reading",
			prev.Pressure.Some, r.Pressure.Some, prev.Pressure.Full, r.Pressure.Full)
	}
	return Stall{
		Some:     float64(r.Pressure.Some-prev.Pressure.Some) / float64(dt),
		Full:     float64(r.Pressure.Full-prev.Pressure.Full) / float64(dt),
		Interval: dt,
	}, nil
}
