package control

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker"
	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/internal/cgtest"
)

// registerChild is the test binary run as another user: it registers the
// lease described by TOKEND_REGISTER on TOKEND_SOCKET and prints the answer.
func registerChild() {
	var req api.RegisterRequest
	if err := json.Unmarshal([]byte(os.Getenv("TOKEND_REGISTER")), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reg, err := api.NewClient(os.Getenv("TOKEND_SOCKET")).Register(ctx, req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(reg)
}

// registerAsNobody registers req on socket from a process of uid 65534.
func registerAsNobody(t *testing.T, socket string, req api.RegisterRequest) api.Registered {
	t.Helper()
	bin := filepath.Join(buildtest.WorldDir(t), "control.test")
	raw, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(req)
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), "TOKEND_CONTROL_TEST_CHILD=register", "TOKEND_SOCKET="+socket, "TOKEND_REGISTER="+string(body))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: buildtest.Nobody, Gid: buildtest.Nobody}}
	cmd.Dir = "/"
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("register as uid %d: %v: %s", buildtest.Nobody, err, stderr)
	}
	var reg api.Registered
	if err := json.Unmarshal(out, &reg); err != nil {
		t.Fatalf("register as uid %d: %q: %v", buildtest.Nobody, out, err)
	}
	return reg
}

// setUIDSleep is a copy of sleep that runs as root whoever starts it: a
// process in a user's build that is not that user's alone.
func setUIDSleep(t *testing.T) string {
	t.Helper()
	src, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(buildtest.WorldDir(t), "suid-sleep")
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(bin, os.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// children lists the processes whose parent is pid.
func children(t *testing.T, pid int) map[string]int {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, f := range strings.Fields(string(raw)) {
		c, _ := strconv.Atoi(f)
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c))
		if err == nil {
			out[strings.TrimSpace(string(comm))] = c
		}
	}
	return out
}

// A member's lease moves only the member's own processes into its cgroup:
// a set-uid program its build started (here a set-uid root sleep) stays
// where it runs, while the build's other processes are moved in.
func TestMoveLeavesOtherUsersProcessesOut(t *testing.T) {
	m := cgtest.Need(t)
	buildBins(t)
	if _, err := user.LookupGroup("nogroup"); err != nil {
		t.Fatalf("needs the nogroup group (uid 65534's group on Debian): %v", err)
	}
	suid := setUIDSleep(t)
	leases := cgtest.MakeT(t, m.V2, 0)
	d := startTokend(t, "--lease-group", "nogroup", "--lease-cgroups", string(leases))

	owner := exec.Command("/bin/sh", "-c", `"$0" 60 & sleep 60 & wait`, suid)
	owner.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: buildtest.Nobody, Gid: buildtest.Nobody}}
	p := buildtest.Start(t, owner)
	var kids map[string]int
	waitUntil(t, "the owner's two children", func() bool {
		kids = children(t, owner.Process.Pid)
		return kids["suid-sleep"] > 0 && kids["sleep"] > 0
	})
	t.Cleanup(func() { syscall.Kill(kids["suid-sleep"], syscall.SIGKILL) })
	reg := registerAsNobody(t, d.socket, api.RegisterRequest{Name: "member", OwnerPID: owner.Process.Pid, NewCgroup: true})
	if reg.Cgroup == "" {
		t.Fatal("tokend made no cgroup for the lease")
	}
	waitUntil(t, "tokend to move the member's sleep into its lease cgroup", func() bool {
		in, err := members(reg.Cgroup)
		return err == nil && in[kids["sleep"]]
	})
	in, err := members(reg.Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	if in[kids["suid-sleep"]] {
		t.Errorf("tokend moved the set-uid root process %d into uid %d's lease cgroup", kids["suid-sleep"], buildtest.Nobody)
	}
	p.Kill()
}

// The brake freezes a user's lease group only while everything in it is
// that user's: a root process in it (here a set-uid sleep the build ran)
// makes tokend refuse, and a root lease (a nix build) may freeze its
// build users.
func TestFreezeOnlyReachableGroups(t *testing.T) {
	m := cgtest.Need(t)
	suid := setUIDSleep(t)
	inGroup := func(name string) cgtest.Group {
		g := cgtest.MakeT(t, m.V2, 0)
		cmd := exec.Command(name, "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: buildtest.Nobody, Gid: buildtest.Nobody}}
		p := buildtest.Start(t, cmd)
		if err := move(string(g), p.Cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		return g
	}
	own, mixed := inGroup("sleep"), inGroup(suid)

	if err := freeze(string(own), buildtest.Nobody); err != nil {
		t.Errorf("freezing a group of uid %d's own processes: %v", buildtest.Nobody, err)
	}
	if on, _ := isFrozen(string(own)); !on {
		t.Error("the group of the user's own processes was not frozen")
	}
	if err := freeze(string(mixed), buildtest.Nobody); err == nil || !strings.Contains(err.Error(), "not the lease's uid 65534") {
		t.Errorf("freezing a group holding a set-uid root process for uid %d: %v; want refused", buildtest.Nobody, err)
	}
	if on, _ := isFrozen(string(mixed)); on {
		t.Error("the group holding a root process was frozen")
	}
	if err := freeze(string(mixed), 0); err != nil {
		t.Errorf("freezing for a root lease: %v", err)
	}
	for _, g := range []cgtest.Group{own, mixed} {
		if err := setFrozen(string(g), false); err != nil {
			t.Fatal(err)
		}
	}
}

// A process that double-forks out of a build (a daemon, `(cmd &)`) left the
// owner's process tree for PID 1, and with it tokend's view: a user's
// build started outside its lease cgroup kept it outside. tokenctl is the
// subreaper of its command, so the orphan stays in the tree and is moved
// in with the rest.
func TestDoubleForkedProcessStaysInTheLease(t *testing.T) {
	m := cgtest.Need(t)
	buildBins(t)
	if _, err := user.LookupGroup("nogroup"); err != nil {
		t.Fatalf("needs the nogroup group (uid 65534's group on Debian): %v", err)
	}
	leases := cgtest.MakeT(t, m.V2, 0)
	d := startTokend(t, "--lease-group", "nogroup", "--lease-cgroups", string(leases))
	cmd := exec.Command(bins.tokenctl, "--socket", d.socket, "run", "--name", "forker", "--",
		"/bin/sh", "-c", `/bin/sh -c 'sleep 60 >/dev/null 2>&1 & echo $!'; exec sleep 60`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: buildtest.Nobody, Gid: buildtest.Nobody}}
	p := buildtest.Start(t, cmd)
	var orphan int
	waitUntil(t, "the build to print its orphan's pid", func() bool {
		for _, line := range strings.Split(p.Output(), "\n") {
			if pid, err := strconv.Atoi(strings.TrimSpace(line)); err == nil {
				orphan = pid
			}
		}
		return orphan > 0
	})
	t.Cleanup(func() { syscall.Kill(orphan, syscall.SIGKILL) })
	waitUntil(t, "tokend to move the orphan into the lease cgroup", func() bool {
		for _, l := range d.status(t).Leases {
			if l.Name == "forker" && l.Cgroup != "" {
				in, err := members(l.Cgroup)
				return err == nil && in[orphan]
			}
		}
		return false
	})
	p.Kill()
}

// A lease owned by a sandbox directory a crashed nix-daemon left behind
// held its slot for ever: the directory stays, and no process runs in it.
// Such a lease ends after the grace; one whose sandbox runs a process
// (here a chrooted sleep) stays.
func TestAbandonedSandboxLeaseEnds(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root, to chroot a process into a sandbox")
	b, err := broker.New(broker.Options{RuntimeDir: t.TempDir(), Budget: 4, Tick: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := New(b, Config{
		Params: Params{Tick: 20 * time.Millisecond}, AbandonedGrace: 300 * time.Millisecond,
		History: newTestHistory(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- b.Run(ctx) }()
	go func() { done <- ctl.Run(ctx) }()
	defer func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	}()
	left, busy := t.TempDir(), t.TempDir()
	raw, err := os.ReadFile("/bin/busybox")
	buildtest.Require(t, err == nil, "a static /bin/busybox (apt-get install busybox-static)")
	if err := os.WriteFile(filepath.Join(busy, "busybox"), raw, 0o755); err != nil {
		t.Fatal(err)
	}
	sleeper := exec.Command("/busybox", "sleep", "60")
	sleeper.SysProcAttr = &syscall.SysProcAttr{Chroot: busy}
	buildtest.Start(t, sleeper)
	abandoned, err := b.Register(broker.LeaseRequest{Name: "left-behind", Owner: api.Owner{Dir: left}, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	running, err := b.Register(broker.LeaseRequest{Name: "building", Owner: api.Owner{Dir: busy}, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	var reason string
	waitUntil(t, "the abandoned sandbox's lease to end", func() bool {
		for _, l := range b.Status().Leases {
			if l.ID == abandoned.ID {
				reason = l.EndReason
				return l.Ending
			}
		}
		return true // gone already
	})
	for _, l := range b.Status().Leases {
		if l.ID == running.ID && l.Ending {
			t.Errorf("the lease of a sandbox with a process in it ended: %s", l.EndReason)
		}
	}
	t.Logf("abandoned lease: %s", reason)
}
