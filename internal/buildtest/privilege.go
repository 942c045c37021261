package buildtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Require skips t when ok is false, saying what is missing, except under
// CI=true, where a missing capability or tool fails the test: CI installs
// everything the suite needs and runs as root, so a skip there would hide
// an untested feature.
func Require(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("needs %s, which CI must provide", what)
	}
	t.Skipf("skipping: needs %s", what)
}

// WorldDir is a new directory every user may enter, removed when t ends:
// t.TempDir's are private to root, and a build or client run as another
// user must reach its files, sockets and binaries.
func WorldDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tokend-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Nobody is the uid and gid tests use for a user with no privileges.
const Nobody = 65534

// RerunAsNobody runs the calling test again, alone, as uid and gid Nobody
// when the test process is root, and reports whether it did; the caller
// then returns, its outcome being the rerun's. Tests of what an
// unprivileged user meets would otherwise never run under CI, which runs
// as root. Not root, it returns false and the test goes on as it is.
func RerunAsNobody(t *testing.T) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		return false
	}
	// The test binary lives in a directory only root may enter.
	dir := WorldDir(t)
	raw, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, filepath.Base(os.Args[0]))
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	// The package directory, where relative testdata paths lead.
	if cmd.Dir, err = os.Getwd(); err != nil {
		t.Fatal(err)
	}
	if blocked := closedAncestor(cmd.Dir); blocked != "" {
		t.Skipf("uid %d cannot enter %s, above this checkout: clone it where other users may read it to run this test", Nobody, blocked)
	}
	cmd.Env = append(os.Environ(), "TMPDIR=/tmp", "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: Nobody, Gid: Nobody}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s as uid %d: %v\n%s", t.Name(), Nobody, err, out)
	}
	// A pattern that matched nothing would pass without testing anything.
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name()+" ")) {
		t.Fatalf("%s as uid %d did not run and pass:\n%s", t.Name(), Nobody, out)
	}
	t.Logf("ran as uid %d:\n%s", Nobody, out)
	return true
}

// closedAncestor is a directory on the way to dir that other users may
// not enter, or "" if they may enter all of them.
func closedAncestor(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		if st, err := os.Stat(d); err != nil || st.Mode().Perm()&0o001 == 0 {
			return d
		}
		if d == filepath.Dir(d) {
			return ""
		}
	}
}
