package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/broker/brokertest"
	"github.com/tokend/tokend/internal/buildtest"

	"github.com/tokend/tokend/api"
)

// host is a fake host for doctor: a PATH of its own, nix.conf, /proc and
// /sys/fs/cgroup.
type host struct {
	t          *testing.T
	bin, conf  string
	proc, cgrp string
}

func newHost(t *testing.T) *host {
	h := &host{t: t, bin: t.TempDir(), conf: t.TempDir(), proc: t.TempDir(), cgrp: t.TempDir()}
	t.Setenv("PATH", h.bin)
	t.Setenv("NIX_CONF_DIR", h.conf)
	t.Setenv("NIX_CONFIG", "")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("NIX_USER_CONF_FILES", filepath.Join(h.conf, "no-user-conf"))
	// A healthy kernel: cgroup v2 at the root, PSI for the host and for
	// this process's group.
	h.file(h.cgrp, "cgroup.controllers", "cpu memory pids\n", 0o444)
	h.file(h.cgrp, "build.slice/memory.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", 0o444)
	h.file(h.proc, "pressure/memory", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", 0o444)
	h.file(h.proc, "self/cgroup", "0::/build.slice\n", 0o444)
	h.tool("make", "GNU Make 4.4.1")
	h.tool("ninja", "1.13.2")
	return h
}

func (h *host) file(dir, name, content string, mode os.FileMode) string {
	h.t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		h.t.Fatal(err)
	}
	os.Remove(path)
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		h.t.Fatal(err)
	}
	return path
}

// tool puts a program on PATH that prints version for --version.
func (h *host) tool(name, version string) {
	h.file(h.bin, name, fmt.Sprintf("#!/bin/sh\necho '%s'\n", version), 0o755)
}

// nix puts a fake nix on PATH: version for --version, settings for
// `nix config show`.
func (h *host) nix(version, settings string) {
	h.file(h.conf, "shown", settings, 0o644)
	h.file(h.bin, "nix", fmt.Sprintf(`#!/bin/sh
case "$*" in
--version) echo '%s' ;;
*"config show") /bin/cat '%s' ;;
*) echo "error: unknown command $*" >&2; exit 1 ;;
esac
`, version, filepath.Join(h.conf, "shown")), 0o755)
}

// hook makes an executable tokend-nix-hook and returns its path.
func (h *host) hook() string {
	return h.file(h.t.TempDir(), "tokend-nix-hook", "#!/bin/sh\n", 0o755)
}

// run runs doctor against socket and returns its exit status and its
// lines by check.
func (h *host) run(socket string) (int, map[string]string, string) {
	h.t.Helper()
	d := &doctor{socket: socket, client: api.NewClient(socket), procDir: h.proc, cgroupRoot: h.cgrp, hookSocket: socket}
	var out bytes.Buffer
	code := d.report(context.Background(), &out)
	lines := map[string]string{}
	re := regexp.MustCompile(`^(OK  |WARN|FAIL) ([a-zA-Z0-9 ()-]+): `)
	all := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	for _, line := range all[:len(all)-1] {
		m := re.FindStringSubmatch(line)
		if m == nil {
			h.t.Fatalf("line %q is not LEVEL check: message", line)
		}
		lines[m[2]] = line
	}
	if !regexp.MustCompile(`^\d+ OK, \d+ WARN, \d+ FAIL$`).MatchString(all[len(all)-1]) {
		h.t.Fatalf("last line %q is not the count", all[len(all)-1])
	}
	return code, lines, out.String()
}

// want checks that check's line starts with level and contains every part.
func want(t *testing.T, lines map[string]string, check, level string, parts ...string) {
	t.Helper()
	line, ok := lines[check]
	if !ok {
		t.Errorf("no %q line in %v", check, lines)
		return
	}
	if !strings.HasPrefix(line, level) {
		t.Errorf("%q: want %s", line, level)
	}
	for _, p := range parts {
		if !strings.Contains(line, p) {
			t.Errorf("%q: want it to say %q", line, p)
		}
	}
}

func TestDoctorHealthyHost(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root: tokend runs as root on a healthy host")
	h := newHost(t)
	hook := h.hook()
	h.nix("nix (Nix) 2.34.8", "pre-build-hook = "+hook+"\nsandbox = true\nbuild-users-group = root\nauto-allocate-uids = false\n")
	socket := brokertest.Start(t, 4)
	code, lines, out := h.run(socket)
	if code != 0 || !strings.HasSuffix(out, "10 OK, 0 WARN, 0 FAIL\n") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	want(t, lines, "tokend", "OK", "budget 4 (config)", socket)
	want(t, lines, "pre-build-hook", "OK", hook, "nix config show")
	want(t, lines, "build users", "OK", "group root")
	want(t, lines, "memory pressure (PSI)", "OK", filepath.Join(h.cgrp, "build.slice/memory.pressure"))
}

func TestDoctorTokendDown(t *testing.T) {
	h := newHost(t)
	h.nix("nix (Nix) 2.34.8", "pre-build-hook = "+h.hook()+"\n")
	code, lines, _ := h.run(filepath.Join(t.TempDir(), "tokend.sock"))
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	want(t, lines, "tokend", "FAIL", "not running", "start it")

	stale := filepath.Join(t.TempDir(), "tokend.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	_, lines, _ = h.run(stale)
	want(t, lines, "tokend", "FAIL", "nothing answers", "restart tokend")
}

func TestDoctorTokendNotRootOrElsewhere(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root, to give the socket to another user")
	h := newHost(t)
	h.nix("nix (Nix) 2.34.8", "pre-build-hook = "+h.hook()+"\n")
	socket := brokertest.Start(t, 4)
	if err := os.Lchown(socket, 4321, -1); err != nil {
		t.Fatal(err)
	}
	d := &doctor{socket: socket, client: api.NewClient(socket), procDir: h.proc, cgroupRoot: h.cgrp, hookSocket: "/run/tokend/tokend.sock"}
	var lines []string
	for _, f := range d.tokend(context.Background()) {
		lines = append(lines, f.String())
	}
	got := strings.Join(lines, "\n")
	for _, w := range []string{"OK   tokend: answers", "FAIL tokend user: tokend runs as uid 4321", "WARN hook socket: tokend-nix-hook, run by Nix as root, looks for /run/tokend/tokend.sock"} {
		if !strings.Contains(got, w) {
			t.Errorf("want %q in:\n%s", w, got)
		}
	}
}

func TestDoctorLix(t *testing.T) {
	h := newHost(t)
	socket := brokertest.Start(t, 4)
	for version, level := range map[string]string{
		"nix (Lix, like Nix) 2.93.0": "FAIL",
		"nix (Lix, like Nix) 2.94.1": "FAIL",
		"nix (Lix, like Nix) 2.92.3": "OK",
		"nix (Nix) 2.93.0":           "OK",
	} {
		h.nix(version, "pre-build-hook = "+h.hook()+"\n")
		_, lines, _ := h.run(socket)
		want(t, lines, "nix", level, version)
	}
}

func TestDoctorHookSetting(t *testing.T) {
	h := newHost(t)
	socket := brokertest.Start(t, 4)
	notExec := h.file(t.TempDir(), "tokend-nix-hook", "", 0o644)
	for settings, check := range map[string][]string{
		"sandbox = true\n": {"FAIL", "not set", "add 'pre-build-hook = "},
		"pre-build-hook = /nowhere/tokend-nix-hook\n":            {"FAIL", "no such file"},
		"pre-build-hook = " + notExec + "\n":                     {"FAIL", "not an executable file"},
		"pre-build-hook = /usr/local/bin/my-hook\n":              {"WARN", "is not tokend-nix-hook"},
		"pre-build-hook = " + h.hook() + "\nsandbox = relaxed\n": {"OK"},
		"pre-build-hook = " + h.hook() + "\nsandbox = false\n":   {"OK"},
	} {
		h.nix("nix (Nix) 2.34.8", settings)
		code, lines, out := h.run(socket)
		want(t, lines, "pre-build-hook", check[0], check[1:]...)
		if (check[0] == "FAIL" || strings.Contains(settings, "sandbox = false")) != (code == 1) {
			t.Errorf("settings %q: exit %d\n%s", settings, code, out)
		}
	}
}

// Real nix reads a private NIX_CONF_DIR: with and without the hook line.
func TestDoctorWithRealNix(t *testing.T) {
	var nixes []string
	for _, dir := range []string{"/usr/bin", os.Getenv("NIX234_BIN")} {
		if dir != "" {
			if _, err := os.Stat(filepath.Join(dir, "nix")); err == nil {
				nixes = append(nixes, dir)
			}
		}
	}
	buildtest.Require(t, len(nixes) > 0, "nix (.ci/nix.sh installs it; NIX234_BIN names sid's)")
	socket := brokertest.Start(t, 4)
	for _, dir := range nixes {
		h := newHost(t)
		t.Setenv("PATH", h.bin+":"+dir)
		hook := h.hook()
		h.file(h.conf, "nix.conf", "sandbox = true\nbuild-users-group =\n", 0o644)
		code, lines, out := h.run(socket)
		want(t, lines, "pre-build-hook", "FAIL", "not set (nix ")
		want(t, lines, "sandbox", "OK", "true")
		if code != 1 {
			t.Errorf("%s, no hook: exit %d\n%s", dir, code, out)
		}
		h.file(h.conf, "nix.conf", "sandbox = false\nbuild-users-group =\npre-build-hook = "+hook+"\n", 0o644)
		_, lines, _ = h.run(socket)
		want(t, lines, "pre-build-hook", "OK", hook)
		want(t, lines, "sandbox", "FAIL", "false", "sandbox = true")
		want(t, lines, "build users", "OK", "none")
	}
}

func TestDoctorReadsNixConfWithoutNix(t *testing.T) {
	h := newHost(t)
	socket := brokertest.Start(t, 4)
	hook := h.hook()
	h.file(h.conf, "nix.conf", `# settings
sandbox = relaxed   # comment
include hook.conf
!include missing.conf
build-users-group = nixbld
`, 0o644)
	h.file(h.conf, "hook.conf", "pre-build-hook = "+hook+"\n", 0o644)
	t.Setenv("NIX_CONFIG", "build-users-group = no-such-group-tokend")
	code, lines, out := h.run(socket)
	want(t, lines, "nix", "WARN", "no nix on PATH")
	want(t, lines, "pre-build-hook", "OK", hook, filepath.Join(h.conf, "nix.conf"))
	want(t, lines, "sandbox", "OK", "relaxed")
	want(t, lines, "build users", "FAIL", "no-such-group-tokend")
	if code != 1 {
		t.Errorf("exit %d\n%s", code, out)
	}

	// A missing include is an error; so is a line Nix would refuse.
	h.file(h.conf, "nix.conf", "include gone.conf\n", 0o644)
	_, lines, _ = h.run(socket)
	want(t, lines, "pre-build-hook", "FAIL", "cannot read Nix's settings", "gone.conf")
	h.file(h.conf, "nix.conf", "sandbox true\n", 0o644)
	_, lines, _ = h.run(socket)
	want(t, lines, "sandbox", "FAIL")
}

func TestDoctorAutoAllocateUIDs(t *testing.T) {
	h := newHost(t)
	h.nix("nix (Nix) 2.34.8", "pre-build-hook = "+h.hook()+"\nauto-allocate-uids = true\nbuild-users-group = no-such-group-tokend\n")
	_, lines, _ := h.run(brokertest.Start(t, 4))
	want(t, lines, "build users", "OK", "auto-allocate-uids")
}

func TestDoctorTools(t *testing.T) {
	h := newHost(t)
	socket := brokertest.Start(t, 4)
	h.nix("nix (Nix) 2.34.8", "pre-build-hook = "+h.hook()+"\n")
	_, lines, _ := h.run(socket)
	want(t, lines, "make", "OK", "4.4.1")
	want(t, lines, "ninja", "OK", "1.13.2")

	h.tool("make", "GNU Make 4.3")
	h.tool("ninja", "1.11.1")
	code, lines, _ := h.run(socket)
	want(t, lines, "make", "WARN", "is 4.3", "--style pipe")
	want(t, lines, "ninja", "WARN", "is 1.11.1", "no jobserver client")
	if code != 0 {
		t.Errorf("old tools: exit %d, want 0 (they only warn)", code)
	}

	os.Remove(filepath.Join(h.bin, "make"))
	h.tool("ninja", "garbage")
	_, lines, _ = h.run(socket)
	want(t, lines, "make", "WARN", "not on PATH")
	want(t, lines, "ninja", "WARN", "cannot read its version")
}

func TestDoctorKernel(t *testing.T) {
	h := newHost(t)
	socket := brokertest.Start(t, 4)
	h.nix("nix (Nix) 2.34.8", "pre-build-hook = "+h.hook()+"\n")

	// Hybrid: v1 controllers, v2 under unified/.
	os.Remove(filepath.Join(h.cgrp, "cgroup.controllers"))
	h.file(h.cgrp, "unified/cgroup.controllers", "", 0o444)
	h.file(h.cgrp, "unified/build.slice/memory.pressure", "", 0o444)
	code, lines, _ := h.run(socket)
	want(t, lines, "cgroup v2", "WARN", "hybrid", "unified_cgroup_hierarchy=1")
	want(t, lines, "memory pressure (PSI)", "OK", filepath.Join(h.cgrp, "unified/build.slice/memory.pressure"))
	if code != 0 {
		t.Errorf("hybrid cgroups: exit %d, want 0 (a warning)", code)
	}

	os.RemoveAll(filepath.Join(h.cgrp, "unified"))
	_, lines, _ = h.run(socket)
	want(t, lines, "cgroup v2", "WARN", "v1 only")
	want(t, lines, "memory pressure (PSI)", "OK", filepath.Join(h.proc, "pressure/memory"))

	h.file(h.cgrp, "cgroup.controllers", "", 0o444)
	os.Remove(filepath.Join(h.cgrp, "build.slice/memory.pressure"))
	_, lines, _ = h.run(socket)
	want(t, lines, "memory pressure (PSI)", "WARN", "memory.pressure")

	os.RemoveAll(filepath.Join(h.proc, "pressure"))
	_, lines, _ = h.run(socket)
	want(t, lines, "memory pressure (PSI)", "WARN", "psi=1")
}

func TestParseVersion(t *testing.T) {
	for s, want := range map[string]string{
		"4.4.1": "[4 4 1]", "1.13.2.git": "[1 13 2]", "2.93.0-pre": "[2 93 0]", "2.34": "[2 34]", "x": "[]",
	} {
		if got := fmt.Sprint(parseVersion(s)); got != want {
			t.Errorf("%s: %s, want %s", s, got, want)
		}
	}
	for _, c := range []struct {
		v, want []int
		ok      bool
	}{
		{[]int{4, 4, 1}, []int{4, 4}, true},
		{[]int{4, 3}, []int{4, 4}, false},
		{[]int{5}, []int{4, 4}, true},
		{[]int{1, 9}, []int{1, 13}, false},
		{[]int{2}, []int{2, 93}, false},
	} {
		if atLeast(c.v, c.want) != c.ok {
			t.Errorf("atLeast(%v, %v) = %v", c.v, c.want, !c.ok)
		}
	}
}

// A nix build whose package lacks the setup hook never opens its FIFO;
// once it has run a while, doctor names it and the fix.
func TestDoctorNamesBuildsThatDidNotJoin(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root: nix leases are registered by root")
	socket := brokertest.Start(t, 4)
	c := api.NewClient(socket)
	ctx := context.Background()
	reg, err := c.Register(ctx, api.RegisterRequest{Name: "firefox", OwnerDir: t.TempDir(), Gate: true})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := notJoined(st, st.Leases[0].Created.Add(notJoinedAfter/2)); len(got) != 0 {
		t.Fatalf("a build just started was named: %v", got)
	}
	got := notJoined(st, st.Leases[0].Created.Add(notJoinedAfter+time.Second))
	if len(got) != 1 || got[0].level != warned || !strings.Contains(got[0].msg, reg.ID) ||
		!strings.Contains(got[0].fix, "pkgs.withJobserver pkgs.firefox") {
		t.Fatalf("findings %v, want one warning naming lease %s and withJobserver", got, reg.ID)
	}
	// Once its FIFO is opened (the setup hook), it has joined.
	f, err := os.OpenFile(reg.FIFO, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, err = c.Status(ctx); err != nil {
			t.Fatal(err)
		}
		if len(notJoined(st, st.Leases[0].Created.Add(time.Hour))) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not joined after the FIFO was opened: %+v", st.Leases)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
