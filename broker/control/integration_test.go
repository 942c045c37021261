package control

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/internal/cgtest"
)

// hog is one fakecc job in a Makefile.
type hog struct {
	peak, ramp int // MiB, MiB/s
	hold       time.Duration
}

// writeMakefile writes dir/Makefile whose default goal runs n independent
// fakecc jobs named prefix1..prefixN, logging to log.
func writeMakefile(t *testing.T, dir, log, prefix string, n int, h hog) {
	t.Helper()
	var b strings.Builder
	var ids []string
	for i := 1; i <= n; i++ {
		ids = append(ids, fmt.Sprintf("%s%d", prefix, i))
	}
	fmt.Fprintf(&b, ".PHONY: all %s\nall: %s\n", strings.Join(ids, " "), strings.Join(ids, " "))
	for _, id := range ids {
		fmt.Fprintf(&b, "%s:\n\t@%s -peak %d -ramp %d -hold %g -log %s -id %s\n", id, bins.fakecc, h.peak, h.ramp, h.hold.Seconds(), log, id)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Makefile"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// daemon is a tokend started by a test.
type daemon struct {
	socket, dir string
	client      *api.Client
	log         string
	cmd         *exec.Cmd
	stopped     bool
}

// startTokend runs tokend in a fresh runtime directory with args, until
// the test ends or stop; its log is printed if the test fails. Its state
// directory is inside the runtime directory unless args name another.
func startTokend(t *testing.T, args ...string) *daemon {
	t.Helper()
	return startTokendAs(t, 0, args...)
}

// startTokendAs is startTokend with tokend run as uid (and its group).
func startTokendAs(t *testing.T, uid int, args ...string) *daemon {
	t.Helper()
	// Users other than root reach the socket too.
	dir := buildtest.WorldDir(t)
	if err := os.Chown(dir, uid, uid); err != nil {
		t.Fatal(err)
	}
	d := &daemon{socket: api.SocketPath(dir), dir: dir, log: filepath.Join(dir, "tokend.log")}
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(bins.tokend, append([]string{"--runtime-dir", dir, "--state-dir", filepath.Join(dir, "state"), "--log-level", "debug"}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if uid != 0 {
		d.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.stop(t)
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(d.log); err == nil {
				t.Logf("tokend log:\n%s", b)
			}
		}
	})
	d.client = api.NewClient(d.socket)
	waitUntil(t, "tokend to answer", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := d.client.Status(ctx)
		return err == nil && st.Memory != nil
	})
	return d
}

// stop stops tokend with SIGTERM and waits for it to exit.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if d.stopped {
		return
	}
	d.stopped = true
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.cmd.Wait(); err != nil {
		t.Errorf("tokend: %v", err)
	}
}

// logText is tokend's log so far.
func (d *daemon) logText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(d.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (d *daemon) status(t *testing.T) api.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := d.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// build is a make started inside the memory group.
type build struct {
	name string
	proc *buildtest.Proc
}

// startBuild runs make in dir inside group: under tokenctl run when d is
// not nil, else with a static -j8.
func startBuild(t *testing.T, group cgtest.Group, d *daemon, gmake, dir, name string) build {
	t.Helper()
	var cmd *exec.Cmd
	if d != nil {
		cmd = cgtest.Command([]cgtest.Group{group}, bins.tokenctl, "--socket", d.socket, "run", "--name", name, "--", gmake)
	} else {
		cmd = cgtest.Command([]cgtest.Group{group}, gmake, "-j8")
	}
	cmd.Dir = dir
	return build{name: name, proc: buildtest.Start(t, cmd)}
}

// finish waits for the builds and reports each one's error.
func finish(t *testing.T, builds []build) []error {
	t.Helper()
	// A bound for a hung build, not a speed: static -j8 builds whose jobs
	// the kernel kills took over 2 minutes at load 40.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	errs := make([]error, len(builds))
	for i, b := range builds {
		errs[i] = b.proc.Wait(ctx, t)
	}
	return errs
}

// brakeCycle watches status until the lease named "young" has been frozen
// and thawed again, calling frozen once when it sees it frozen, and fails
// the test if the lease named "old" is ever frozen or young ends first.
func brakeCycle(ctx context.Context, t *testing.T, d *daemon, young build, start time.Time, frozen func(api.LeaseStatus)) (frozeAt, thawedAt time.Duration) {
	t.Helper()
	for frozeAt == 0 || thawedAt == 0 {
		select {
		case <-young.proc.Done():
			t.Fatalf("young build ended (%v) before it was frozen and thawed (froze at %v)", young.proc.Err(), frozeAt)
		case <-ctx.Done():
			t.Fatalf("young build not frozen and thawed within a minute (froze at %v)", frozeAt)
		case <-time.After(50 * time.Millisecond):
		}
		for _, l := range d.status(t).Leases {
			if l.Memory == nil {
				continue
			}
			switch {
			case l.Name == "old" && l.Memory.Frozen:
				t.Fatalf("the oldest lease was frozen: %+v", l)
			case l.Name == "young" && l.Memory.Frozen && frozeAt == 0:
				frozeAt = time.Since(start)
				frozen(l)
			case l.Name == "young" && !l.Memory.Frozen && frozeAt != 0:
				thawedAt = time.Since(start)
			}
		}
	}
	return frozeAt, thawedAt
}

// finishWithoutOOMKills waits for the builds, failing the test on any
// build's error or any OOM kill in group, and returns the kills.
func finishWithoutOOMKills(t *testing.T, group cgtest.Group, builds ...build) int {
	t.Helper()
	for i, err := range finish(t, builds) {
		if err != nil {
			t.Errorf("build %d: %v", i, err)
		}
	}
	kills, err := group.OOMKills()
	if err != nil {
		t.Fatal(err)
	}
	if kills != 0 {
		t.Errorf("%d OOM kills", kills)
	}
	return kills
}

// Three make 4.4.1 builds, four 700 MiB jobs each, in a 3 GiB v1 memory
// group. With a static -j8 each, twelve jobs start at once and the kernel
// OOM-kills some of them. Under tokend, told only the memory group (and a
// CPU multiple high enough that memory alone limits), all three finish
// without an OOM kill.
func TestThreeBuildsInThreeGiB(t *testing.T) {
	m := cgtest.Need(t)
	gmake := buildtest.Make44(t)
	buildBins(t)
	const limit = 3 << 30
	job := hog{peak: 700, ramp: 350, hold: time.Second}

	run := func(d *daemon, group cgtest.Group) (buildtest.Run, time.Duration, []error) {
		log := buildtest.NewLog(t)
		root := t.TempDir()
		var builds []build
		start := time.Now()
		for _, name := range []string{"a", "b", "c"} {
			dir := filepath.Join(root, name)
			writeMakefile(t, dir, log.Path, name, 4, job)
			builds = append(builds, startBuild(t, group, d, gmake, dir, "build-"+name))
		}
		if d != nil {
			checkStatusOutput(t, d)
		}
		errs := finish(t, builds)
		return log.Run(t), time.Since(start), errs
	}

	static := cgtest.MakeT(t, m.V1Memory, limit)
	staticRun, staticSpan, staticErrs := run(nil, static)
	staticKills, err := static.OOMKills()
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, err := range staticErrs {
		if err != nil {
			failed++
		}
	}
	t.Logf("static -j8: %d OOM kills, %d of 3 builds failed, peak concurrency %d, makespan %v",
		staticKills, failed, staticRun.Peak(), staticSpan.Round(10*time.Millisecond))
	if staticKills == 0 {
		t.Errorf("static -j8 in %d MiB: no OOM kill; the test no longer shows what tokend prevents", limit>>20)
	}

	group := cgtest.MakeT(t, m.V1Memory, limit)
	leases := cgtest.MakeT(t, m.V2, 0)
	d := startTokend(t, "--memory-cgroup", string(group), "--lease-cgroups", string(leases), "--cpu-multiple", "8")
	tokendRun, tokendSpan, errs := run(d, group)
	kills, err := group.OOMKills()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("under tokend: %d OOM kills, peak concurrency %d, makespan %v",
		kills, tokendRun.Peak(), tokendSpan.Round(10*time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Errorf("build %d under tokend: %v", i, err)
		}
	}
	if kills != 0 {
		t.Errorf("%d OOM kills under tokend", kills)
	}
	if tokendRun.Peak() < 2 {
		t.Errorf("under tokend at most %d job ran at once; memory allows three 700 MiB jobs", tokendRun.Peak())
	}
	tokendRun.Check(t, 12)
	st := d.status(t)
	if st.InvariantViolations != 0 {
		t.Errorf("%d accounting invariant violations: %s", st.InvariantViolations, st.LastViolation)
	}
	t.Logf("budget at the end: %d (%s): %s", st.Budget, st.BudgetReason, st.Memory.Detail)
	b, err := os.ReadFile(d.log)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "set the budget") {
			t.Log(l)
		}
	}
}

// A user other than root cannot start a command straight into a cgroup
// of root's (clone3 needs write access to the common ancestor), so
// tokenctl starts it outside and says so, and tokend moves it in.
func TestBuildStartedOutsideIsMovedIn(t *testing.T) {
	m := cgtest.Need(t)
	buildBins(t)
	requireNogroup(t)
	leases := cgtest.MakeT(t, m.V2, 0)
	d := startTokend(t, "--lease-group", "nogroup", "--lease-cgroups", string(leases))
	cmd := exec.Command(bins.tokenctl, "--socket", d.socket, "run", "--name", "nobody", "--", "sleep", "2")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	p := buildtest.Start(t, cmd)
	var cgroup string
	waitUntil(t, "tokend to move the build into its lease cgroup", func() bool {
		for _, l := range d.status(t).Leases {
			if l.Name == "nobody" && l.Cgroup != "" {
				cgroup = l.Cgroup
				in, err := members(cgroup)
				return err == nil && len(in) > 0
			}
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Wait(ctx, t); err != nil {
		t.Errorf("tokenctl run as uid 65534: %v; stderr:\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "cannot start sleep in its lease cgroup") {
		t.Errorf("tokenctl said %q, want that it started the command outside its lease cgroup", stderr.String())
	}
	b, err := os.ReadFile(d.log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "moved the build into its lease cgroup") {
		t.Error("tokend did not log moving the build")
	}
	t.Logf("tokenctl: %s", strings.TrimSpace(stderr.String()))
}

// checkStatusOutput waits until tokend has a lease it measures, then
// checks that tokenctl status shows the headroom, the pressure, each
// lease's job estimates, and the budget with its reason.
func checkStatusOutput(t *testing.T, d *daemon) {
	t.Helper()
	waitUntil(t, "a lease with memory figures", func() bool {
		for _, l := range d.status(t).Leases {
			if l.Memory != nil && l.Memory.Procs > 0 {
				return true
			}
		}
		return false
	})
	out, err := exec.Command(bins.tokenctl, "--socket", d.socket, "status", "--explain").CombinedOutput()
	if err != nil {
		t.Fatalf("tokenctl status --explain: %v\n%s", err, out)
	}
	st := d.status(t)
	if !regexp.MustCompile(fmt.Sprintf(`(?m)^budget +%d jobs +memory controller: %s`, st.Budget, st.BudgetReason)).Match(out) {
		t.Errorf("tokenctl status --explain lacks the budget %d (%s):\n%s", st.Budget, st.BudgetReason, out)
	}
	for _, want := range []string{"headroom ", "reserve ", "growth ", "pressure ", "COMPILE", "LINK", "cpu cap "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("tokenctl status --explain lacks %q:\n%s", want, out)
		}
	}
}

// checkBrakeCounted checks that tokend's metrics count the freezes and
// thaws its events record, one each at least.
func checkBrakeCounted(t *testing.T, d *daemon) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	evs, err := d.client.Events(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]float64{}
	for _, e := range evs.Events {
		count[e.Kind]++
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.socket)
	}}}
	resp, err := hc.Get("http://tokend/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	m, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for name, kind := range map[string]string{"tokend_freezes_total": api.EventFreeze, "tokend_thaws_total": api.EventThaw} {
		if got := m[name].Metric[0].Counter.GetValue(); got < 1 || got != count[kind] || evs.Missed != 0 {
			t.Errorf("%s = %v; %v %s events (%d missed)", name, got, count[kind], kind, evs.Missed)
		}
	}
}

// The memory brake: an old build holds 700 MiB of a 1.5 GiB v1 group while
// a young one grows past the brake point (half the 512 MiB reserve). The
// young lease's cgroup is frozen, never the old one's; once the old build
// ends and memory recovers, the young one is thawed and finishes.
func TestBrakeFreezesTheYoungest(t *testing.T) {
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
	writeMakefile(t, filepath.Join(root, "young"), log.Path, "young", 1, hog{peak: 700, ramp: 200, hold: time.Second})

	start := time.Now()
	old := startBuild(t, group, d, gmake, filepath.Join(root, "old"), "old")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log.WaitFor(ctx, t, "the old job to start", func(r buildtest.Run) bool { return r.Started() == 1 })
	young := startBuild(t, group, d, gmake, filepath.Join(root, "young"), "young")

	var youngCgroup string
	frozeAt, thawedAt := brakeCycle(ctx, t, d, young, start, func(l api.LeaseStatus) {
		youngCgroup = l.Cgroup
		waitUntil(t, "the kernel to freeze the young build", func() bool { return frozenState(t, youngCgroup) })
	})
	kills := finishWithoutOOMKills(t, group, old, young)
	r := log.Run(t)
	r.Check(t, 2)
	checkBrakeCounted(t, d)
	t.Logf("young frozen at %v in %s, thawed at %v; both builds done at %v; %d OOM kills",
		frozeAt.Round(10*time.Millisecond), youngCgroup, thawedAt.Round(10*time.Millisecond), time.Since(start).Round(10*time.Millisecond), kills)
}
