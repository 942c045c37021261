package main

// Issue 13, hoarding: a build holding the whole allowance when another
// joins gives tokens back as its jobs end, to the newcomer and not to its
// own next jobs; one that keeps more than its share while another waits
// is reported after the share grace; and one whose clients keep tokens
// without running jobs has them reissued to the waiting build.

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/buildtest"
)

// shareGrace is the share grace the tests give tokend: short, so that the
// report comes soon; nothing here depends on how long it is.
const shareGrace = time.Second

// leaseNamed is the lease of that name in st, if there is one.
func leaseNamed(st api.Status, name string) (api.LeaseStatus, bool) {
	for _, l := range st.Leases {
		if l.Name == name {
			return l, true
		}
	}
	return api.LeaseStatus{}, false
}

// awaitEvent waits for an event of kind about the lease named name.
func awaitEvent(t *testing.T, events *follower, kind, name string) api.Event {
	t.Helper()
	var ev api.Event
	events.await(t, "a "+kind+" event about "+name, func(line string) bool {
		return json.Unmarshal([]byte(line), &ev) == nil && ev.Kind == kind && ev.Name == name
	})
	return ev
}

// A build holding all five tokens of a budget of 6 in gated jobs when a
// second build joins: the newcomer waits, the first is reported above its
// share once the share grace has passed, and when its jobs end and it
// goes on starting more, the tokens they return go to the newcomer until
// both have their share of 2, while the first build still runs. The first
// build is make 4.4.1 or ninja 1.13, the clients that read a token they
// returned again at once; the newcomer is make.
func TestNewcomerGetsItsShare(t *testing.T) {
	for _, tool := range []string{"make", "ninja"} {
		t.Run(tool, func(t *testing.T) { newcomerGetsItsShare(t, tool) })
	}
}

func newcomerGetsItsShare(t *testing.T, tool string) {
	make44 := buildtest.Make44(t)
	p, log := buildtest.BuildProbe(t), buildtest.NewLog(t)
	const budget, share = 6, 2
	d := startDaemonArgs(t, t.TempDir(), "--tokens", "6", "--share-grace", shareGrace.String())
	events := follow(t, exec.Command(d.tokenctl, "--socket", d.sock, "events", "--json", "--backlog"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*testDeadline)
	defer cancel()

	// Every job of the first build waits for the gate after its sleep: the
	// first six hold all the slots until the test opens it, the rest pass
	// it at once and keep the build asking for tokens.
	gate := filepath.Join(t.TempDir(), "gate")
	first := buildtest.Gated(buildtest.Independent("a", 60, 300*time.Millisecond), gate)
	dir := t.TempDir()
	a := &build{name: "first", prefix: "a", jobs: len(first)}
	if tool == "ninja" {
		buildtest.WriteNinja(t, dir, p, log, first)
		a.argv = []string{buildtest.Ninja(t), "--quiet", "-C", dir}
	} else {
		buildtest.WriteMakefile(t, dir, p, log, first)
		a.argv = []string{make44, "-s", "-C", dir}
	}
	a.start(t, d)
	log.WaitFor(ctx, t, "the first build to run 6 jobs", func(r buildtest.Run) bool { return a.runOf(r).Running() == budget })

	b := makeBuild(t, "newcomer", make44, "b", p, log, 40, 200*time.Millisecond)
	b.start(t, d)
	st, _ := d.waitStatus(t, "the first build to be reported above its share", func(st api.Status) bool {
		fl, ok1 := leaseNamed(st, "first")
		nl, ok2 := leaseNamed(st, "newcomer")
		return ok1 && ok2 && nl.State == api.StateWaiting && fl.Share == share && !fl.OverShareSince.IsZero()
	})
	fl, _ := leaseNamed(st, "first")
	if fl.Granted != budget-1 || fl.Held != budget-1 {
		t.Errorf("the first build holds %d of %d granted, want all %d", fl.Held, fl.Granted, budget-1)
	}
	if ev := awaitEvent(t, events, api.EventOverShare, "first"); ev.Tokens != budget-1-share || ev.Wait < shareGrace {
		t.Errorf("over-share event %+v: want %d tokens above the share, after at least %v", ev, budget-1-share, shareGrace)
	}
	// Its tokens run jobs: tokend counts them, and reissues none however
	// long they run. Two more graces, each holding several counts, would
	// have reissued idle tokens (TestHoarderTokensReissued).
	d.waitStatus(t, "two more share graces of counted jobs", func(st api.Status) bool {
		fl, _ := leaseNamed(st, "first")
		nl, _ := leaseNamed(st, "newcomer")
		if fl.Reissued != 0 || st.ReissuedTotal != 0 || nl.Admitted {
			t.Fatalf("tokens of the first build, whose jobs all run, were reissued: %+v", st)
		}
		return fl.CountedJobs >= budget && time.Since(fl.OverShareSince) > 3*shareGrace
	})

	opened := time.Now()
	buildtest.OpenGate(t, gate)
	_, fair := d.waitStatus(t, "both builds to have their share while the first still runs", func(st api.Status) bool {
		fl, ok1 := leaseNamed(st, "first")
		nl, ok2 := leaseNamed(st, "newcomer")
		return ok1 && ok2 && !fl.Ending && nl.Admitted && nl.Share == share && nl.Granted == share && fl.Granted <= share && fl.OverShareSince.IsZero()
	})
	a.wait(ctx, t, log)
	b.wait(ctx, t, log)

	r := log.Run(t)
	// Measured, not asserted: jobs the first build started above its
	// share of 3 (2 tokens and its implicit slot) after the gate opened
	// and before the newcomer had its share are tokens it read back
	// before tokend could take them.
	reread, running := 0, 0
	for _, e := range a.runOf(r).Events {
		switch {
		case !e.Start:
			running--
		case e.T > opened.UnixNano() && e.T < fair.UnixNano() && running >= share+1:
			reread++
			running++
		default:
			running++
		}
	}
	t.Logf("%s: fair shares %v after the gate opened; the first build started %d jobs above its share meanwhile", tool, fair.Sub(opened).Round(time.Millisecond), reread)
	if peak := r.Peak(); peak > budget {
		t.Errorf("%d jobs ran at once under a budget of %d; log:\n%s", peak, budget, r)
	}
	d.waitIdle(t)
}

// runOf is the part of r that is b's.
func (b *build) runOf(r buildtest.Run) buildtest.Run {
	return r.Filter(func(id string) bool { return strings.HasPrefix(id, b.prefix) })
}

// hoarderScript is a client that keeps tokens without running jobs: it
// reads 5 tokens from its FIFO and gives back one when $1/return exists,
// the rest when $1/stop does.
const hoarderScript = `
fifo=${MAKEFLAGS##*fifo:}; fifo=${fifo%% *}
exec 3<"$fifo" 4>"$fifo"
dd bs=1 count=5 <&3 >/dev/null 2>&1
: > "$1/held"
while [ ! -e "$1/return" ]; do sleep 0.05; done
printf + >&4
while [ ! -e "$1/stop" ]; do sleep 0.05; done
printf ++++ >&4
`

// A member of the lease group (uid 65534) whose client reads five tokens
// of a budget of 6 and keeps them without running jobs cannot starve a
// build that joins: once it has held them beyond its jobs for the share
// grace, the 3 above its share of 2 are reissued and the newcomer gets
// its share. The token the hoarder returns next is swallowed, not kept
// and not handed out again; once the newcomer is done the hoarder is given
// its share less what its client holds; when it gives everything
// back, every token is accounted for.
func TestHoarderTokensReissued(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root, to run a lease as uid 65534")
	make44 := buildtest.Make44(t)
	p := buildtest.BuildProbe(t)
	log := buildtest.NewLog(t)
	const budget, share = 6, 2
	d := startDaemonArgs(t, filepath.Join(buildtest.WorldDir(t), "run"), "--tokens", "6", "--share-grace", shareGrace.String(), "--lease-group", "nogroup")
	events := follow(t, exec.Command(d.tokenctl, "--socket", d.sock, "events", "--json", "--backlog"))
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()

	signals := buildtest.WorldDir(t)
	if err := os.Chmod(signals, 0o777); err != nil {
		t.Fatal(err)
	}
	hoarder := exec.Command(d.tokenctl, "--socket", d.sock, "run", "--name", "hoarder", "--", "sh", "-c", hoarderScript, "sh", signals)
	hoarder.Env = buildtest.CleanEnv()
	hoarder.Dir = signals
	hoarder.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: buildtest.Nobody, Gid: buildtest.Nobody}}
	hp := buildtest.Start(t, hoarder)
	d.waitStatus(t, "the hoarder to hold 5 tokens", func(st api.Status) bool {
		l, ok := leaseNamed(st, "hoarder")
		return ok && l.UID == buildtest.Nobody && l.Held == budget-1
	})

	// The waiter's jobs wait for a gate, so it holds its share until the
	// test lets it go on.
	gate := filepath.Join(t.TempDir(), "gate")
	dir := t.TempDir()
	buildtest.WriteMakefile(t, dir, p, log, buildtest.Gated(buildtest.Independent("b", 20, 100*time.Millisecond), gate))
	b := &build{name: "waiter", prefix: "b", jobs: 20, argv: []string{make44, "-s", "-C", dir}}
	joined := time.Now()
	b.start(t, d)
	d.waitStatus(t, "the waiter to get its share: the hoarder's idle tokens reissued", func(st api.Status) bool {
		hl, ok1 := leaseNamed(st, "hoarder")
		wl, ok2 := leaseNamed(st, "waiter")
		return ok1 && ok2 && wl.Admitted && wl.Granted == share && wl.Held == share && hl.Granted == share
	})
	ev := awaitEvent(t, events, api.EventReissue, "hoarder")
	if ev.Tokens != budget-1-share || ev.Wait < shareGrace {
		t.Errorf("reissue event %+v: want %d tokens, held idle for at least %v", ev, budget-1-share, shareGrace)
	}
	if waited := time.Since(joined); waited < shareGrace {
		t.Errorf("the waiter had its share %v after it joined, before the share grace of %v", waited, shareGrace)
	}
	st := d.status(t)
	hl, _ := leaseNamed(st, "hoarder")
	if hl.Reissued != budget-1-share || hl.Held != share || hl.CountedJobs > 1 || st.ReissuedTotal != budget-1-share {
		t.Errorf("hoarder %+v, reissued total %d: want %d held and %d reissued, no job counted", hl, st.ReissuedTotal, share, budget-1-share)
	}

	buildtest.OpenGate(t, filepath.Join(signals, "return"))
	d.waitStatus(t, "the token the hoarder returned to be swallowed", func(st api.Status) bool {
		hl, ok1 := leaseNamed(st, "hoarder")
		wl, ok2 := leaseNamed(st, "waiter")
		return ok1 && ok2 && hl.Reissued == budget-2-share && hl.Granted == share && hl.Free == 0 && wl.Granted == share
	})

	buildtest.OpenGate(t, gate)
	b.wait(ctx, t, log)
	// Alone, its share is the allowance of 5. The 2 reissued tokens its
	// client still holds count against it: what it is given pays them
	// back first (swallowed from its FIFO), and only the fifth stays.
	d.waitStatus(t, "the hoarder, alone, to be given its share less what it holds", func(st api.Status) bool {
		hl, ok := leaseNamed(st, "hoarder")
		return ok && len(st.Leases) == 1 && hl.Reissued == 0 && hl.Granted == budget-1 && hl.Held == budget-2
	})

	buildtest.OpenGate(t, filepath.Join(signals, "stop"))
	if err := hp.Wait(ctx, t); err != nil {
		t.Errorf("hoarder: %v; output:\n%s", err, hp.Output())
	}
	if peak := log.Run(t).Peak(); peak > share+1 {
		t.Errorf("the waiter ran %d jobs at once; its share of %d and its implicit slot allow %d", peak, share, share+1)
	}
	if st := d.waitIdle(t); st.ReclaimedTotal != 0 || st.InflatedTotal != 0 || st.ReissuedTotal != budget-1-share {
		t.Errorf("reclaimed %d, inflated %d, reissued %d; want 0, 0 and %d: the hoarder gave every token back", st.ReclaimedTotal, st.InflatedTotal, st.ReissuedTotal, budget-1-share)
	}
}
