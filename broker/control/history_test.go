package control

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// History is only a prediction: a file it cannot read is reported and
// replaced by an empty history, never a reason not to start.
func TestHistoryUnreadable(t *testing.T) {
	for name, content := range map[string]string{
		"garbage":       "{not json",
		"other version": `{"version": 99, "names": {"x": {"compile": 1}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "history.json")
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			h, err := LoadHistory(path)
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Errorf("error %v, want one naming %s", err, path)
			}
			if h == nil || len(h.names) != 0 {
				t.Fatalf("history %+v, want an empty one", h)
			}
			h.record("x", 100*mib, 0, time.Now())
			if err := h.Save(); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadHistory(path); err != nil {
				t.Errorf("the file saved over it does not load: %v", err)
			}
		})
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
