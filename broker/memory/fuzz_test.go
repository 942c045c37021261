package memory

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// fuzzFile puts data in a file of dir and returns its path: the parsers read
// files, as they do in /proc and /sys/fs/cgroup.
func fuzzFile(t *testing.T, dir string, data []byte) string {
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// FuzzReadPressureFile: PSI files never panic the parser, and an accepted
// one had both lines with their totals.
func FuzzReadPressureFile(f *testing.F) {
	f.Add([]byte("some avg10=0.00 avg60=0.00 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=6789\n"))
	f.Add([]byte("some total=1\n"))
	f.Add([]byte("full total=18446744073709551615\nsome total=x\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := uncached.readPressure(fuzzFile(t, dir, data))
		if err == nil && (p.Some < 0 || p.Full < 0) {
			t.Fatalf("negative stall from %q: %+v", data, p)
		}
	})
}

// FuzzReadKeyed: memory.stat and its kin never panic the parser, and an
// accepted file set every wanted key.
func FuzzReadKeyed(f *testing.F) {
	f.Add([]byte("anon 1\nfile 2\ninactive_file 3\n"))
	f.Add([]byte("total_inactive_file 3\nanon\n"))
	f.Add([]byte("inactive_file -1\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		var inactive, anon uint64 = 1<<64 - 1, 1<<64 - 1
		err := uncached.readKeyed(fuzzFile(t, dir, data), map[string]*uint64{"inactive_file": &inactive, "anon": &anon})
		if err == nil && (inactive == 1<<64-1 && anon == 1<<64-1) {
			t.Fatalf("accepted %q without reading its keys", data)
		}
	})
}

// FuzzReadLimit: v2 limit files are a number or "max", nothing else.
func FuzzReadLimit(f *testing.F) {
	f.Add([]byte("max\n"))
	f.Add([]byte("1073741824\n"))
	f.Add([]byte("-1"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := uncached.readLimit(fuzzFile(t, dir, data))
		if err == nil && v == Unlimited && string(bytes.TrimSpace(data)) != "max" && string(bytes.TrimSpace(data)) != "18446744073709551615" {
			t.Fatalf("%q read as no limit", data)
		}
	})
}
