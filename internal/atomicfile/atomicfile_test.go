package atomicfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteReplacesWholeAndLeavesNothingBehind(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for i, data := range []string{"first, and longer than what replaces it\n", "second\n"} {
		if err := Write(path, []byte(data), Durability(i%2)); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != data {
			t.Fatalf("read back %q, %v; want %q", got, err, data)
		}
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d files after two writes, want 1: %v", len(entries), entries)
	}
}

// A write that cannot happen leaves the old file as it was and says why.
func TestFailedWriteKeepsTheOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := Write(path, []byte("old\n"), CrashOfHost); err != nil {
		t.Fatal(err)
	}
	// A directory where the file should go: the rename must fail.
	blocked := filepath.Join(dir, "blocked")
	os.Mkdir(blocked, 0o755)
	os.WriteFile(filepath.Join(blocked, "x"), nil, 0o644)
	err := Write(blocked, []byte("new\n"), CrashOfWriter)
	if err == nil || !strings.Contains(err.Error(), blocked) {
		t.Fatalf("writing over a full directory: %v, want an error naming it", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "old\n" {
		t.Fatalf("old file now %q", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Fatalf("a failed write left files behind: %v", entries)
	}
}

// The file's name being a symlink sends the write nowhere else: the link
// is replaced, what it pointed at is left as it was.
func TestWriteAtReplacesASymlinkItself(t *testing.T) {
	dir, elsewhere := t.TempDir(), filepath.Join(t.TempDir(), "target")
	os.WriteFile(elsewhere, []byte("keep\n"), 0o644)
	if err := os.Symlink(elsewhere, filepath.Join(dir, "state.json")); err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := WriteAt(d, "state.json", []byte("new\n"), CrashOfHost); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(elsewhere); string(got) != "keep\n" {
		t.Fatalf("the link's target now holds %q", got)
	}
	fi, err := os.Lstat(filepath.Join(dir, "state.json"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("state.json is %v, %v; want a regular file", fi.Mode(), err)
	}
}
