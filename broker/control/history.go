package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// historyVersion changes when the history file's meaning does.
const historyVersion = 1

// historyLimit bounds the names remembered; the least recently updated go
// first.
const historyLimit = 1000

// HistoryFile is the job history's name in the state directory (and, before
// tokend kept one, in the runtime directory).
const HistoryFile = "history.json"

// Past is what past leases of one name showed: the largest job peak per
// class in the last lease that ran such jobs, as nixbuild.net predicts a
// build's memory from earlier builds of the same package.
type Past struct {
	Compile uint64 `json:"compile,omitempty"`
	Link    uint64 `json:"link,omitempty"`
	Runs    int    `json:"runs"`
	// OOMKills counts jobs of leases of this name the kernel's OOM killer
	// killed.
	OOMKills int       `json:"oom_kills,omitempty"`
	Updated  time.Time `json:"updated"`
}

type historyFile struct {
	Version int             `json:"version"`
	Names   map[string]Past `json:"names"`
}

// History is the per-name job memory of past leases, kept in the state
// directory so that a new lease of a known name starts from what its
// predecessors needed rather than from the default, across restarts and
// reboots.
type History struct {
	path  string
	names map[string]Past
	dirty bool
}

// OpenHistory opens the job history in stateDir, creating the directory if
// need be. A history left in legacyDir (the runtime directory, where
// tokend kept it before it had a state directory) is moved there first,
// once, if the state directory has none. A file that cannot be read is set
// aside under a new name, never overwritten, and tokend starts with an
// empty history: history is only a prediction. Both are logged. The error
// is for a state directory tokend cannot use.
func OpenHistory(stateDir, legacyDir string, log hclog.Logger) (*History, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("state directory %s: %w; create it, or set state_dir to a directory tokend may write", stateDir, err)
	}
	path := filepath.Join(stateDir, HistoryFile)
	if legacyDir != "" {
		if err := takeOver(filepath.Join(legacyDir, HistoryFile), path, log); err != nil {
			return nil, err
		}
	}
	h, err := LoadHistory(path)
	if !errors.Is(err, errUnreadable) {
		return h, err
	}
	aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405.000000000Z"))
	if rerr := os.Rename(path, aside); rerr != nil {
		return nil, fmt.Errorf("%w; and it cannot be set aside: %w; move it away by hand", err, rerr)
	}
	log.Error("job history unreadable; set it aside and starting with an empty history", "error", err, "set_aside", aside)
	return &History{path: path, names: map[string]Past{}}, nil
}

// takeOver moves the history at old to path unless path exists already.
func takeOver(old, path string, log hclog.Logger) error {
	if _, err := os.Lstat(old); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := os.Lstat(path); err == nil {
		log.Warn("a job history is left in the runtime directory; the state directory's is used", "ignored", old, "history", path)
		return nil
	}
	if err := moveFile(old, path); err != nil {
		return fmt.Errorf("take over the job history %s into %s: %w", old, path, err)
	}
	log.Info("took over the job history from the runtime directory", "from", old, "to", path)
	return nil
}

// moveFile renames old to path, copying across file systems (the runtime
// directory is a tmpfs, the state directory is not).
func moveFile(old, path string) error {
	if err := os.Rename(old, path); !errors.Is(err, syscall.EXDEV) {
		return err
	}
	src, err := os.Open(old)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.CreateTemp(filepath.Dir(path), ".history-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(dst.Name())
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Sync(); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	if err := os.Rename(dst.Name(), path); err != nil {
		return err
	}
	return os.Remove(old)
}

// errUnreadable marks a history file whose content cannot be used: not
// JSON, or another version.
var errUnreadable = errors.New("not a job history this tokend can read")

// LoadHistory reads the history file at path; a missing file is an empty
// history.
func LoadHistory(path string) (*History, error) {
	h := &History{path: path, names: map[string]Past{}}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read job history %s: %w", path, err)
	}
	var f historyFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("read job history %s: %w: %w", path, errUnreadable, err)
	}
	if f.Version != historyVersion {
		return nil, fmt.Errorf("read job history %s: %w: version %d, this tokend reads version %d", path, errUnreadable, f.Version, historyVersion)
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
	h.update(name, p, now)
}

// recordOOM remembers that a job of class c of a lease of name was
// OOM-killed at size bytes: the next lease of that name starts expecting
// at least that, so it is admitted with room for the job that was killed.
func (h *History) recordOOM(name string, c class, size uint64, now time.Time) {
	p := h.names[name]
	switch c {
	case classLink:
		p.Link = max(p.Link, size)
	case classCompile:
		p.Compile = max(p.Compile, size)
	}
	p.OOMKills++
	h.update(name, p, now)
}

func (h *History) update(name string, p Past, now time.Time) {
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
// or a power cut leaves the old file or the new one.
func (h *History) Save() error {
	if !h.dirty {
		return nil
	}
	raw, err := json.MarshalIndent(historyFile{Version: historyVersion, Names: h.names}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode job history: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(h.path), ".history-*.json")
	if err != nil {
		return fmt.Errorf("write job history %s: %w", h.path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(raw, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write job history %s: %w", h.path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write job history %s: %w", h.path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write job history %s: %w", h.path, err)
	}
	if err := os.Rename(tmp.Name(), h.path); err != nil {
		return fmt.Errorf("write job history %s: %w", h.path, err)
	}
	h.dirty = false
	return nil
}
