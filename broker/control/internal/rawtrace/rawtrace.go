// Package rawtrace is the format of the memory controller's recorded
// traces: at each step, the verbatim contents of the kernel files the
// controller reads (/proc/meminfo, a PSI file, the memory cgroup's files,
// /proc/PID/{status,stat,cmdline} of the leases' processes), and what the
// broker would have known of each lease. Replaying a step writes the files
// back into a directory laid out like the real ones, so the controller's
// own readers parse them exactly as they parse the live files.
package rawtrace

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Paths inside a step's directory.
const (
	// Proc is the procfs root: meminfo, pressure/memory, PID/...
	Proc = "proc"
	// Memcg holds a memory cgroup's files, for a cgroup domain.
	Memcg = "memcg"
	// PSI holds the memory.pressure of the cgroup2 group where the
	// builds' stalls are counted, when the domain's pressure is read there.
	PSI = "psi"
)

// Step is one instant of a trace.
type Step struct {
	At time.Time `json:"at"`
	// Files maps paths relative to the step directory to their contents.
	Files  map[string]string `json:"files"`
	Leases []Lease           `json:"leases"`
}

// Lease is what the broker knew of one lease at a step.
type Lease struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Created  time.Time `json:"created"`
	Admitted bool      `json:"admitted"`
	Hungry   bool      `json:"hungry"`
	Held     int       `json:"held"`
	// PIDs are the lease's job processes, whose files the step holds.
	PIDs []int `json:"pids"`
}

// Writer appends steps to a gzip-compressed JSON Lines file.
type Writer struct {
	f   *os.File
	gz  *gzip.Writer
	enc *json.Encoder
}

// Create starts a trace file at path.
func Create(path string) (*Writer, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("rawtrace: %w", err)
	}
	gz := gzip.NewWriter(f)
	return &Writer{f: f, gz: gz, enc: json.NewEncoder(gz)}, nil
}

// Write appends one step.
func (w *Writer) Write(s Step) error {
	if err := w.enc.Encode(s); err != nil {
		return fmt.Errorf("rawtrace: %w", err)
	}
	return nil
}

// Close finishes the file.
func (w *Writer) Close() error {
	return errors.Join(w.gz.Close(), w.f.Close())
}

// Read reads every step of the trace file at path.
func Read(path string) ([]Step, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("rawtrace: %w", err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("rawtrace: %s: %w", path, err)
	}
	dec := json.NewDecoder(bufio.NewReader(gz))
	dec.DisallowUnknownFields()
	var steps []Step
	for {
		var s Step
		err := dec.Decode(&s)
		if errors.Is(err, io.EOF) {
			return steps, nil
		}
		if err != nil {
			return nil, fmt.Errorf("rawtrace: %s step %d: %w", path, len(steps)+1, err)
		}
		steps = append(steps, s)
	}
}

// Materialize writes the step's files under dir, replacing whatever an
// earlier step left there.
func (s Step) Materialize(dir string) error {
	for _, sub := range []string{Proc, Memcg, PSI} {
		if err := os.RemoveAll(filepath.Join(dir, sub)); err != nil {
			return fmt.Errorf("rawtrace: %w", err)
		}
	}
	for name, content := range s.Files {
		if filepath.IsAbs(name) || strings.HasPrefix(filepath.Clean(name), "..") {
			return fmt.Errorf("rawtrace: step file %q escapes the step directory", name)
		}
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("rawtrace: %w", err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return fmt.Errorf("rawtrace: %w", err)
		}
	}
	return nil
}
