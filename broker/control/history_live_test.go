package control

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/broker"
	"github.com/tokend/tokend/internal/buildtest"
)

// What a build of one name taught tokend outlives tokend: after a restart
// with a new runtime directory (a reboot empties /run), a new lease of that
// name starts from the 300 MiB its jobs reached, not from the default.
func TestHistorySurvivesRestart(t *testing.T) {
	gmake := buildtest.Make44(t)
	buildBins(t)
	state := buildtest.WorldDir(t)
	first := startTokend(t, "--state-dir", state)
	log := buildtest.NewLog(t)
	dir := t.TempDir()
	writeMakefile(t, dir, log.Path, "job", 2, hog{peak: 300, ramp: 1000, hold: 1500 * time.Millisecond})
	cmd := exec.Command(bins.tokenctl, "--socket", first.socket, "run", "--name", "pkg", "--", gmake)
	cmd.Dir = dir
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	buildtest.MustRun(ctx, t, cmd)
	log.Run(t).Check(t, 2)
	waitUntil(t, "the build's lease to end", func() bool { return len(first.status(t).Leases) == 0 })
	first.stop(t)
	if _, err := os.Stat(filepath.Join(state, HistoryFile)); err != nil {
		t.Fatalf("no history in the state directory after the build: %v", err)
	}

	second := startTokend(t, "--state-dir", state)
	if second.dir == first.dir {
		t.Fatal("the restarted tokend has the same runtime directory")
	}
	l := register(t, second, "pkg")
	var m *broker.LeaseMemory
	waitUntil(t, "the controller to see the new lease", func() bool {
		m = leaseMemory(t, second, l.ID)
		return m != nil
	})
	if est := m.Estimates["compile"]; m.Source != "history" || est < 290*mib || est > 340*mib {
		t.Errorf("new lease of pkg after the restart: compile estimate %d MiB from %s; want about 300 MiB from history", est/mib, m.Source)
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

// register takes a lease owned by the test process, ended with the test.
func register(t *testing.T, d *daemon, name string) broker.Registered {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	l, err := d.client.Register(ctx, broker.RegisterRequest{Name: name, OwnerPID: os.Getpid()})
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
func leaseMemory(t *testing.T, d *daemon, id string) *broker.LeaseMemory {
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
	var m *broker.LeaseMemory
	waitUntil(t, "the controller to see the lease", func() bool {
		m = leaseMemory(t, d, id)
		return m != nil
	})
	return m.Source
}
