package control

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func TestHistoryRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.json")
	h := newTestHistoryAt(t, path)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	h.record("llvm-19.1.7", 900*mib, 3<<30, now)
	// A lease that ran no link keeps the link peak of the one before.
	h.record("llvm-19.1.7", 950*mib, 0, now.Add(time.Hour))
	if err := h.Save(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("runtime dir holds %d files after an atomic save, want only history.json", len(entries))
	}
	got := newTestHistoryAt(t, path)
	if c, l := got.seed("llvm-19.1.7", classCompile), got.seed("llvm-19.1.7", classLink); c != 950*mib || l != 3<<30 {
		t.Errorf("seeds %d and %d MiB, want 950 and 3072", c/mib, l/mib)
	}
	if p := got.names["llvm-19.1.7"]; p.Runs != 2 || !p.Updated.Equal(now.Add(time.Hour)) {
		t.Errorf("entry %+v, want 2 runs updated an hour later", p)
	}
	if got.seed("unknown", classCompile) != 0 {
		t.Error("an unknown name has a seed")
	}
}

// History is only a prediction: a file it cannot read is set aside under
// a new name, reported, and tokend starts with an empty history; the next
// save writes a new file and leaves the set-aside one alone.
func TestHistoryUnreadableIsSetAside(t *testing.T) {
	for name, content := range map[string]string{
		"garbage":       "{not json",
		"other version": `{"version": 99, "names": {"x": {"compile": 1}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, HistoryFile)
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			var logs strings.Builder
			h, err := OpenHistory(dir, "", hclog.New(&hclog.LoggerOptions{Output: &logs}))
			if err != nil {
				t.Fatal(err)
			}
			if len(h.names) != 0 {
				t.Fatalf("history %+v, want an empty one", h.names)
			}
			aside, err := filepath.Glob(path + ".corrupt-*")
			if err != nil || len(aside) != 1 {
				t.Fatalf("set-aside files %v (%v), want one %s.corrupt-<time>", aside, err, path)
			}
			if b, err := os.ReadFile(aside[0]); err != nil || string(b) != content {
				t.Errorf("set-aside file holds %q (%v), want the unreadable content", b, err)
			}
			if !strings.Contains(logs.String(), "job history unreadable") || !strings.Contains(logs.String(), aside[0]) {
				t.Errorf("log %q does not report the file set aside at %s", logs.String(), aside[0])
			}
			h.record("x", 100*mib, 0, time.Now())
			if err := h.Save(); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadHistory(path); err != nil {
				t.Errorf("the file saved after it does not load: %v", err)
			}
			if b, _ := os.ReadFile(aside[0]); string(b) != content {
				t.Error("saving touched the set-aside file")
			}
		})
	}
}

// A history left in the runtime directory by an older tokend is moved
// into the state directory once, and logged; a later start finds nothing
// to take over.
func TestHistoryTakenOverFromTheRuntimeDir(t *testing.T) {
	runtime, state := t.TempDir(), filepath.Join(t.TempDir(), "state")
	old := newTestHistoryAt(t, filepath.Join(runtime, HistoryFile))
	old.record("llvm", 900*mib, 3<<30, time.Now())
	if err := old.Save(); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	log := hclog.New(&hclog.LoggerOptions{Output: &logs})
	h, err := OpenHistory(state, runtime, log)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.seed("llvm", classLink); got != 3<<30 {
		t.Errorf("link seed %d MiB after the take-over, want 3072", got/mib)
	}
	if _, err := os.Stat(filepath.Join(runtime, HistoryFile)); !os.IsNotExist(err) {
		t.Errorf("the runtime directory's history is still there (%v): it must be moved, not copied", err)
	}
	if !strings.Contains(logs.String(), "took over the job history") {
		t.Errorf("log %q does not report the take-over", logs.String())
	}
	logs.Reset()
	if _, err := OpenHistory(state, runtime, log); err != nil {
		t.Fatal(err)
	}
	if logs.Len() != 0 {
		t.Errorf("second start logged %q, want nothing to take over", logs.String())
	}
}

// A job the OOM killer took is remembered at the size it reached, even
// above what the lease's finished jobs showed.
func TestHistoryRemembersOOMKills(t *testing.T) {
	h := newTestHistory(t)
	now := time.Now()
	h.record("chromium", 800*mib, 0, now)
	h.recordOOM("chromium", classCompile, 1500*mib, now)
	if got, p := h.seed("chromium", classCompile), h.names["chromium"]; got != 1500*mib || p.OOMKills != 1 {
		t.Errorf("seed %d MiB, %d OOM kills; want 1500 MiB and 1", got/mib, p.OOMKills)
	}
}

func TestHistoryForgetsTheOldest(t *testing.T) {
	h := newTestHistoryAt(t, filepath.Join(t.TempDir(), "history.json"))
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range historyLimit + 5 {
		h.record(fmt.Sprintf("pkg-%d", i), 100*mib, 0, start.Add(time.Duration(i)*time.Minute))
	}
	if len(h.names) != historyLimit {
		t.Fatalf("%d names kept, want %d", len(h.names), historyLimit)
	}
	for i := range 5 {
		if _, ok := h.names[fmt.Sprintf("pkg-%d", i)]; ok {
			t.Errorf("pkg-%d, among the oldest, was kept", i)
		}
	}
}

func newTestHistoryAt(t *testing.T, path string) *History {
	t.Helper()
	h, err := LoadHistory(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
