package memory

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// copyFixture copies testdata/memory/<dir> into a temporary directory for
// a test to break.
func copyFixture(t *testing.T, dir string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), dir)
	if err := os.CopyFS(dst, os.DirFS(fixture(dir))); err != nil {
		t.Fatal(err)
	}
	return dst
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// wantErr checks that err is set and names every fragment.
func wantErr(t *testing.T, err error, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one naming %q", fragments)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not name %q", err, f)
		}
	}
}

func readErr(t *testing.T, c Config) error {
	t.Helper()
	c.Proc = fixture("proc")
	d, err := NewDomain(c)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Read()
	return err
}

func TestBadConfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "gone")
	_, err := NewDomain(Config{Proc: fixture("proc"), Cgroup: missing})
	wantErr(t, err, missing, "existing cgroup directory")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v is not fs.ErrNotExist", err)
	}

	// A cgroup2 group without the memory controller has memory.pressure
	// but no memory.current, like every group under this host's
	// /sys/fs/cgroup/unified.
	bare := t.TempDir()
	write(t, filepath.Join(bare, "memory.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
	_, err = NewDomain(Config{Proc: fixture("proc"), Cgroup: bare})
	wantErr(t, err, bare, "no memory controller", "cgroup.subtree_control")

	_, err = NewDomain(Config{Proc: fixture("proc"), Pressure: missing})
	wantErr(t, err, missing, "PSI")

	_, err = NewDomain(Config{Proc: missing})
	wantErr(t, err, missing, "Config.Proc")
}

func TestBadCgroupFiles(t *testing.T) {
	for _, c := range []struct {
		name      string
		dir, file string
		content   string // "" removes the file
		fragments []string
	}{
		{"garbage number", "cgroup2-memory", "memory.current", "3G\n", []string{"memory.current", "want one decimal number"}},
		{"max in v1", "memcg-v1", "memory.limit_in_bytes", "max\n", []string{"memory.limit_in_bytes", "want one decimal number"}},
		{"garbage limit", "cgroup2-memory", "memory.max", "-1\n", []string{"memory.max", `"max"`}},
		{"missing stat key", "cgroup2-memory", "memory.stat", "anon 1\nfile 2\nactive_file 1\n", []string{"memory.stat", `no "inactive_file" line`}},
		{"garbage stat value", "memcg-v1", "memory.stat", "total_rss x\n", []string{"memory.stat", "total_rss"}},
		{"stat line without value", "memcg-v1", "memory.stat", "total_rss\n", []string{"memory.stat", "key value"}},
		{"old v1 kernel", "memcg-v1", "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n", []string{"oom_kill", "4.13"}},
		{"missing events", "cgroup2-memory", "memory.events", "", []string{"memory.events", "removed"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := copyFixture(t, c.dir)
			f := filepath.Join(dir, c.file)
			if c.content == "" {
				if err := os.Remove(f); err != nil {
					t.Fatal(err)
				}
			} else {
				write(t, f, c.content)
			}
			wantErr(t, readErr(t, Config{Cgroup: dir, Pressure: fixture("cgroup2", "memory.pressure")}), c.fragments...)
		})
	}
}

func TestBadPressureFile(t *testing.T) {
	for _, c := range []struct {
		name, content string
		fragments     []string
	}{
		{"no full line", "some avg10=0.00 avg60=0.00 avg300=0.00 total=12\n", []string{"lacks a some or full line"}},
		{"garbage total", "some avg10=0.00 avg60=0.00 avg300=0.00 total=12\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=-3\n", []string{"full line", "total=<microseconds>"}},
		{"no total", "some avg10=0.00 avg60=0.00 avg300=0.00\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1\n", []string{"some line", "total=<microseconds>"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "memory.pressure")
			write(t, f, c.content)
			wantErr(t, readErr(t, Config{Pressure: f}), append(c.fragments, f)...)
		})
	}
}

func TestBadMeminfo(t *testing.T) {
	proc := copyFixture(t, "proc")
	write(t, filepath.Join(proc, "meminfo"), "MemTotal:       24684084 kB\nMemFree:        23008276 kB\n")
	d, err := NewDomain(Config{Proc: proc})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Read()
	wantErr(t, err, "MemAvailable", "3.14")
}

func TestStallSinceRejects(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := Reading{At: t0, Pressure: Pressure{Some: time.Second, Full: time.Second}}
	b := Reading{At: t0.Add(time.Second), Pressure: Pressure{Some: 2 * time.Second, Full: time.Second}}
	if st, err := b.StallSince(a); err != nil || st.Some != 1 || st.Full != 0 || st.Interval != time.Second {
		t.Errorf("StallSince = %+v, %v; want some 1, full 0 over 1s", st, err)
	}
	_, err := a.StallSince(b)
	wantErr(t, err, "earlier reading first")
	recreated := Reading{At: t0.Add(2 * time.Second)}
	_, err = recreated.StallSince(b)
	wantErr(t, err, "went backwards", "removed and made again")
}

func TestBadTrace(t *testing.T) {
	_, err := ReadTrace(strings.NewReader(`{"reading":{"mem_total":1},"procs":[]}` + "\n" + `{"reading":{"mem_total":"x"}}`))
	wantErr(t, err, "snapshot 2", "re-record")
	_, err = ReadTrace(strings.NewReader(`{"reading":{},"extra":1}`))
	wantErr(t, err, "snapshot 1", "extra")
}
