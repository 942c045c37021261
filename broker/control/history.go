package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/atomicfile"
)

// historyVersion changes when the history file's meaning does. Version 1
// kept one entry per name for everyone; its entries are read as root's.
const historyVersion = 2

const (
	// historyLimit bounds the names remembered per user; the least
	// recently updated go first, so a user filling the history pushes out
	// only their own.
	historyLimit = 1000
	// historyRuns is how many runs an estimate is taken over: the upper
	// median of the largest job of each of the last five, so two odd runs
	// out of five cannot move it.
	historyRuns = 5
	// historyStep bounds how far one run moves an estimate: to at most
	// twice or half the estimate before it. The first whole run is taken
	// as measured: what came before it was a default, a guess, not
	// evidence to defend. Bounded by it, a ripgrep build's first run
	// (313 MiB, its largest rustc) left an estimate of 512 MiB, half the
	// 1 GiB default, and in the bench's warm cargo runs two such builds
	// in 768 MiB started together only when memory happened to be low:
	// in one run of two the second build waited 87 s.
	historyStep = 2
	// oomGrowth is how many times the size a job reached when the OOM
	// killer took it its next run is expected at. A killed job had not
	// reached its peak, and how far it would have grown is unknown:
	// expected at that size, a 3 GiB link killed at 1.6 GiB came back in
	// the bench's warm hog runs as the smaller of two links and was let
	// run beside the other, and was killed again. Doubled, a job killed
	// again is killed larger, and one that finishes shows its peak, which
	// the estimate then follows; the domain less the reserve caps the
	// seed (engine.track).
	oomGrowth = 2
)

// HistoryFile is the job history's name in the state directory (and, before
// tokend kept one, in the runtime directory).
const HistoryFile = "history.json"

// Past is what past leases of one user and name showed, as nixbuild.net
// predicts a build's memory from earlier builds of the same package.
type Past struct {
	Compile ClassPast `json:"compile"`
	Link    ClassPast `json:"link"`
	Runs    int       `json:"runs"`
	// OOMKills counts jobs of these leases the kernel's OOM killer killed.
	OOMKills int       `json:"oom_kills,omitempty"`
	Updated  time.Time `json:"updated"`
}

// ClassPast is the history of one job class of one name.
type ClassPast struct {
	// Estimate is what the next lease's jobs of the class are expected
	// to peak at; 0 until a run showed one.
	Estimate uint64 `json:"estimate,omitempty"`
	// Recent are the largest job peaks of the last runs, newest last.
	Recent []uint64 `json:"recent,omitempty"`
}

// class is the entry of one job class.
func (p *Past) class(c class) *ClassPast {
	if c == classLink {
		return &p.Link
	}
	return &p.Compile
}

type historyFile struct {
	Version int                     `json:"version"`
	Users   map[int]map[string]Past `json:"users"`
}

// historyFileV1 is the file of tokend before it kept a history per user.
type historyFileV1 struct {
	Names map[string]struct {
		Compile uint64    `json:"compile"`
		Link    uint64    `json:"link"`
		Runs    int       `json:"runs"`
		Updated time.Time `json:"updated"`
	} `json:"names"`
}

// History is the job memory of past leases per user and name, kept in the
// state directory so that a new lease of a known name starts from what its
// predecessors needed rather than from the default, across restarts and
// reboots. Each user's leases learn only from that user's runs: a lease
// group member cannot change root's estimates or another member's.
type History struct {
	path string

	mu    sync.Mutex
	users map[int]map[string]Past
	dirty bool
}

func newHistory(path string) *History {
	return &History{path: path, users: map[int]map[string]Past{}}
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
	return newHistory(path), nil
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
	raw, err := os.ReadFile(old)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, raw, atomicfile.CrashOfHost); err != nil {
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
	h := newHistory(path)
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read job history %s: %w", path, err)
	}
	var version struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(raw, &version); err != nil {
		return nil, fmt.Errorf("read job history %s: %w: %w", path, errUnreadable, err)
	}
	switch version.Version {
	case historyVersion:
		var f historyFile
		if err := json.Unmarshal(raw, &f); err != nil {
			return nil, fmt.Errorf("read job history %s: %w: %w", path, errUnreadable, err)
		}
		for uid, names := range f.Users {
			if names != nil {
				h.users[uid] = names
			}
		}
	case 1:
		var f historyFileV1
		if err := json.Unmarshal(raw, &f); err != nil {
			return nil, fmt.Errorf("read job history %s: %w: %w", path, errUnreadable, err)
		}
		for name, v := range f.Names {
			p := Past{Runs: v.Runs, Updated: v.Updated}
			for c, peak := range map[class]uint64{classCompile: v.Compile, classLink: v.Link} {
				if peak > 0 {
					*p.class(c) = ClassPast{Estimate: peak, Recent: []uint64{peak}}
				}
			}
			h.user(0)[name] = p
		}
		h.dirty = len(f.Names) > 0
	default:
		return nil, fmt.Errorf("read job history %s: %w: version %d, this tokend reads versions 1 and %d", path, errUnreadable, version.Version, historyVersion)
	}
	return h, nil
}

// user is the names of uid, made if need be. h.mu is held.
func (h *History) user(uid int) map[string]Past {
	names, ok := h.users[uid]
	if !ok {
		names = map[string]Past{}
		h.users[uid] = names
	}
	return names
}

// seed is what uid's jobs of class c in leases of name are expected to
// peak at, or 0 if no run of theirs showed one.
func (h *History) seed(uid int, name string, c class) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.users[uid][name]
	return p.class(c).Estimate
}

// leaseRun is what one lease showed, per class: the largest peak of its
// jobs (0: it ran none), the estimate it started from, and the largest
// size a job of it reached before the OOM killer took it. partial: the
// lease had not ended (tokend stopped while it ran), so its peaks are
// only a lower bound of what its whole run would have shown.
type leaseRun struct {
	peak, prior, oom [3]uint64
	partial          bool
}

// record remembers what a lease of uid and name showed. Each class's
// estimate follows the upper median of the last historyRuns runs, moved
// by at most historyStep from where it was (the first whole run sets it),
// and never below oomGrowth times what a job of this lease reached when
// it was OOM-killed. A class the lease ran no job of keeps its estimate.
// A partial run can only raise an estimate (or, with none yet, the
// estimate the lease started from): a class whose peak is no more than
// that is left as it was, since the rest of the run might have reached
// it, and one above it counts as a run whose result is no lower than it;
// only whole runs count in Runs.
func (h *History) record(uid int, name string, run leaseRun, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.user(uid)[name]
	changed := false
	for _, c := range []class{classCompile, classLink} {
		peak := max(run.peak[c], run.oom[c])
		cp := p.class(c)
		from := cp.Estimate
		if from == 0 && run.partial {
			from = run.prior[c]
		}
		if peak == 0 || run.partial && peak <= from {
			continue
		}
		changed = true
		cp.Recent = append(cp.Recent, peak)
		cp.Recent = cp.Recent[max(len(cp.Recent)-historyRuns, 0):]
		cp.Estimate = max(bounded(upperMedian(cp.Recent), from), afterOOM(run.oom[c]))
		if run.partial {
			cp.Estimate = max(cp.Estimate, from)
		}
	}
	if run.partial && !changed {
		return
	}
	if !run.partial {
		p.Runs++
	}
	h.update(uid, name, p, now)
}

// recordOOM remembers at once that a job of class c of a lease of uid and
// name was OOM-killed at size bytes: the next lease of that name starts
// expecting oomGrowth times that, so it is admitted with room for the job
// that was killed to grow past it, even while the killed one's lease
// still runs.
func (h *History) recordOOM(uid int, name string, c class, size uint64, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.user(uid)[name]
	if c != classDriver {
		cp := p.class(c)
		cp.Estimate = max(cp.Estimate, afterOOM(size))
	}
	p.OOMKills++
	h.update(uid, name, p, now)
}

// afterOOM is what a job killed by the OOM killer at size is expected at
// next time, without overflow.
func afterOOM(size uint64) uint64 {
	if size > math.MaxUint64/oomGrowth {
		return math.MaxUint64
	}
	return oomGrowth * size
}

// bounded is v, moved no further than historyStep from from.
func bounded(v, from uint64) uint64 {
	if from == 0 {
		return v
	}
	return min(max(v, from/historyStep), from*historyStep)
}

// upperMedian is the middle of vs, the larger of the two middle ones for
// an even count: of two runs the larger counts, which errs toward room.
func upperMedian(vs []uint64) uint64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[len(s)/2]
}

// update stores p and forgets uid's least recently updated names beyond
// historyLimit. h.mu is held.
func (h *History) update(uid int, name string, p Past, now time.Time) {
	p.Updated = now
	names := h.user(uid)
	names[name] = p
	h.dirty = true
	if len(names) <= historyLimit {
		return
	}
	byAge := make([]string, 0, len(names))
	for n := range names {
		byAge = append(byAge, n)
	}
	sort.Slice(byAge, func(i, j int) bool { return names[byAge[i]].Updated.Before(names[byAge[j]].Updated) })
	for _, n := range byAge[:len(byAge)-historyLimit] {
		delete(names, n)
	}
}

// Save writes the history if it changed, atomically and durably: a crash
// or a power cut leaves the old file or the new one.
func (h *History) Save() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.dirty {
		return nil
	}
	raw, err := json.MarshalIndent(historyFile{Version: historyVersion, Users: h.users}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode job history: %w", err)
	}
	if err := atomicfile.Write(h.path, append(raw, '\n'), atomicfile.CrashOfHost); err != nil {
		return fmt.Errorf("save job history: %w", err)
	}
	h.dirty = false
	return nil
}

// Entries lists the history by user and name, for the API.
func (h *History) Entries() []api.HistoryEntry {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := []api.HistoryEntry{}
	for uid, names := range h.users {
		for name, p := range names {
			out = append(out, api.HistoryEntry{
				UID: uid, Name: name, Compile: p.Compile.Estimate, Link: p.Link.Estimate,
				Runs: p.Runs, OOMKills: p.OOMKills, LastSeen: p.Updated,
			})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].UID != out[j].UID {
			return out[i].UID < out[j].UID
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Forget forgets name for uid, or for every user when uid is nil, and
// says how many entries went. A lease of that name already running keeps
// the estimate it started from.
func (h *History) Forget(name string, uid *int) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for u, names := range h.users {
		if _, ok := names[name]; ok && (uid == nil || *uid == u) {
			delete(names, name)
			n++
		}
	}
	h.dirty = h.dirty || n > 0
	return n
}
