package control

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/internal/cgtest"
)

// statusJSON is `tokenctl status --json`, decoded.
func statusJSON(t *testing.T, d *daemon) api.Status {
	t.Helper()
	out, err := exec.Command(bins.tokenctl, "--socket", d.socket, "status", "--json").Output()
	if err != nil {
		t.Fatalf("tokenctl status --json: %v", err)
	}
	var st api.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("tokenctl status --json: %v\n%s", err, out)
	}
	return st
}

// waitOOMKilled waits until `tokenctl status --json` shows a kill of
// lease name's jobs, and returns the lease then.
func waitOOMKilled(t *testing.T, d *daemon, name string) api.LeaseStatus {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		for _, l := range statusJSON(t, d).Leases {
			if l.Name == name && l.Memory != nil && l.Memory.OOMKills > 0 {
				return l
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no OOM kill of %s in tokenctl status --json within a minute", name)
	return api.LeaseStatus{}
}

// killedJob starts, under tokenctl run --name victim inside group, a job
// that grows at 300 MiB/s past the group's 512 MiB limit, then a sleep
// that keeps the lease alive, run as uid.
func killedJob(t *testing.T, d *daemon, group cgtest.Group, uid int) *buildtest.Proc {
	t.Helper()
	script := fmt.Sprintf("%s -peak 900 -ramp 300; exec sleep 60", bins.fakecc)
	cmd := cgtest.Command([]cgtest.Group{group}, bins.tokenctl, "--socket", d.socket, "run", "--name", "victim", "--", "/bin/sh", "-c", script)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	p := buildtest.Start(t, cmd)
	t.Cleanup(p.Kill)
	return p
}

// A job of a lease that the kernel OOM-kills in a 512 MiB v1 group is
// seen from the kernel log: counted for its lease and in the total in
// `tokenctl status --json`, logged with its size, and in the history, so
// the next build of that name expects a job twice that size.
func TestOOMKillCountedInStatus(t *testing.T) {
	m := cgtest.Need(t)
	buildBins(t)
	group := cgtest.MakeT(t, m.V1Memory, 512<<20)
	leases := cgtest.MakeT(t, m.V2, 0)
	d := startTokend(t, "--memory-cgroup", string(group), "--lease-cgroups", string(leases))
	killedJob(t, d, group, 0)
	l := waitOOMKilled(t, d, "victim")
	st := statusJSON(t, d)
	if l.Memory.OOMKills != 1 || l.Memory.OOMKilled < 400<<20 || l.Memory.OOMKilled > 512<<20 {
		t.Errorf("lease: %d OOM kills, killed at %d MiB; want 1 at 400 to 512 MiB", l.Memory.OOMKills, l.Memory.OOMKilled>>20)
	}
	if st.Memory.OOMKills < 1 || st.Memory.OOMSource != OOMFromKernelLog {
		t.Errorf("status: %d OOM kills from %q, want at least 1 from the kernel log", st.Memory.OOMKills, st.Memory.OOMSource)
	}
	if kills, err := group.OOMKills(); err != nil || kills != 1 {
		t.Errorf("the group counts %d OOM kills (%v), want the 1 tokend saw", kills, err)
	}
	var line string
	for _, s := range strings.Split(d.logText(t), "\n") {
		if strings.Contains(s, "OOM-killed") && strings.Contains(s, "name=victim") {
			line = s
		}
	}
	if !strings.Contains(line, fmt.Sprintf("size=%dMiB", l.Memory.OOMKilled>>20)) || !strings.Contains(line, "task=fakecc") {
		t.Errorf("log line %q does not report the job with its size", line)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	evs, err := d.client.Events(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	var killEvent *api.Event
	for i, e := range evs.Events {
		if e.Kind == api.EventOOMKill && e.Name == "victim" {
			killEvent = &evs.Events[i]
		}
	}
	if killEvent == nil || killEvent.Kills != 1 || killEvent.Lease != l.ID || !strings.Contains(killEvent.Detail, "fakecc") {
		t.Errorf("oom-kill event %+v, want one kill of lease %s's fakecc", killEvent, l.ID)
	}
	out, err := exec.Command(bins.tokenctl, "--socket", d.socket, "status").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "oom kills  ") || !strings.Contains(string(out), fmt.Sprintf("1 (%dMiB)", l.Memory.OOMKilled>>20)) {
		t.Errorf("tokenctl status (%v) does not show the kill:\n%s", err, out)
	}
	d.stop(t)
	h, err := LoadHistory(filepath.Join(d.dir, "state", HistoryFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := h.seed(0, "victim", classCompile); got < oomGrowth*l.Memory.OOMKilled {
		t.Errorf("history of victim: %d MiB, want at least twice the %d MiB the job reached", got>>20, l.Memory.OOMKilled>>20)
	}
	t.Logf("lease victim: %d kill at %d MiB; status total %d, outside %d", l.Memory.OOMKills, l.Memory.OOMKilled>>20, st.Memory.OOMKills, st.Memory.OOMKillsOutside)
}

// A tokend that cannot read the kernel log (uid 65534, where
// dmesg_restrict leaves it to root) counts the kill from the domain's
// counter and lays it on the job that vanished with it.
func TestOOMKillCountedWithoutTheKernelLog(t *testing.T) {
	m := cgtest.Need(t)
	buildBins(t)
	requireNogroup(t)
	group := cgtest.MakeT(t, m.V1Memory, 512<<20)
	// The member's build moves itself into the group.
	if err := os.Chown(group.File("cgroup.procs"), buildtest.Nobody, buildtest.Nobody); err != nil {
		t.Fatal(err)
	}
	d := startTokendAs(t, buildtest.Nobody, "--memory-cgroup", string(group), "--lease-cgroups", "off", "--lease-group", "nogroup")
	if src := statusJSON(t, d).Memory.OOMSource; src != OOMFromCounters {
		t.Fatalf("uid %d's tokend sees OOM kills from %q, want %q", buildtest.Nobody, src, OOMFromCounters)
	}
	killedJob(t, d, group, buildtest.Nobody)
	l := waitOOMKilled(t, d, "victim")
	if l.Memory.OOMKills != 1 || l.Memory.OOMKilled < 300<<20 {
		t.Errorf("lease: %d OOM kills, killed at %d MiB; want 1 at about 512 MiB", l.Memory.OOMKills, l.Memory.OOMKilled>>20)
	}
}

// tokenctl run --retry-oom on a real OOM kill: two 600 MiB jobs started
// together in a 1 GiB v1 group, under a tokend told jobs take 128 MiB,
// so it lets both run: the kernel kills one, make fails. tokenctl sees
// the kill in tokend's status, says so, and runs make again once memory
// fits the killed job alone; the new lease expects jobs of that size, so
// the job left runs alone and the build completes.
func TestRetryOOMCompletesTheBuild(t *testing.T) {
	m := cgtest.Need(t)
	gmake := buildtest.Make44(t)
	buildBins(t)
	group := cgtest.MakeT(t, m.V1Memory, 1<<30)
	leases := cgtest.MakeT(t, m.V2, 0)
	d := startTokend(t, "--memory-cgroup", string(group), "--lease-cgroups", string(leases), "--job-estimate", "128MiB")
	dir := t.TempDir()
	var mk strings.Builder
	fmt.Fprintf(&mk, "all: out1 out2\n")
	for _, o := range []string{"out1", "out2"} {
		fmt.Fprintf(&mk, "%s:\n\t%s -peak 600 -ramp 300 -hold 0.5 -o $@\n", o, bins.fakecc)
	}
	if err := os.WriteFile(filepath.Join(dir, "Makefile"), []byte(mk.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := cgtest.Command([]cgtest.Group{group}, bins.tokenctl, "--socket", d.socket, "run", "--name", "retried", "--retry-oom", "2", "--", gmake)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := buildtest.Start(t, cmd)
	err := p.Wait(ctx, t)
	kills, kerr := group.OOMKills()
	if kerr != nil {
		t.Fatal(kerr)
	}
	t.Logf("%d OOM kills; tokenctl said:\n%s", kills, stderr.String())
	if kills == 0 {
		t.Fatal("no OOM kill: the test no longer shows a retry")
	}
	if err != nil {
		t.Fatalf("tokenctl run --retry-oom 2: %v", err)
	}
	for _, o := range []string{"out1", "out2"} {
		if _, err := os.Stat(filepath.Join(dir, o)); err != nil {
			t.Errorf("the build did not complete: %v", err)
		}
	}
	// The kernel may take one job or both: the second can be killed before
	// the first's memory is back. tokenctl must say how many it took.
	took := regexp.MustCompile(`the OOM killer took (\d+) process\(es\) of retried`).FindStringSubmatch(stderr.String())
	if took == nil || !strings.Contains(stderr.String(), "running make again") || !strings.Contains(stderr.String(), "retry 1 of 2") {
		t.Fatalf("tokenctl did not say it runs make again after the OOM kill:\n%s", stderr.String())
	}
	if n, _ := strconv.Atoi(took[1]); n < 1 || n > kills {
		t.Errorf("tokenctl said the OOM killer took %d processes in the first run; the group counted %d kills in all", n, kills)
	}
}
