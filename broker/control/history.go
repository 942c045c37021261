package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"time"

	"github.com/tokend/tokend/internal/atomicfile"
)

// historyVersion changes when the history file's meaning does.
const historyVersion = 1

// historyLimit bounds the names remembered; the least recently updated go
// first.
const historyLimit = 1000

// Past is what past leases of one name showed: the largest job peak per
// class in the last lease that ran such jobs, as nixbuild.net predicts a
// build's memory from earlier builds of the same package.
type Past struct {
	Compile uint64    `json:"compile,omitempty"`
	Link    uint64    `json:"link,omitempty"`
	Runs    int       `json:"runs"`
	Updated time.Time `json:"updated"`
}

type historyFile struct {
	Version int             `json:"version"`
	Names   map[string]Past `json:"names"`
}

// History is the per-name job memory of past leases, kept in a small file
// in the runtime directory so that a new lease of a known name starts from
// what its predecessors needed rather than from the default.
type History struct {
	path  string
	names map[string]Past
	dirty bool
}

// LoadHistory reads the history file at path; a missing file is an empty
// history. A file it cannot read gives an empty history as well as the
// error: history is only a prediction, and the next save replaces the file.
func LoadHistory(path string) (*History, error) {
	h := &History{path: path, names: map[string]Past{}}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return h, fmt.Errorf("read job history %s: %w", path, err)
	}
	var f historyFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return h, fmt.Errorf("read job history %s: %w", path, err)
	}
	if f.Version != historyVersion {
		return h, fmt.Errorf("read job history %s: version %d, this tokend reads version %d", path, f.Version, historyVersion)
	}
	if f.Names != nil {
		h.names = f.Names
	}
	return h, nil
}

// seed is the remembered peak of name's jobs of class c, or 0.
func (h *History) seed(name string, c class) uint64 {
	p := h.names[name]
	if c == classLink {
		return p.Link
	}
	return p.Compile
}

// record remembers what a lease of name saw; zero peaks keep the older
// value, since the lease ran no such job.
func (h *History) record(name string, compile, link uint64, now time.Time) {
	p := h.names[name]
	if compile > 0 {
		p.Compile = compile
	}
	if link > 0 {
		p.Link = link
	}
	p.Runs++
	p.Updated = now
	h.names[name] = p
	h.dirty = true
	if len(h.names) <= historyLimit {
		return
	}
	byAge := make([]string, 0, len(h.names))
	for n := range h.names {
		byAge = append(byAge, n)
	}
	sort.Slice(byAge, func(i, j int) bool { return h.names[byAge[i]].Updated.Before(h.names[byAge[j]].Updated) })
	for _, n := range byAge[:len(byAge)-historyLimit] {
		delete(h.names, n)
	}
}

// Save writes the history if it changed, atomically and durably: a crash
// of tokend or of the host leaves the old file or the new one. It changes
// only when a lease ends, so the sync costs little.
func (h *History) Save() error {
	if !h.dirty {
		return nil
	}
	raw, err := json.MarshalIndent(historyFile{Version: historyVersion, Names: h.names}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode job history: %w", err)
	}
	if err := atomicfile.Write(h.path, append(raw, '\n'), atomicfile.CrashOfHost); err != nil {
		return fmt.Errorf("save job history: %w", err)
	}
	h.dirty = false
	return nil
}
