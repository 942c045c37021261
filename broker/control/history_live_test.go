package control

import (
	"context"
	"encoding/json"
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
	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/internal/bytesize"
)

// What a build of one name taught tokend outlives tokend: after a restart
// with a new runtime directory (a reboot empties /run), a new lease of that
// name starts from the 600 MiB its jobs reached, not from the default.
func TestHistorySurvivesRestart(t *testing.T) {
	gmake := buildtest.Make44(t)
	buildBins(t)
	state := buildtest.WorldDir(t)
	first := startTokend(t, "--state-dir", state)
	log := buildtest.NewLog(t)
	dir := t.TempDir()
	writeMakefile(t, dir, log.Path, "job", 2, hog{peak: 600, ramp: 1000, hold: 1500 * time.Millisecond})
	cmd := exec.Command(bins.tokenctl, "--socket", first.socket, "run", "--name", "pkg", "--", gmake)
	cmd.Dir = dir
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	buildtest.MustRun(ctx, t, cmd)
	log.Run(t).Check(t, 2)
	waitRecorded(t, first, "pkg")
	first.stop(t)
	if _, err := os.Stat(filepath.Join(state, HistoryFile)); err != nil {
		t.Fatalf("no history in the state directory after the build: %v", err)
	}

	second := startTokend(t, "--state-dir", state)
	if second.dir == first.dir {
		t.Fatal("the restarted tokend has the same runtime directory")
	}
	l := register(t, second, "pkg")
	m := waitLeaseMemory(t, second, l.ID)
	if est := m.Estimates.Compile; m.Source != "history" || est < 590*mib || est > 640*mib {
		t.Errorf("new lease of pkg after the restart: compile estimate %d MiB from %s; want about 600 MiB from history", est/mib, m.Source)
	}
	if other := register(t, second, "other"); waitLeaseSource(t, second, other.ID) != "default" {
		t.Error("a lease of another name did not start from the default")
	}
}

// A history file tokend cannot read is set aside under a new name and
// reported; tokend starts with an empty history and never writes over it.
func TestCorruptHistorySetAside(t *testing.T) {
	buildBins(t)
	state := buildtest.WorldDir(t)
	const garbage = `{"version": 1, "names": {"pkg": {"compile": "#`
	if err := os.WriteFile(filepath.Join(state, HistoryFile), []byte(garbage), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startTokend(t, "--state-dir", state)
	aside, err := filepath.Glob(filepath.Join(state, HistoryFile+".corrupt-*"))
	if err != nil || len(aside) != 1 {
		t.Fatalf("set-aside files %v (%v), want one", aside, err)
	}
	if b, err := os.ReadFile(aside[0]); err != nil || string(b) != garbage {
		t.Errorf("set-aside file holds %q (%v), want the corrupt history", b, err)
	}
	var line string
	for _, l := range strings.Split(d.logText(t), "\n") {
		if strings.Contains(l, "job history unreadable") {
			line = l
		}
	}
	if !strings.Contains(line, "[ERROR]") || !strings.Contains(line, "set_aside="+aside[0]) {
		t.Errorf("no error log line naming the set-aside file %s; got %q", aside[0], line)
	}
	l := register(t, d, "pkg")
	if src := waitLeaseSource(t, d, l.ID); src != "default" {
		t.Errorf("lease of pkg starts from %s, want the default: the history is empty", src)
	}
}

// A lease registered with the features a nix build requires (the hook
// passes requiredSystemFeatures) starts from the estimates they call for.
func TestBigParallelLeaseStartsLarger(t *testing.T) {
	buildBins(t)
	d := startTokend(t)
	m := waitLeaseMemory(t, d, register(t, d, "webkitgtk", "big-parallel").ID)
	if m.Source != "features" || m.Estimates.Compile != 2<<30 || m.Estimates.Link != 4<<30 {
		t.Errorf("big-parallel lease: compile %d, link %d MiB from %s; want 2048 and 4096 from features",
			m.Estimates.Compile/mib, m.Estimates.Link/mib, m.Source)
	}
}

// register takes a lease owned by the test process, ended with the test.
func register(t *testing.T, d *daemon, name string, features ...string) api.Registered {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	l, err := d.client.Register(ctx, api.RegisterRequest{Name: name, OwnerPID: os.Getpid(), Features: features})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = d.client.End(ctx, l.ID)
	})
	return l
}

// leaseMemory is the controller's view of lease id, nil until it has one.
func leaseMemory(t *testing.T, d *daemon, id string) *api.LeaseMemory {
	t.Helper()
	for _, l := range d.status(t).Leases {
		if l.ID == id {
			return l.Memory
		}
	}
	return nil
}

// waitLeaseSource waits until the controller has seen lease id and tells
// where its compile estimate comes from.
func waitLeaseSource(t *testing.T, d *daemon, id string) string {
	t.Helper()
	return waitLeaseMemory(t, d, id).Source
}

// A lease group member's builds teach tokend about that member's leases
// only (issue 13: a member's small "chromium" run set the estimate a
// later root build of chromium started from). Root builds chromium with
// 400 MiB jobs; uid 65534 then builds its own chromium twice with 100 MiB
// jobs. Root's next chromium starts from root's run (about 400 MiB: a
// first run sets the estimate), the member's from the member's runs
// (about 100 MiB).
func TestHistoryOfAMemberLeavesRootsAlone(t *testing.T) {
	d, gmake := tokendWithMembers(t)
	buildAs(t, d, gmake, 0, "chromium", 400)
	for range 2 {
		buildAs(t, d, gmake, buildtest.Nobody, "chromium", 100)
	}

	root := register(t, d, "chromium")
	if m := waitLeaseMemory(t, d, root.ID); m.Source != "history" || m.Estimates.Compile < 390*mib || m.Estimates.Compile > 450*mib {
		t.Errorf("root's chromium after a member's runs: %d MiB from %s, want about 400 MiB from root's own history", m.Estimates.Compile/mib, m.Source)
	}
	cmd := exec.Command(bins.tokenctl, "--socket", d.socket, "run", "--name", "chromium", "--", "sleep", "5")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: buildtest.Nobody, Gid: buildtest.Nobody}}
	p := buildtest.Start(t, cmd)
	var member *api.LeaseMemory
	waitUntil(t, "the member's lease to be measured", func() bool {
		for _, l := range d.status(t).Leases {
			if l.UID == buildtest.Nobody && l.Memory != nil {
				member = l.Memory
				return true
			}
		}
		return false
	})
	if member.Source != "history" || member.Estimates.Compile < 95*mib || member.Estimates.Compile > 150*mib {
		t.Errorf("the member's chromium: %d MiB from %s, want about 100 MiB from the member's own runs", member.Estimates.Compile/mib, member.Source)
	}
	p.Kill()
}

// buildAs runs a make of two fakecc jobs of peak MiB under tokenctl run
// --name name, as uid, to the end.
func buildAs(t *testing.T, d *daemon, gmake string, uid int, name string, peak int) {
	t.Helper()
	// Other users write the build's log and run its make there.
	dir := buildtest.WorldDir(t)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	log := buildtest.NewLogIn(t, dir)
	// Jobs hold their peak for 3 s, many ticks and process-tree reads
	// even on a loaded host, so that each is sampled before it ends: a
	// job never sampled teaches nothing.
	writeMakefile(t, dir, log.Path, "job", 2, hog{peak: peak, ramp: 1000, hold: 3 * time.Second})
	cmd := exec.Command(bins.tokenctl, "--socket", d.socket, "run", "--name", name, "--", gmake)
	cmd.Dir = dir
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	buildtest.MustRun(ctx, t, cmd)
	log.Run(t).Check(t, 2)
	waitRecorded(t, d, name)
}

// waitRecorded waits until no lease of name is left and the controller has
// ticked since, recording the ended ones in the history: a tick looks at
// the leases after it reads memory, at the time its status shows.
func waitRecorded(t *testing.T, d *daemon, name string) {
	t.Helper()
	var gone time.Time
	waitUntil(t, "the lease of "+name+" to end and be recorded", func() bool {
		st := d.status(t)
		for _, l := range st.Leases {
			if l.Name == name {
				return false
			}
		}
		if gone.IsZero() {
			gone = time.Now()
		}
		return st.Memory.Updated.After(gone)
	})
}

// waitLeaseMemory waits until the controller has measured lease id.
func waitLeaseMemory(t *testing.T, d *daemon, id string) *api.LeaseMemory {
	t.Helper()
	var m *api.LeaseMemory
	waitUntil(t, "the controller to see the lease", func() bool {
		m = leaseMemory(t, d, id)
		return m != nil
	})
	return m
}

func requireNogroup(t *testing.T) {
	t.Helper()
	if _, err := user.LookupGroup("nogroup"); err != nil {
		t.Fatalf("needs the nogroup group (uid 65534's group on Debian): %v", err)
	}
}

// tokendWithMembers starts tokend with uid 65534's group as the lease
// group, and gives a make other users may run.
func tokendWithMembers(t *testing.T) (*daemon, string) {
	t.Helper()
	buildBins(t)
	requireNogroup(t)
	return startTokend(t, "--lease-group", "nogroup"), makeForEveryone(t)
}

// makeForEveryone is a copy of make 4.4 that other users may run: the
// tools' directory is root's.
func makeForEveryone(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(buildtest.Make44(t))
	if err != nil {
		t.Fatal(err)
	}
	gmake := filepath.Join(buildtest.WorldDir(t), "make")
	if err := os.WriteFile(gmake, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	return gmake
}

// tokenctlAs runs tokenctl against d as uid and returns its output and
// whether it succeeded.
func tokenctlAs(t *testing.T, d *daemon, uid int, args ...string) (string, bool) {
	t.Helper()
	cmd := exec.Command(bins.tokenctl, append([]string{"--socket", d.socket}, args...)...)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// tokenctl history lists what tokend learned per user and name, to
// anyone; only root may forget a name, for one user or all.
func TestHistoryCommand(t *testing.T) {
	d, gmake := tokendWithMembers(t)
	buildAs(t, d, gmake, 0, "pkg", 600)
	buildAs(t, d, gmake, buildtest.Nobody, "pkg", 100)

	out, ok := tokenctlAs(t, d, buildtest.Nobody, "history", "--json")
	if !ok {
		t.Fatalf("tokenctl history --json as uid %d: %s", buildtest.Nobody, out)
	}
	var h []api.HistoryEntry
	if err := json.Unmarshal([]byte(out), &h); err != nil {
		t.Fatalf("tokenctl history --json: %v\n%s", err, out)
	}
	if len(h) != 2 || h[0].UID != 0 || h[0].Name != "pkg" || h[0].Compile < 590*mib || h[0].Compile > 640*mib || h[0].Runs != 1 ||
		h[1].UID != buildtest.Nobody || h[1].Compile < 95*mib || h[1].Compile > 150*mib || h[0].LastSeen.IsZero() {
		t.Errorf("history %+v; want root's pkg at about 600 MiB and uid %d's at about 100", h, buildtest.Nobody)
	}
	if out, ok := tokenctlAs(t, d, 0, "history"); !ok || !strings.Contains(out, "OOM KILLS") || !strings.Contains(out, bytesize.Human(h[1].Compile)) {
		t.Errorf("tokenctl history (%v):\n%s", ok, out)
	}
	if out, ok := tokenctlAs(t, d, buildtest.Nobody, "history", "forget", "pkg"); ok || !strings.Contains(out, "only root may") {
		t.Errorf("uid %d forgetting pkg: ok %v, %s; want refused", buildtest.Nobody, ok, out)
	}
	if out, ok := tokenctlAs(t, d, 0, "history", "forget", "--uid", strconv.Itoa(buildtest.Nobody), "pkg"); !ok || !strings.Contains(out, "forgot pkg (1 user(s))") {
		t.Errorf("root forgetting uid %d's pkg: %v, %s", buildtest.Nobody, ok, out)
	}
	if out, ok := tokenctlAs(t, d, 0, "history", "forget", "nothing"); ok || !strings.Contains(out, `no entry named "nothing"`) {
		t.Errorf("forgetting an unknown name: ok %v, %s; want an error naming it", ok, out)
	}
	h = nil
	out, _ = tokenctlAs(t, d, 0, "history", "--json")
	if err := json.Unmarshal([]byte(out), &h); err != nil || len(h) != 1 || h[0].UID != 0 {
		t.Errorf("after forgetting uid %d's pkg: %s (%v), want root's alone", buildtest.Nobody, out, err)
	}
	if _, ok := tokenctlAs(t, d, 0, "history", "forget", "pkg"); !ok {
		t.Fatal("root cannot forget pkg")
	}
	if src := waitLeaseSource(t, d, register(t, d, "pkg").ID); src != api.EstimateDefault {
		t.Errorf("a lease of pkg after it was forgotten starts from %s, want the default", src)
	}
}
