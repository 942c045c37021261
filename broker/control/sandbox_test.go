package control

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/internal/cgtest"
)

// sandbox makes a directory that a build can be chrooted into, as a nix
// build without use-cgroups is: a static make, busybox as /bin/sh, fakecc,
// and a Makefile of n fakecc jobs that log to /jobs.log.
func sandbox(t *testing.T, gmake string, n int, h hog) string {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		buildtest.Missing(t, "busybox (apt-get install busybox-static)")
	}
	dir := t.TempDir()
	for _, f := range []struct{ from, to string }{{gmake, "make"}, {busybox, "bin/sh"}, {bins.fakecc, "fakecc"}} {
		b, err := os.ReadFile(f.from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(f.to)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.to), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var mk strings.Builder
	var ids []string
	for i := 1; i <= n; i++ {
		ids = append(ids, fmt.Sprintf("j%d", i))
	}
	fmt.Fprintf(&mk, ".PHONY: all %s\nall: %s\n", strings.Join(ids, " "), strings.Join(ids, " "))
	for _, id := range ids {
		fmt.Fprintf(&mk, "%s:\n\t@/fakecc -peak %d -ramp %d -hold %g -log /jobs.log -id %s\n", id, h.peak, h.ramp, h.hold.Seconds(), id)
	}
	if err := os.WriteFile(filepath.Join(dir, "Makefile"), []byte(mk.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// stoppedIn counts the processes whose root is dir and how many of them
// are stopped (state T).
func stoppedIn(t *testing.T, dir string) (procs, stopped int) {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if root, err := os.Readlink(filepath.Join("/proc", e.Name(), "root")); err != nil || root != dir {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		procs++
		if _, rest, ok := strings.Cut(string(stat), ") "); ok && strings.HasPrefix(rest, "T") {
			stopped++
		}
	}
	return procs, stopped
}

// The brake reaches a nix build that has no cgroup (nix without
// use-cgroups): an old build holds 700 MiB of a 1.5 GiB v1 group while a
// young one, chrooted into its sandbox and registered the way the nix hook
// registers it (owned by the sandbox directory, with a gate; it never
// joins, as a package without the setup hook), grows past the brake
// point. Every process of the young sandbox is stopped, never the old
// build; once memory recovers they are resumed and both builds finish.
func TestBrakeStopsANixBuildWithoutACgroup(t *testing.T) {
	m := cgtest.Need(t)
	gmake := buildtest.Make44(t)
	buildBins(t)
	group := cgtest.MakeT(t, m.V1Memory, 1536<<20)
	leases := cgtest.MakeT(t, m.V2, 0)
	d := startTokend(t, "--memory-cgroup", string(group), "--lease-cgroups", string(leases),
		"--memory-reserve", "512MiB", "--job-estimate", "128MiB", "--growth-interval", "1s")
	log := buildtest.NewLog(t)
	root := t.TempDir()
	writeMakefile(t, filepath.Join(root, "old"), log.Path, "old", 1, hog{peak: 700, ramp: 700, hold: 10 * time.Second})
	dir := sandbox(t, gmake, 1, hog{peak: 700, ramp: 200, hold: time.Second})

	old := startBuild(t, group, d, gmake, filepath.Join(root, "old"), "old")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log.WaitFor(ctx, t, "the old job to start", func(r buildtest.Run) bool { return r.Started() == 1 })
	reg, err := d.client.Register(ctx, api.RegisterRequest{Name: "young", OwnerDir: dir, Gate: true})
	if err != nil {
		t.Fatal(err)
	}
	young := build{name: "young", proc: buildtest.Start(t, cgtest.Command([]cgtest.Group{group}, "chroot", dir, "/make", "-C", "/", "-j8"))}

	frozeAt, thawedAt := brakeCycle(ctx, t, d, young, time.Now(), func(l api.LeaseStatus) {
		if l.ID != reg.ID || l.State != api.StateNotJoined || l.Cgroup != "" {
			t.Fatalf("young lease %+v, want lease %s, not joined (nothing in it opened the fifo), no cgroup", l, reg.ID)
		}
		waitUntil(t, "every process of the young sandbox to stop", func() bool {
			procs, stopped := stoppedIn(t, dir)
			return procs > 0 && stopped == procs
		})
	})
	if procs, stopped := stoppedIn(t, dir); stopped != 0 {
		t.Errorf("%d of %d processes of the young sandbox still stopped after the thaw", stopped, procs)
	}
	kills := finishWithoutOOMKills(t, group, old, young)
	t.Logf("young sandbox stopped at %v, resumed at %v; %d OOM kills", frozeAt.Round(10*time.Millisecond), thawedAt.Round(10*time.Millisecond), kills)
}
