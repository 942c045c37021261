package broker

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/buildtest"
)

// A runtime directory tokend does not own alone is refused at start with
// the path and the fix; a leases directory that is a symlink (here to a
// root-only directory holding files) had every file in its target deleted.
func TestRuntimeDirNotTokendsIsRefused(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root, to give a directory to another uid")
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string) string // returns the runtime dir
		want  []string
	}{
		{"symlink", func(t *testing.T, dir string) string {
			real := filepath.Join(dir, "real")
			os.Mkdir(real, 0o755)
			os.Symlink(real, filepath.Join(dir, "rt"))
			return filepath.Join(dir, "rt")
		}, []string{"is a symlink", "remove it"}},
		{"other owner", func(t *testing.T, dir string) string {
			rt := filepath.Join(dir, "rt")
			os.Mkdir(rt, 0o755)
			os.Chown(rt, buildtest.Nobody, buildtest.Nobody)
			return rt
		}, []string{"owned by uid 65534", "chown 0"}},
		{"world writable", func(t *testing.T, dir string) string {
			rt := filepath.Join(dir, "rt")
			os.Mkdir(rt, 0o755)
			os.Chmod(rt, 0o777)
			return rt
		}, []string{"may be written by others (mode 0777)", "chmod go-w"}},
		{"leases symlink", func(t *testing.T, dir string) string {
			rt := filepath.Join(dir, "rt")
			os.Mkdir(rt, 0o755)
			os.Symlink(filepath.Join(dir, "victim"), filepath.Join(rt, "leases"))
			return rt
		}, []string{"/rt/leases is a symlink"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			victim := filepath.Join(dir, "victim")
			os.Mkdir(victim, 0o700)
			precious := filepath.Join(victim, "precious")
			if err := os.WriteFile(precious, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			rt := tc.setup(t, dir)
			b, err := New(Options{RuntimeDir: rt})
			if err == nil {
				b.shutdown()
				t.Fatalf("runtime directory %s was accepted", rt)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) || !strings.Contains(err.Error(), dir) {
					t.Errorf("error %q lacks %q or the path", err, w)
				}
			}
			if _, err := os.Stat(precious); err != nil {
				t.Errorf("a file outside the runtime directory was touched: %v", err)
			}
		})
	}
}

// A state file planted between a kill -9 and the restart names files and
// cgroups of the attacker's choosing: such entries are set aside (logged,
// the file kept) and the good ones adopted.
func TestForgedStateEntriesAreSetAside(t *testing.T) {
	dir := t.TempDir()
	first, err := New(Options{RuntimeDir: dir, Budget: 4})
	if err != nil {
		t.Fatal(err)
	}
	good, err := first.Register(LeaseRequest{Name: "good", Owner: self(), GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.shutdown(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	var st savedState
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	victim := t.TempDir()
	forged := st.Leases[0]
	forged.Name = "forged"
	bad := []savedLease{
		func() savedLease { l := forged; l.ID = "../../" + filepath.Base(victim); return l }(),
		func() savedLease { l := forged; l.ID = "0123456789ab"; l.Cgroup = victim; l.OwnCgroup = true; return l }(),
		func() savedLease {
			l := forged
			l.ID = "0123456789ac"
			l.UID = 65534
			l.Owner = api.Owner{Dir: "/"}
			return l
		}(),
		func() savedLease { l := forged; l.ID = "0123456789ad"; l.Name = "\x1b[2Jx"; return l }(),
		func() savedLease { l := forged; l.ID = "0123456789ae"; l.Granted = -5; return l }(),
	}
	for _, l := range bad[1:] {
		if err := syscall.Mkfifo(filepath.Join(dir, "leases", l.ID+".fifo"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st.Leases = append(st.Leases, bad...)
	forgedRaw, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(dir, stateFile), forgedRaw, 0o600); err != nil {
		t.Fatal(err)
	}

	var log strings.Builder
	second, err := New(Options{RuntimeDir: dir, Budget: 4, Logger: hclog.New(&hclog.LoggerOptions{Output: &log})})
	if err != nil {
		t.Fatal(err)
	}
	defer second.shutdown()
	got := second.Status()
	if len(got.Leases) != 1 || got.Leases[0].ID != good.ID {
		t.Fatalf("adopted %+v; want only the good lease %s", got.Leases, good.ID)
	}
	if n := strings.Count(log.String(), "state file entry refused"); n != len(bad) {
		t.Errorf("%d refusals logged, want %d:\n%s", n, len(bad), log.String())
	}
	kept, err := os.ReadFile(filepath.Join(dir, stateFile+".rejected-1"))
	if err != nil || string(kept) != string(forgedRaw) {
		t.Errorf("the refused state file was not kept aside as it was: %v", err)
	}
	if entries, _ := os.ReadDir(victim); len(entries) != 0 {
		t.Errorf("tokend wrote into the forged cgroup %s: %v", victim, entries)
	}
}

// The socket's mode is set without following a symlink put in its place.
func TestSocketChmodDoesNotFollowSymlinks(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "tokend.sock")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := chmodSocket(link, 0o666); err == nil {
		t.Error("chmod of a symlink in the socket's place succeeded")
	}
	if st, err := os.Stat(target); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("the symlink's target: %v, %v; want mode 0600 untouched", st.Mode(), err)
	}
}
